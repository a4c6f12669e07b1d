"""Make examples/demo_8k.wav: a few seconds of synthetic music at 8 kHz (no copyrighted audio).

A sung-like voice (a vibrato melody with vowel formants), noise-burst drums, a plucked bass line
and sustained chords, mixed in stereo and written as 16-bit PCM at 8000 Hz: the kind of
telephone-band recording sfsep's sampling-rate handling is for. Deterministic: the same file
every run.

    python examples/make_demo.py [OUTPUT] [--rate 8000] [--seconds 6]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf


def _envelope(t: np.ndarray, attack: float, decay: float) -> np.ndarray:
    return np.minimum(t / attack, 1.0) * np.exp(-np.maximum(t - attack, 0.0) / decay)


def make_demo(rate: int = 8000, seconds: float = 6.0, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    beat = 0.5  # 120 BPM

    # Voice: a melody of half-second notes with 5.5 Hz vibrato, harmonics shaped by two formants.
    melody = np.array([220.0, 246.9, 261.6, 293.7, 329.6, 293.7, 261.6, 246.9])
    f0 = melody[(t / beat).astype(int) % len(melody)] * (1 + 0.02 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = np.zeros(n)
    for harmonic in range(1, 12):
        frequency = harmonic * f0
        gain = np.exp(-((frequency - 700) / 300) ** 2) + 0.6 * np.exp(-((frequency - 1200) / 400) ** 2)
        voice += gain * np.sin(harmonic * phase) * (frequency < rate / 2)
    note_time = t % beat
    voice *= np.minimum(note_time / 0.03, 1.0) * np.minimum((beat - note_time) / 0.05, 1.0)
    voice *= 0.25 / (np.abs(voice).max() + 1e-9)

    # Drums: kick on every beat (a falling sine), snare on beats 2 and 4 (noise burst).
    drums = np.zeros(n)
    for start in np.arange(0, seconds, beat):
        i = int(start * rate)
        local = t[i:] - start
        kick = np.sin(2 * np.pi * (50 + 60 * np.exp(-local / 0.03)) * local) * np.exp(-local / 0.12)
        drums[i:] += 0.5 * kick
        if int(round(start / beat)) % 2 == 1:
            drums[i:] += 0.25 * rng.standard_normal(n - i) * np.exp(-local / 0.05)

    # Bass: plucked root notes, one per beat.
    roots = np.array([55.0, 55.0, 73.4, 82.4])
    bass = np.zeros(n)
    for k, start in enumerate(np.arange(0, seconds, beat)):
        i = int(start * rate)
        local = t[i:] - start
        f = roots[(k // 2) % len(roots)]
        bass[i:] += 0.3 * (np.sin(2 * np.pi * f * local) + 0.3 * np.sin(4 * np.pi * f * local)) * _envelope(local, 0.01, 0.4)

    # Chords: sustained triads, two seconds each, slow attack.
    chords = [(220.0, 277.2, 329.6), (196.0, 246.9, 293.7), (174.6, 220.0, 261.6)]
    other = np.zeros(n)
    for k, start in enumerate(np.arange(0, seconds, 2.0)):
        i = int(start * rate)
        local = t[i:] - start
        for f in chords[k % len(chords)]:
            other[i:] += 0.06 * np.sin(2 * np.pi * f * local + k) * np.minimum(local / 0.3, 1.0) * np.exp(-local / 3.0)

    left = voice + drums + bass + 1.2 * other
    right = voice + 0.8 * drums + bass + 0.8 * other
    mix = np.stack([left, right], axis=1)
    return (0.9 * mix / np.abs(mix).max()).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default=str(Path(__file__).with_name("demo_8k.wav")))
    parser.add_argument("--rate", type=int, default=8000)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    sf.write(args.output, make_demo(args.rate, args.seconds), args.rate, subtype="PCM_16")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
