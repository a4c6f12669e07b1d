"""Speed and quality of `--model classic` run chunk by chunk through its run-time contract.

Part 1 (speed): 3, 15 and 60 minutes of 44.1 kHz stereo synthetic music (songs of the
generator below, one after another) are separated by `sfsep.inference.demix` with the
"fade" chunking that `ClassicSeparator.run_contract_hint()` asks for, on `--threads` threads
(2 by default, as the targets are stated for). Printed: seconds, realtime factor, peak
resident memory, and the ratio time(15 min) / time(3 min) measured in the same run
(linear cost gives 5; targets: 60 min at >= 5x realtime, ratio <= 5.5). The load average is
printed first and last, since this machine is shared, and the process's CPU time next to the
wall time. On a crowded machine compare --threads 1: the median networks run thousands of
small elementwise operations, and with two threads every one of them waits at a barrier for a
descheduled worker (2026-12-05, load ~13 on 2 cores: 3 min took 414 s wall / 123 s CPU with 2
threads; the HPSS medians of one 66-s chunk 60 s wall / 9.5 s CPU with 2 threads, 5.2 s /
0.5 s with 1).

Part 2 (quality, `--quality`): a few seeded synthetic multitrack clips (drums, bass, chords
and a sung-vowel-like voice, with verse/chorus structure) are separated twice: the old way
(`repet_window_seconds = 0`: every frame compared with every other, whole signal at once) and
the new default (the bounded window, run chunk by chunk per the hint). Both are scored per
stem with sfsep's BSSEval v4 (`bss_eval_v4`, 1-s windows, median over windows, as museval
reports), and the table old / new / difference is printed.

Measured 2026-12-05 on the shared 2-core machine at load 13.5-14.6 (other sessions' tests and
benches), --threads 1 --minutes 3,15: 3 min in 99.3 s wall / 14.1 s CPU, 15 min in 398.2 s
wall / 63.6 s CPU (14.2x realtime per CPU-second; a 66-s chunk grows the peak RSS by ~220 MB);
time(15) / time(3) = 4.01 wall, 4.50 CPU (18 chunks against 4: the 3-min run pays a
relatively longer last overlap). The 60-min run was not possible at that load; at 14x
realtime per CPU-second it needs ~250 CPU-seconds, i.e. >= 5x realtime whenever the process
gets more than a third of one core. Quality, median SDR over 1-s windows of three 60-s clips
(seeds 1-3), old (window 0, whole) -> new (default, chunked), dB:
    clip 1: vocals 3.55 -> 5.60, drums 2.06 -> 2.06, bass 1.77 -> 1.85, other 1.63 -> 3.80
    clip 2: vocals 4.04 -> 5.41, drums 1.80 -> 1.80, bass 1.45 -> 1.66, other 1.84 -> 2.65
    clip 3: vocals 4.04 -> 5.49, drums 1.53 -> 1.53, bass 1.40 -> 1.51, other 1.06 -> 2.38
    mean:   vocals 3.88 -> 5.50, drums 1.80 -> 1.80, bass 1.54 -> 1.67, other 1.51 -> 2.94
Whole-signal runs with windows of +-2/4/6 s scored alike (clip 1 vocals 5.81/5.69/5.41).

    python bench/bench_classic.py [--minutes 3,15,60] [--threads 2] [--quality]
        [--quality-only] [--clips 3] [--clip-seconds 90]
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import time

import numpy as np
import torch

from sfsep.evaluate.bsseval import bss_eval_v4
from sfsep.inference import demix
from sfsep.models import build_model
from sfsep.models.classic import STEMS

RATE = 44100


# ----------------------------------------------------------------------------- synthetic music


def _tone(f0: np.ndarray, rate: int, gain, max_partials: int) -> np.ndarray:
    """Sum of partials k * f0(t) (phase integrated) weighted by gain(k, frequency), kept below
    0.45 * rate."""
    phase = 2 * np.pi * np.cumsum(f0) / rate
    out = np.zeros_like(f0)
    # sin(k x) by the recurrence sin((k+1)x) = 2 cos(x) sin(kx) - sin((k-1)x): one multiply-add
    # per partial instead of a sine.
    twice_cos = 2 * np.cos(phase)
    previous, current = np.zeros_like(f0), np.sin(phase)
    for k in range(1, max_partials + 1):
        frequency = k * f0
        if frequency.min() >= 0.45 * rate:
            break
        out += (frequency < 0.45 * rate) * gain(k, frequency) * current
        previous, current = current, twice_cos * current - previous
    return out


def _midi_hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


_VOWELS = (  # (centre Hz, bandwidth Hz, gain) of three formants
    ((730, 90, 1.0), (1090, 110, 0.5), (2440, 170, 0.25)),  # a
    ((270, 60, 1.0), (2290, 200, 0.4), (3010, 250, 0.25)),  # i
    ((300, 60, 1.0), (870, 90, 0.5), (2240, 170, 0.15)),  # u
    ((530, 80, 1.0), (1840, 150, 0.45), (2480, 180, 0.25)),  # e
    ((570, 80, 1.0), (840, 90, 0.6), (2410, 170, 0.2)),  # o
)


def _formants(vowel):
    def gain(k, frequency):
        response = sum(g / (1 + ((frequency - centre) / width) ** 2) for centre, width, g in vowel)
        return (0.05 + response) / k**0.5
    return gain


def synthetic_song(seed: int, seconds: float, rate: int = RATE) -> np.ndarray:
    """(4, 2, samples) float32 stems vocals, drums, bass, other of a seeded synthetic song.

    A tempo of 92-128 bpm in 4/4; sections of 8 bars (verse, chorus, now and then a bridge),
    each with its own 4-chord progression, drum pattern and bass rhythm, repeated the way a
    song repeats them. Drums are one kick, snare and hi-hat sample per song (a drum machine)
    with random velocities; bass plucks the chord roots; chords are a decaying piano-like tone
    retriggered on the section's rhythm; the voice sings phrases of random scale notes with
    vibrato, glides and moving vowel formants, and rests between phrases.
    """
    rng = np.random.default_rng(seed)
    length = int(seconds * rate)
    beat = 60.0 / rng.uniform(92, 128)
    bar = 4 * beat
    root = int(rng.integers(40, 47))  # E2..B2
    scale = np.array([0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.5 else [0, 2, 3, 5, 7, 8, 10])
    degrees_pool = [0, 3, 4, 5, 1, 2]  # I IV V vi ii iii (scale degrees of chord roots)

    def chord_notes(degree: int) -> list[int]:
        notes = []
        for step in (0, 2, 4):
            index = degree + step
            notes.append(root + 12 + scale[index % 7] + 12 * (index // 7))
        return notes

    chord_cache: dict[int, np.ndarray] = {}

    def chord_tone(degree: int) -> np.ndarray:
        """1.5 s of the chord on `degree`: three piano-like notes, decaying."""
        if degree not in chord_cache:
            span = int(1.5 * rate)
            local = np.arange(span) / rate
            chord_cache[degree] = sum(
                _tone(np.full(span, _midi_hz(note)), rate, lambda k, f: 0.6**k, 10) for note in chord_notes(degree)
            ) * np.exp(-local / 0.5) * np.minimum(local / 0.005, 1)
        return chord_cache[degree]

    bass_cache: dict[int, np.ndarray] = {}

    def bass_note(degree: int) -> np.ndarray:
        """An eighth-note pluck on the chord root, an octave below the chords."""
        if degree not in bass_cache:
            span = int(2 * sixteenth * rate)
            local = np.arange(span) / rate
            f0 = np.full(span, _midi_hz(root + scale[degree % 7] - 12 * (scale[degree % 7] > 7)))
            note = _tone(f0, rate, lambda k, f: 1 / k**1.5, 8) * np.exp(-local / 0.3)
            bass_cache[degree] = note * np.minimum(local / 0.003, 1) * np.minimum((span - np.arange(span)) / (0.01 * rate), 1)
        return bass_cache[degree]

    kinds = {}
    for kind in ("verse", "chorus", "bridge"):
        kinds[kind] = {
            "chords": [int(rng.choice(degrees_pool)) for _ in range(4)],
            "hits": rng.random(16) < 0.45,  # piano hits on the 16th grid
            "kick": (rng.random(16) < 0.25) | (np.arange(16) % 8 == 0),
            "snare": np.isin(np.arange(16), [4, 12]) | (rng.random(16) < 0.05),
            "hat": (np.arange(16) % 2 == 0) | (rng.random(16) < 0.3),
            "bass": (rng.random(8) < 0.6) | (np.arange(8) % 4 == 0),
        }
    order = ["verse", "chorus", "verse", "chorus", "bridge", "chorus", "chorus"]

    # One sample per drum per song.
    t = np.arange(int(0.5 * rate)) / rate
    kick_sample = np.sin(2 * np.pi * (45 * t + 90 * 0.04 * (1 - np.exp(-t / 0.04)))) * np.exp(-t / 0.15)
    snare_noise = rng.standard_normal(t.size)
    snare_sample = (0.7 * snare_noise * np.exp(-t / 0.07) + 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.05))
    hat_noise = np.diff(rng.standard_normal(t.size + 1))
    hat_sample = 0.4 * hat_noise * np.exp(-t / 0.02)

    drums = np.zeros((2, length))
    bass = np.zeros(length)
    other = np.zeros((2, length))
    sixteenth = beat / 4
    section_start, section_index = 0.0, 0
    while section_start * rate < length:
        kind = kinds[order[section_index % len(order)]]
        for bar_index in range(8):
            bar_start = section_start + bar_index * bar
            degree = kind["chords"][bar_index % 4]
            for step in range(16):
                position = int((bar_start + step * sixteenth) * rate)
                if position >= length:
                    break
                for flag, sample, pan in (("kick", kick_sample, 0.5), ("snare", snare_sample, 0.45),
                                          ("hat", hat_sample, 0.7)):
                    if kind[flag][step]:
                        span = min(sample.size, length - position)
                        velocity = rng.uniform(0.7, 1.0)
                        drums[0, position : position + span] += velocity * pan * sample[:span]
                        drums[1, position : position + span] += velocity * (1 - pan) * sample[:span]
                if kind["hits"][step] or step == 0:
                    span = min(int(1.5 * rate), length - position)
                    chord = chord_tone(degree)[:span].copy()
                    # Cut at the next hit of the chord part (a retriggered voice).
                    following = [s for s in range(step + 1, 16) if kind["hits"][s]]
                    stop = (following[0] - step) * sixteenth if following else (16 - step) * sixteenth
                    chord[int(stop * rate):] *= np.exp(-np.arange(span - min(span, int(stop * rate))) / (0.01 * rate))
                    other[0, position : position + span] += 0.6 * chord
                    other[1, position : position + span] += 0.4 * chord
            for eighth in range(8):
                if not kind["bass"][eighth]:
                    continue
                position = int((bar_start + eighth * 2 * sixteenth) * rate)
                if position >= length:
                    break
                span = min(int(2 * sixteenth * rate), length - position)
                bass[position : position + span] += bass_note(degree)[:span]
        section_start += 8 * bar
        section_index += 1

    # Voice: phrases of 1-2 bars separated by rests, notes of 1-4 sixteenths... 2 beats.
    vocals = np.zeros(length)
    position = int(rng.uniform(0.5, 2.0) * bar * rate)
    melody_range = root + 24 + np.concatenate([scale - 12, scale, scale + 12])
    melody_range = melody_range[(melody_range >= 53) & (melody_range <= 74)]  # F3..D5
    while position < length:
        phrase_end = position + int(rng.uniform(1, 2.5) * bar * rate)
        previous = _midi_hz(float(rng.choice(melody_range)))
        while position < min(phrase_end, length):
            span = min(int(rng.choice([1, 2, 3, 4, 6, 8]) * sixteenth * rate), length - position)
            target = _midi_hz(float(rng.choice(melody_range)))
            local = np.arange(span) / rate
            glide = target + (previous - target) * np.exp(-local / 0.03)
            vibrato = 1 + 0.012 * np.minimum(local / 0.2, 1) * np.sin(2 * np.pi * rng.uniform(5, 6.5) * local)
            vowel = _VOWELS[int(rng.integers(len(_VOWELS)))]
            note = _tone(glide * vibrato, rate, _formants(vowel), 30)
            note *= np.minimum(local / 0.02, 1) * np.minimum((span - np.arange(span)) / (0.03 * rate), 1)
            vocals[position : position + span] += note * rng.uniform(0.7, 1.0)
            position += span
            previous = target
        position += int(rng.uniform(0.25, 0.75) * bar * rate)

    sources = np.stack([np.stack([vocals, vocals]), drums, np.stack([bass, bass]), other])
    rms = np.sqrt((sources**2).mean(axis=(1, 2), keepdims=True)) + 1e-12
    levels = np.array([0.1, 0.09, 0.09, 0.07])[:, None, None]
    return (sources / rms * levels).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _song_mix(seed: int, seconds: float, rate: int) -> torch.Tensor:
    return torch.from_numpy(synthetic_song(seed, seconds, rate).sum(axis=0))


def long_mix(seconds: float, rate: int = RATE, song_seconds: float = 180.0, distinct: int = 4) -> torch.Tensor:
    """(2, samples) mixture of `seconds`: songs of `song_seconds` one after another, cycling
    through `distinct` seeded songs (generating an hour of distinct songs would take longer
    than separating it; the separator's cost does not depend on which song it hears)."""
    total = int(seconds * rate)
    parts, filled, index = [], 0, 0
    while filled < total:
        part = _song_mix(100 + index % distinct, song_seconds, rate)[:, : total - filled]
        parts.append(part)
        filled += part.shape[-1]
        index += 1
    return torch.cat(parts, dim=-1)


# ----------------------------------------------------------------------------- runs


def chunked(module, mix: torch.Tensor) -> torch.Tensor:
    """`mix` (channels, samples) separated chunk by chunk as the module's contract asks."""
    segment, overlap = module.run_contract_hint()
    return demix(module, mix, chunk_size=segment, overlap=overlap, style="fade")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speed(minutes: list[float]) -> None:
    module = build_model("classic", {"sample_rate": RATE})
    segment, overlap = module.run_contract_hint()
    print(f"hint: segment {segment} samples ({segment / RATE:.1f} s), overlap {overlap:.4f} "
          f"({overlap * segment / RATE:.1f} s), REPET window +-{module.settings['repet_window_seconds']} s")
    # Warm-up: one chunk (loads FFT plans and the allocator's pools).
    chunked(module, long_mix(segment / RATE)[:, :segment])
    times, cpu_times = {}, {}
    for length in minutes:
        mix = long_mix(60 * length)
        start = time.perf_counter()
        cpu = time.process_time()
        stems = chunked(module, mix)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        times[length], cpu_times[length] = elapsed, cpu
        assert stems.shape == (len(STEMS), *mix.shape)
        print(f"{length:5g} min: {elapsed:7.1f} s wall, {cpu:7.1f} s CPU, {60 * length / elapsed:5.1f}x realtime "
              f"({60 * length / cpu:.1f}x per CPU-second), peak RSS so far {peak_rss_mib():.0f} MiB, "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
        del mix, stems
    if 3 in times and 15 in times:
        print(f"time(15 min) / time(3 min) = {times[15] / times[3]:.2f} (linear: 5; target <= 5.5); "
              f"CPU time ratio {cpu_times[15] / cpu_times[3]:.2f}")
    if 60 in times:
        print(f"60 min at {3600 / times[60]:.1f}x realtime (target >= 5x)")


def median_sdr(references: np.ndarray, estimates: torch.Tensor) -> list[float]:
    result = bss_eval_v4(torch.from_numpy(references).double(), estimates.double(), RATE, RATE)
    return result.median()["SDR"].tolist()


def quality(clips: int, clip_seconds: float) -> None:
    old = build_model("classic", {"sample_rate": RATE, "repet_window_seconds": 0.0})
    new = build_model("classic", {"sample_rate": RATE})
    rows = []
    for clip in range(clips):
        sources = synthetic_song(clip + 1, clip_seconds)
        mix = torch.from_numpy(sources.sum(axis=0))
        start = time.perf_counter()
        with torch.inference_mode():
            old_stems = old(mix[None])[0]
        old_seconds = time.perf_counter() - start
        start = time.perf_counter()
        new_stems = chunked(new, mix)
        new_seconds = time.perf_counter() - start
        old_sdr, new_sdr = median_sdr(sources, old_stems), median_sdr(sources, new_stems)
        rows.append((old_sdr, new_sdr))
        print(f"clip {clip + 1} ({clip_seconds:g} s; old {old_seconds:.1f} s, new {new_seconds:.1f} s)")
        for stem, before, after in zip(STEMS, old_sdr, new_sdr):
            print(f"  {stem:7s} old {before:6.2f} dB  new {after:6.2f} dB  new-old {after - before:+.2f} dB")
    old_mean = np.mean([row[0] for row in rows], axis=0)
    new_mean = np.mean([row[1] for row in rows], axis=0)
    print(f"mean over {clips} clips (median SDR over 1-s windows, dB):")
    print("  stem     old (window 0, whole)  new (default, chunked)  new-old")
    for stem, before, after in zip(STEMS, old_mean, new_mean):
        print(f"  {stem:7s}  {before:20.2f}  {after:22.2f}  {after - before:+7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", default="3,15,60", help="lengths to time, comma separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quality", action="store_true", help="also compare old and new separation quality")
    parser.add_argument("--quality-only", action="store_true", help="only the quality comparison")
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--clip-seconds", type=float, default=90.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
          f"on {os.cpu_count()} CPUs; {args.threads} thread(s)", flush=True)
    if not args.quality_only:
        speed([float(value) for value in args.minutes.split(",")])
    if args.quality or args.quality_only:
        quality(args.clips, args.clip_seconds)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
