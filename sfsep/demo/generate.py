"""A seeded procedural multitrack generator: the demo model's training and validation data.

Each clip is four stems at 44.1 kHz stereo, in the order `STEMS`, made from nothing but numbers
(no recordings, so no licence questions):

- drums: a synthesized kick (a sine falling in pitch, with a click), snare (a tone plus broadband
  noise) and hi-hats (noise above 5-9 kHz, closed and open), in a random 16-step pattern around one
  of a few grooves, at a tempo of 80-160 BPM;
- bass: a band-limited saw or square line on the chords' roots, fifths and octaves, through a
  low-pass filter whose cut-off opens at each note;
- other: chord pads (detuned saws, a different detune per channel) and/or plucked arpeggios whose
  filter opens up to 6-12 kHz at each pluck;
- vocals: formant-synthesized sung vowels (a glottal-like source shaped by five formants that glide
  from vowel to vowel), with vibrato, glides between notes, a low, middle or high range,
  breathiness, and consonants (s, sh, f, t, k noise) before the syllables.

Every stem has content above 4 kHz (hats and snare, consonants and the voice's upper harmonics,
bright plucks and saws): an input at 8 kHz loses it, which is what the demo model is there to show.
Stems get random gains and stereo positions; the mixture is their sum, scaled below full scale.

A clip is a pure function of (seed, split, index): `generate_clip(seed, "valid", 3)` is the same
everywhere, and the train and valid splits are different streams of the same seed, so they never
share a clip. Oscillators are phase accumulators with PolyBLEP steps; filters are gains applied
frame by frame to a short-time Fourier transform (a time-varying filter without a sample loop);
nothing loops over samples in Python. A 4-second clip took 0.8-1.3 s on a shared 2-core machine at
load 5 (the demo model's training generates its pool once: 96 clips in 80 s).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile
import torch

RATE = 44100
STEMS = ("drums", "bass", "other", "vocals")
SPLITS = {"train": 0, "valid": 1, "example": 2}
"""The seed streams: a clip of one split never equals a clip of another. "example" is the stream
examples/make_demo.py draws the bundled example from (neither trained nor validated on)."""

_N_FFT = 1024
_HOP = 256
_BIN_HZ = np.fft.rfftfreq(_N_FFT, 1 / RATE).astype(np.float32)
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
# (F1..F5 in Hz, bandwidths in Hz) of sung vowels for a middle voice; scaled for the range.
_VOWELS = {
    "a": ((800, 1150, 2800, 3500, 4950), (80, 90, 120, 130, 140)),
    "e": ((400, 1600, 2700, 3300, 4950), (60, 80, 120, 150, 200)),
    "i": ((350, 1700, 2700, 3700, 4950), (50, 100, 120, 150, 200)),
    "o": ((450, 800, 2830, 3500, 4950), (70, 80, 100, 130, 135)),
    "u": ((325, 700, 2530, 3500, 4950), (50, 60, 170, 180, 200)),
}
_FORMANT_GAINS = np.array([1.0, 0.6, 0.35, 0.3, 0.2], dtype=np.float32)
# consonant: (low Hz, high Hz, seconds, level)
_CONSONANTS = {
    "s": (4500.0, 11000.0, 0.11, 0.5),
    "sh": (2000.0, 7000.0, 0.11, 0.45),
    "f": (1500.0, 12000.0, 0.09, 0.25),
    "t": (3000.0, 10000.0, 0.02, 0.6),
    "k": (1500.0, 5000.0, 0.025, 0.6),
}


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one clip: (seed, split, index) and nothing else."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def generate_clip(seed: int, split: str, index: int, seconds: float = 4.0) -> np.ndarray:
    """One clip: stems (4, 2, samples) float32 at 44.1 kHz, in the order of STEMS."""
    rng = clip_rng(seed, split, index)
    length = int(round(seconds * RATE))
    song = _Song(rng, length)
    stems = [_drums(song), _bass(song), _other(song), _vocals(song)]
    mixed = []
    for stem in stems:
        level = 0.1 * 10 ** (rng.uniform(-7.0, 5.0) / 20) / (np.sqrt(np.mean(stem ** 2)) + 1e-8)
        mixed.append(stem * level)
    result = np.stack(mixed).astype(np.float32)
    peak = np.abs(result.sum(0)).max()
    result *= rng.uniform(0.5, 0.95) / max(peak, 1e-8)
    return result


# --------------------------------------------------------------------------------------------
# Timing and harmony shared by the stems of a clip


class _Song:
    """Tempo, key, chords and the step grid of one clip. Times are in samples from the start of the
    music, which begins `lead` samples before the clip (so that a clip starts anywhere in a bar)."""

    def __init__(self, rng: np.random.Generator, length: int):
        self.rng = rng
        self.length = length
        self.bpm = rng.uniform(80, 160)
        self.step = 60.0 / self.bpm / 4 * RATE  # a sixteenth, in samples
        self.lead = int(rng.uniform(0, 16) * self.step)
        self.total = self.lead + length
        self.steps = int(math.ceil(self.total / self.step)) + 1
        self.scale = _MAJOR if rng.random() < 0.5 else _MINOR
        self.root = int(rng.integers(40, 52))  # E2 .. D#3
        self.progression = [0] + [int(d) for d in rng.choice([1, 2, 3, 4, 5], size=3)]
        self.time = np.arange(self.total, dtype=np.float64)

    def semitone(self, degree: int) -> int:
        return 12 * (degree // 7) + self.scale[degree % 7]

    def chord(self, step: int) -> list[int]:
        """MIDI notes (root position triad, sometimes a seventh) of the chord at a step."""
        degree = self.progression[(step // 16) % len(self.progression)]
        return [self.root + 12 + self.semitone(degree + 2 * k) for k in range(3)]

    def at(self, step: int) -> int:
        return int(round(step * self.step))

    def crop(self, signal: np.ndarray) -> np.ndarray:
        return signal[..., self.lead:self.lead + self.length]


def _hz(midi: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * np.exp2((np.asarray(midi) - 69.0) / 12.0)


def _pan(mono: np.ndarray, position: float) -> np.ndarray:
    """Constant-power panning: position -1 (left) .. 1 (right) -> (2, samples)."""
    angle = (position + 1) * math.pi / 4
    return np.stack([mono * math.cos(angle), mono * math.sin(angle)])


def _blep(phase: np.ndarray, increment: np.ndarray) -> np.ndarray:
    """PolyBLEP correction of a unit step at phase 0 (phase in cycles, in [0, 1))."""
    correction = np.zeros_like(phase)
    early = phase < increment
    x = phase[early] / increment[early]
    correction[early] = x + x - x * x - 1
    late = phase > 1 - increment
    x = (phase[late] - 1) / increment[late]
    correction[late] = x * x + x + x + 1
    return correction


def _saw(frequency: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """A band-limited (PolyBLEP) sawtooth following a frequency contour (Hz per sample)."""
    increment = np.clip(frequency / RATE, 1e-6, 0.5)
    phase = (np.cumsum(increment) + offset) % 1.0
    return 2 * phase - 1 - _blep(phase, increment)


def _square(frequency: np.ndarray, offset: float = 0.0) -> np.ndarray:
    return 0.5 * (_saw(frequency, offset) - _saw(frequency, offset + 0.5))


def _frame_positions(length: int) -> np.ndarray:
    """The sample at the centre of each STFT frame (centred STFT, hop _HOP)."""
    return np.minimum(np.arange(1 + length // _HOP) * _HOP, length - 1)


def _shape(signal: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """A time-varying filter: the STFT of `signal` (..., samples) times `gains` (frames, bins), then
    overlap-added back (Hann analysis and synthesis windows, normalised by their summed square)."""
    audio = torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))
    flat = audio.reshape(-1, audio.shape[-1])
    length = flat.shape[-1]
    edge = _N_FFT // 2
    padded = torch.nn.functional.pad(flat[:, None], (edge, edge), mode="reflect")[:, 0]
    window = torch.hann_window(_N_FFT)
    frames = padded.unfold(-1, _N_FFT, _HOP) * window  # (signals, 1 + length // hop, n_fft)
    spec = torch.fft.rfft(frames, dim=-1) * torch.from_numpy(np.ascontiguousarray(gains, dtype=np.float32))
    filtered = torch.fft.irfft(spec, n=_N_FFT, dim=-1) * window
    out = _overlap_add(filtered) / _overlap_add(window.square().expand(1, *filtered.shape[1:])).clamp_min(1e-3)
    return out[:, edge:edge + length].reshape(audio.shape).numpy()


def _overlap_add(frames: torch.Tensor) -> torch.Tensor:
    """Sum frames (signals, count, n_fft) placed every _HOP samples (n_fft is 4 hops: four adds of
    hop-long quarters instead of a scatter)."""
    signals, count, _ = frames.shape
    quarters = frames.reshape(signals, count, _N_FFT // _HOP, _HOP)
    out = frames.new_zeros(signals, count + _N_FFT // _HOP - 1, _HOP)
    for quarter in range(_N_FFT // _HOP):
        out[:, quarter:quarter + count] += quarters[:, :, quarter]
    return out.reshape(signals, -1)


def _lowpass_gains(cutoff: np.ndarray, order: int = 2) -> np.ndarray:
    """|H| of a Butterworth-like low-pass per frame: cutoff (frames,) Hz -> (frames, bins)."""
    return 1.0 / np.sqrt(1.0 + (_BIN_HZ[None, :] / cutoff[:, None]) ** (2 * order))


def _band_gains(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Smooth band-pass per frame between low and high (frames,) Hz -> (frames, bins)."""
    f = _BIN_HZ[None, :]
    return (1.0 / (1.0 + (low[:, None] / np.maximum(f, 1.0)) ** 4)) / (1.0 + (f / high[:, None]) ** 4)


def _monophonic(song: _Song, onsets: list[int], ends: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For notes (sample onsets and ends, sorted, not overlapping): per sample the index of the
    current note (-1 before the first), the samples since its onset and the samples left to its end."""
    starts = np.asarray(onsets, dtype=np.float64)
    index = np.searchsorted(starts, song.time, side="right") - 1
    safe = np.maximum(index, 0)
    since = song.time - starts[safe]
    left = np.asarray(ends, dtype=np.float64)[safe] - song.time
    since[index < 0] = 0
    left[index < 0] = -1
    return index, since, left


def _gate(since: np.ndarray, left: np.ndarray, attack: float, release: float) -> np.ndarray:
    return np.minimum(since / (attack * RATE), 1.0) * np.clip(left / (release * RATE), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Drums


_GROOVES = {  # 16-step probabilities of (kick, snare)
    "four": ([1, 0, 0, 0] * 4, [0, 0, 0, 0, 1, 0, 0, 0] * 2),
    "rock": ([1, 0, 0, 0, 0, 0, 0.3, 0, 1, 0, 0.5, 0, 0, 0, 0.2, 0], [0, 0, 0, 0, 1, 0, 0, 0.1] * 2),
    "break": ([1, 0, 0.3, 0, 0, 0, 0, 0.4, 0, 0.6, 1, 0, 0, 0, 0.2, 0], [0, 0, 0, 0, 1, 0, 0, 0.3, 0, 0.2, 0, 0, 1, 0, 0.2, 0]),
    "half": ([1, 0, 0, 0, 0, 0, 0.3, 0, 0, 0, 0.5, 0, 0, 0, 0, 0], [0] * 8 + [1] + [0] * 7),
}


def _drum_sounds(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One sample of each drum for the clip, with random tuning and decay."""
    t = np.arange(int(0.5 * RATE)) / RATE
    low, sweep, sweep_time = rng.uniform(42, 60), rng.uniform(60, 160), rng.uniform(0.02, 0.06)
    phase = 2 * np.pi * (low * t + sweep * sweep_time * (1 - np.exp(-t / sweep_time)))
    kick = np.sin(phase) * np.exp(-t / rng.uniform(0.12, 0.35))
    kick[:90] += rng.standard_normal(90) * np.linspace(0.5, 0, 90)  # the beater's click
    tone = np.sin(2 * np.pi * rng.uniform(160, 240) * t) * np.exp(-t / 0.06)
    snare = rng.uniform(0.3, 0.7) * tone + rng.standard_normal(t.size) * np.exp(-t / rng.uniform(0.07, 0.18))
    cutoff = rng.uniform(5000, 9000)
    gains = (1.0 / (1.0 + (cutoff / np.maximum(np.fft.rfftfreq(t.size, 1 / RATE), 1.0)) ** 4))
    hiss = np.fft.irfft(np.fft.rfft(rng.standard_normal(t.size)) * gains, n=t.size)
    closed = hiss * np.exp(-t / rng.uniform(0.02, 0.06))
    open_hat = hiss * np.exp(-t / rng.uniform(0.15, 0.35))
    return {"kick": kick, "snare": snare, "closed": closed, "open": open_hat}


def _place(song: _Song, sound: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """`sound` at every step whose velocity in `hits` (steps,) is non-zero (FFT convolution)."""
    impulses = np.zeros(song.total)
    for step in np.flatnonzero(hits):
        position = song.at(int(step)) + int(song.rng.integers(0, 60))  # a little human timing
        if position < song.total:
            impulses[position] += hits[step]
    size = 1 << int(math.ceil(math.log2(song.total + sound.size)))
    return np.fft.irfft(np.fft.rfft(impulses, size) * np.fft.rfft(sound, size), size)[:song.total]


def _drums(song: _Song) -> np.ndarray:
    rng = song.rng
    sounds = _drum_sounds(rng)
    kick_p, snare_p = (np.array(p, dtype=float) for p in _GROOVES[rng.choice(list(_GROOVES))])
    steps = np.arange(song.steps)
    extra = rng.uniform(0, 0.15)
    kick = (rng.random(song.steps) < np.clip(kick_p[steps % 16] + extra * (kick_p[steps % 16] == 0), 0, 1))
    snare = rng.random(song.steps) < snare_p[steps % 16]
    ghosts = (rng.random(song.steps) < rng.uniform(0, 0.15)) & ~snare
    hat_every = int(rng.choice([1, 2, 2, 4]))
    hats = (steps % hat_every == 0) & (rng.random(song.steps) < 0.95)
    opens = hats & (rng.random(song.steps) < rng.uniform(0, 0.2))
    velocity = lambda mask, low, high: mask * rng.uniform(low, high, song.steps)  # noqa: E731
    parts = [
        _pan(_place(song, sounds["kick"], velocity(kick, 0.8, 1.0)), rng.uniform(-0.1, 0.1)),
        _pan(_place(song, sounds["snare"], velocity(snare, 0.4, 0.6) + velocity(ghosts, 0.05, 0.15)),
             rng.uniform(-0.3, 0.3)),
        _pan(_place(song, sounds["closed"], velocity(hats & ~opens, 0.15, 0.35)), rng.uniform(-0.6, 0.6)),
        _pan(_place(song, sounds["open"], velocity(opens, 0.15, 0.3)), rng.uniform(-0.6, 0.6)),
    ]
    return song.crop(sum(parts))


# --------------------------------------------------------------------------------------------
# Bass


def _bass(song: _Song) -> np.ndarray:
    rng = song.rng
    density = rng.uniform(0.2, 0.7)
    onsets, ends, notes = [], [], []
    step = 0
    while step < song.steps:
        if step % 4 == 0 or rng.random() < density:
            length = int(rng.choice([1, 2, 2, 3, 4, 4, 6, 8]))
            root = song.chord(step)[0] - 12
            notes.append(root + int(rng.choice([0, 0, 0, 7, 12, -12 if root > 40 else 0])))
            onsets.append(song.at(step))
            ends.append(song.at(step + length) - int(rng.uniform(0.01, 0.4) * song.step))
            step += length
        else:
            step += 1
    index, since, left = _monophonic(song, onsets, ends)
    frequency = _hz(np.asarray(notes, dtype=float)[np.maximum(index, 0)])
    oscillator = _saw if rng.random() < 0.6 else _square
    raw = oscillator(frequency, rng.random())
    envelope = _gate(since, left, 0.004, 0.02) * np.exp(-since / (rng.uniform(0.3, 3.0) * RATE))
    frames = _frame_positions(song.total)
    base, opening, decay = rng.uniform(150, 900), rng.uniform(1, 12), rng.uniform(0.04, 0.3) * RATE
    cutoff = base * (1 + opening * np.exp(-since[frames] / decay))
    shaped = _shape(raw * envelope, _lowpass_gains(cutoff, order=2))
    return song.crop(_pan(shaped, rng.uniform(-0.2, 0.2)))


# --------------------------------------------------------------------------------------------
# Other: pads and plucks


def _pads(song: _Song) -> np.ndarray:
    rng = song.rng
    bars = np.minimum((song.time / (16 * song.step)).astype(int), 10_000)
    bar_chords = np.array([song.chord(16 * bar) for bar in range(int(bars.max()) + 1)], dtype=float)
    octave = 12 * int(rng.integers(0, 2))
    since = song.time - bars * 16 * song.step
    left = (bars + 1) * 16 * song.step - song.time
    envelope = _gate(since, left, rng.uniform(0.05, 0.5), 0.08)
    detune = rng.uniform(0.002, 0.008)
    channels = []
    for side in (-1, 1):
        voice = np.zeros(song.total)
        for tone in range(3):
            frequency = _hz(bar_chords[bars, tone] + octave)
            voice += _saw(frequency * (1 + side * detune), rng.random()) + _saw(frequency * (1 - side * detune / 2),
                                                                                rng.random())
        channels.append(voice * envelope)
    cutoff = np.full(_frame_positions(song.total).size, rng.uniform(1500, 6000))
    return _shape(np.stack(channels), _lowpass_gains(cutoff, order=2))


def _plucks(song: _Song) -> np.ndarray:
    rng = song.rng
    every = int(rng.choice([1, 2, 2, 3]))
    onsets, ends, notes = [], [], []
    order = rng.permutation(4) if rng.random() < 0.5 else np.arange(4)
    for count, step in enumerate(range(0, song.steps, every)):
        if rng.random() < 0.15:
            continue
        chord = song.chord(step) + [song.chord(step)[0] + 12]
        notes.append(chord[order[count % 4]] + 12 * int(rng.integers(0, 2)))
        onsets.append(song.at(step))
        ends.append(song.at(step + every))
    if not onsets:
        return np.zeros((2, song.total))
    index, since, left = _monophonic(song, onsets, ends)
    frequency = _hz(np.asarray(notes, dtype=float)[np.maximum(index, 0)])
    raw = (_square if rng.random() < 0.5 else _saw)(frequency, rng.random())
    envelope = _gate(since, left, 0.002, 0.01) * np.exp(-since / (rng.uniform(0.08, 0.4) * RATE))
    frames = _frame_positions(song.total)
    peak = rng.uniform(6000, 12000)
    base = rng.uniform(400, 1500)
    cutoff = base + (peak - base) * np.exp(-since[frames] / (rng.uniform(0.02, 0.1) * RATE))
    shaped = _shape(raw * envelope, _lowpass_gains(cutoff, order=2))
    return _pan(shaped, rng.uniform(-0.7, 0.7))


def _other(song: _Song) -> np.ndarray:
    choice = song.rng.random()
    parts = []
    if choice < 0.7:
        parts.append(_pads(song) * song.rng.uniform(0.3, 1.0))
    if choice > 0.35:
        parts.append(_plucks(song))
    return song.crop(sum(parts))


# --------------------------------------------------------------------------------------------
# Vocals


def _vocals(song: _Song) -> np.ndarray:
    rng = song.rng
    low = int(rng.choice([45, 52, 57, 62]))  # bass-baritone .. soprano
    span = int(rng.integers(10, 17))
    scale_notes = [song.root + 12 * octave + s for octave in range(-1, 6) for s in song.scale]
    allowed = [n for n in scale_notes if low <= n <= low + span]
    onsets, ends, notes, vowels, consonants = [], [], [], [], []
    step, current = 0, allowed[len(allowed) // 2]
    while step < song.steps:
        length = int(rng.choice([1, 2, 2, 3, 4, 4, 6, 8, 12]))
        if rng.random() < 0.2:  # a rest
            step += length
            continue
        move = int(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]))
        position = int(np.clip(allowed.index(current) + move, 0, len(allowed) - 1))
        current = allowed[position]
        notes.append(current)
        vowels.append(str(rng.choice(list(_VOWELS))))
        consonants.append(str(rng.choice(list(_CONSONANTS))) if rng.random() < 0.55 else "")
        onsets.append(song.at(step))
        ends.append(song.at(step + length) - int(rng.uniform(0.0, 0.5) * song.step))
        step += length
    if not onsets:
        return np.zeros((2, song.length))
    index, since, left = _monophonic(song, onsets, ends)
    safe = np.maximum(index, 0)
    pitch = np.asarray(notes, dtype=float)
    previous = np.concatenate([[pitch[0]], pitch[:-1]])
    glide = rng.uniform(0.02, 0.15) * RATE
    midi = previous[safe] + (pitch - previous)[safe] * np.minimum(since / glide, 1.0)
    vibrato_rate, vibrato_depth = rng.uniform(4.5, 6.5), rng.uniform(0.15, 0.7)
    onset_ramp = np.minimum(since / (rng.uniform(0.1, 0.35) * RATE), 1.0)
    midi = midi + vibrato_depth * onset_ramp * np.sin(2 * np.pi * vibrato_rate * song.time / RATE + rng.random() * 6)
    drift = np.interp(song.time, np.linspace(0, song.total, 20), rng.normal(0, 0.08, 20))
    frequency = _hz(midi + drift)
    voiced_envelope = _gate(since, left, rng.uniform(0.015, 0.06), 0.05)
    source = _saw(frequency, rng.random()) * voiced_envelope
    breath = rng.standard_normal(song.total) * voiced_envelope * rng.uniform(0.03, 0.12)

    # Formants per frame, gliding from the previous note's vowel, scaled with the voice's range.
    frames = _frame_positions(song.total)
    scale = 0.9 + 0.3 * (low - 45) / 17
    centres = np.array([_VOWELS[v][0] for v in vowels], dtype=float) * scale
    widths = np.array([_VOWELS[v][1] for v in vowels], dtype=float)
    frame_note = safe[frames]
    before = np.concatenate([centres[:1], centres[:-1]])
    mix = np.minimum(since[frames] / (0.08 * RATE), 1.0)[:, None]
    formants = before[frame_note] * (1 - mix) + centres[frame_note] * mix
    bandwidths = widths[frame_note]
    f = _BIN_HZ[None, :, None]
    envelope = (_FORMANT_GAINS / (1 + ((f - formants[:, None, :]) / (bandwidths[:, None, :] / 2)) ** 2)).sum(-1)
    brightness = rng.uniform(0.02, 0.08)  # the spectrum above the formants, not a dead band
    envelope = envelope + brightness / (1 + (_BIN_HZ[None, :] / 6000.0) ** 2)
    voiced = _shape(source + breath, envelope)

    # Consonants: band-limited noise just before the syllables that have one.
    noise_envelope = np.zeros(song.total)
    low_edge = np.full(frames.size, 1000.0)
    high_edge = np.full(frames.size, 12000.0)
    for onset, consonant in zip(onsets, consonants):
        if not consonant:
            continue
        band_low, band_high, seconds, level = _CONSONANTS[consonant]
        width = int(seconds * RATE)
        start, end = max(0, onset - width), min(onset, song.total)
        if end <= start:
            continue
        ramp = np.minimum(np.arange(end - start) / (0.3 * width + 1), 1.0) * level
        noise_envelope[start:end] = np.maximum(noise_envelope[start:end], ramp)
        covered = (frames >= start - _N_FFT // 2) & (frames < onset + _N_FFT // 2)
        low_edge[covered], high_edge[covered] = band_low, band_high
    consonant_audio = _shape(rng.standard_normal(song.total) * noise_envelope, _band_gains(low_edge, high_edge))
    voice = voiced / (np.abs(voiced).max() + 1e-8) + consonant_audio * rng.uniform(0.3, 0.8)
    return song.crop(_pan(voice, rng.uniform(-0.25, 0.25)))


def write_musdb_folder(root: str | os.PathLike, seed: int, split: str, count: int, seconds: float,
                       subset_folder: str = "test") -> Path:
    """Clips 0 .. count - 1 of a split as a MUSDB18-HQ-like folder that `sfsep eval` reads:
    <root>/<subset_folder>/<split>-<seed>-<index, 3 digits>/{mixture,vocals,drums,bass,other}.wav,
    32-bit float WAV (no quantization). Returns root."""
    root = Path(root)
    for index in range(count):
        clip = generate_clip(seed, split, index, seconds)
        folder = root / subset_folder / f"{split}-{seed}-{index:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, audio in [("mixture", clip.sum(0)), *zip(STEMS, clip)]:
            soundfile.write(str(folder / f"{name}.wav"), audio.T, RATE, subtype="FLOAT")
    return root
