"""Bench: sfsep's BSSEval v4 against museval 0.4.1 on a 60-s 4-source stereo track.

    python bench/bench_bsseval.py [--seconds 60] [--threads 2] [--broadband]

Both run in this process on the same arrays with 1-s windows and hops (museval's defaults,
`museval.evaluate(refs, ests, win=44100, hop=44100)`). Prints both wall times, the speed
ratio (the target is >= 20x; ours is the median of 8 calls, 4 before and 4 after museval's,
after a first call at the same size whose time is printed too), and the largest framewise differences. museval is a bench-only
dependency (`pip install museval`); it imports stempeg, which refuses to import without
`ffmpeg` and `ffprobe` on PATH although evaluation never runs them, so stub executables are
put on PATH in a temporary folder when the real ones are missing.

The track re-creates the generator of shared/fixtures/bsseval_museval.npz (described in
shared/research/resampling-metrics.md section 5) at 60 s: tonal vocals (silent 3-5 s, so
windows 3 and 4 are NaN), plucked bass, noise drums, chords; estimates leak the other sources
and add low-passed noise. Only SDR is comparable on it: its tonal sources make the Gram
matrix of the 512-tap filters numerically singular, and museval's own ISR/SIR/SAR then move by
several dB with the BLAS thread count (see tests/test_bsseval.py). `--broadband` adds a
second comparison on coloured-noise sources, where all four metrics are well defined.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATE = 44100
# Levels of vocals, bass, drums, other, set so that the median framewise SDRs come out near
# the ones the research notes report for museval on the 60-s fixture-generator track
# (17.03 / 17.70 / 13.86 / 10.80 dB).
SOURCE_GAINS = (1.0, 1.29, 2.48, 0.86)


def tonal_track(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(refs, ests), each float32 (4, samples, 2) in the order vocals, bass, drums, other."""
    from scipy.signal import butter, sosfilt

    length = int(seconds * RATE)
    t = np.arange(length) / RATE
    refs = np.zeros((4, length, 2))

    # vocals: 220 Hz with 6 partials, 5.5 Hz vibrato of +-2 %, a slow amplitude envelope,
    # right channel 20 samples late, exactly zero on 3-5 s
    phase = 2 * np.pi * np.cumsum(220.0 * (1 + 0.02 * np.sin(2 * np.pi * 5.5 * t))) / RATE
    vocals = sum(np.sin(k * phase) / k for k in range(1, 7))
    vocals *= 0.3 * (0.6 + 0.4 * np.sin(2 * np.pi * 0.25 * t) ** 2)
    vocals[int(3.0 * RATE) : int(5.0 * RATE)] = 0.0
    refs[0, :, 0] = vocals
    refs[0, 20:, 1] = vocals[:-20]
    refs[0, int(3.0 * RATE) : int(5.0 * RATE) + 20, 1] = 0.0

    # bass: one plucked note per second (fundamental + 2nd harmonic), cycling 4 pitches
    notes = [55.0, 82.5, 110.0, 73.4]
    for second in range(int(np.ceil(seconds))):
        start = second * RATE
        span = min(RATE, length - start)
        if span <= 0:
            break
        local = np.arange(span) / RATE
        f0 = notes[second % 4]
        note = np.sin(2 * np.pi * f0 * local) + 0.5 * np.sin(2 * np.pi * 2 * f0 * local)
        note *= 0.4 * np.exp(-local * 3.0)
        refs[1, start : start + span, :] += note[:, None] * np.array([1.0, 0.9])

    # drums at 120 BPM: kick on beats, snare on off-beats, hats on eighths
    rng = np.random.default_rng(0)
    snare_band = butter(2, [800, 4000], btype="bandpass", fs=RATE, output="sos")
    hat_band = butter(2, 5000, btype="highpass", fs=RATE, output="sos")
    beat = RATE // 2
    for start in range(0, length, beat // 2):
        span = min(beat // 2, length - start)
        local = np.arange(span) / RATE
        index = start // (beat // 2)
        if index % 2 == 0:
            hit = (
                np.sin(2 * np.pi * (60 * local - 20 * local**2)) * np.exp(-local * 18)
                if index % 4 == 0
                else sosfilt(snare_band, rng.standard_normal(span)) * np.exp(-local * 25)
            )
            refs[2, start : start + span, :] += 0.5 * hit[:, None]
        hat = sosfilt(hat_band, rng.standard_normal((span, 2)), axis=0) * np.exp(-local * 60)[:, None]
        refs[2, start : start + span, :] += 0.15 * hat

    # other: triads changing every 2 s with a slow attack, spread across the stereo field
    chords = [(261.63, 329.63, 392.0), (220.0, 261.63, 329.63), (174.61, 220.0, 261.63), (196.0, 246.94, 293.66)]
    for index, start in enumerate(range(0, length, 2 * RATE)):
        span = min(2 * RATE, length - start)
        local = np.arange(span) / RATE
        attack = 1 - np.exp(-local * 4)
        for voice, freq in enumerate(chords[index % 4]):
            pan = np.array([1.0 - 0.3 * voice, 0.4 + 0.3 * voice])
            refs[3, start : start + span, :] += (
                0.12 * attack * np.sin(2 * np.pi * freq * local)
            )[:, None] * pan

    refs *= np.array(SOURCE_GAINS)[:, None, None]
    return refs.astype(np.float32), leaky_estimates(refs).astype(np.float32)


def leaky_estimates(refs: np.ndarray) -> np.ndarray:
    """est_j = ref_j + sum_{k != j} leak_j (0.5 + 0.5 k / 4) ref_k + white noise low-passed
    at 3 kHz (2nd-order Butterworth) at -25 dB re ref_j's RMS (noise from default_rng(1))."""
    from scipy.signal import butter, sosfilt

    length = refs.shape[1]
    leak = [0.15, 0.10, 0.20, 0.12]
    noise_rng = np.random.default_rng(1)
    lowpass = butter(2, 3000, btype="lowpass", fs=RATE, output="sos")
    ests = np.empty_like(refs)
    for j in range(4):
        ests[j] = refs[j] + sum(
            leak[j] * (0.5 + 0.5 * k / 4) * refs[k] for k in range(4) if k != j
        )
        noise = sosfilt(lowpass, noise_rng.standard_normal((length, 2)), axis=0)
        rms_ref = np.sqrt(np.mean(refs[j] ** 2))
        ests[j] += noise * rms_ref * 10 ** (-25 / 20) / np.sqrt(np.mean(noise**2))
    return ests


def broadband_track(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Coloured-noise sources (well-conditioned filters), same shapes and leakage."""
    rng = np.random.default_rng(7)
    length = int(seconds * RATE)
    refs = np.empty((4, length, 2))
    for j in range(4):
        for c in range(2):
            fir = rng.standard_normal(24) * np.exp(-np.arange(24) / (2 + j))
            refs[j, :, c] = np.convolve(rng.standard_normal(length), fir)[:length] * 0.1
    ests = np.empty_like(refs)
    for j in range(4):
        ests[j] = 0.9 * refs[j] + sum(0.1 * refs[k] for k in range(4) if k != j)
        ests[j] += 0.02 * rng.standard_normal((length, 2))
    return refs.astype(np.float32), ests.astype(np.float32)


def ensure_ffmpeg_stubs() -> None:
    """Put do-nothing `ffmpeg`/`ffprobe` on PATH if missing (stempeg checks at import)."""
    if shutil.which("ffmpeg") and shutil.which("ffprobe"):
        return
    folder = Path(tempfile.mkdtemp(prefix="sfsep-ffmpeg-stub-"))
    for name in ("ffmpeg", "ffprobe"):
        path = folder / name
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
    print(f"(ffmpeg/ffprobe not found: stubs in {folder})")


def compare(label: str, refs: np.ndarray, ests: np.ndarray, all_metrics: bool) -> None:
    import museval
    import torch

    from sfsep.evaluate.bsseval import bss_eval_v4

    # Each implementation gets the arrays in its own layout, converted before any timing:
    # museval (sources, samples, channels) numpy, sfsep (sources, channels, samples) torch,
    # the layout `sfsep eval` passes (a permuted view would cost us one 170 MB copy per call).
    refs_torch = torch.from_numpy(np.ascontiguousarray(refs.transpose(0, 2, 1)))
    ests_torch = torch.from_numpy(np.ascontiguousarray(ests.transpose(0, 2, 1)))
    # The first call at a new size pays one-time costs (FFT plans, first touch of the large
    # buffers); `sfsep eval` pays them once per process, then scores track after track. So
    # the ratio uses the calls after it (shown separately, not hidden).
    start = time.perf_counter()
    bss_eval_v4(refs_torch, ests_torch, window=RATE, hop=RATE)
    cold_seconds = time.perf_counter() - start

    # The machine is shared and its speed drifts over tens of seconds: our runs are taken
    # half before and half after museval's one long run, so both see the same conditions,
    # and the ratio uses their median.
    def ours_timed(count: int) -> list[float]:
        nonlocal ours
        times = []
        for _ in range(count):
            start = time.perf_counter()
            ours = bss_eval_v4(refs_torch, ests_torch, window=RATE, hop=RATE)
            times.append(time.perf_counter() - start)
        return times

    ours = None
    ours_runs = ours_timed(4)
    start = time.perf_counter()
    theirs = museval.evaluate(refs, ests, win=RATE, hop=RATE)
    museval_seconds = time.perf_counter() - start
    ours_runs += ours_timed(4)
    ours_seconds = float(np.median(ours_runs))

    print(f"\n== {label}: {refs.shape[1] / RATE:.0f} s, {refs.shape[0]} sources, "
          f"{refs.shape[2]} channels, {ours.sdr.shape[1]} windows")
    print(f"load average (1 min) after the runs: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"sfsep bss_eval_v4 : {ours_seconds:8.2f} s (median of "
          + ", ".join(f"{t:.2f}" for t in ours_runs) + f"; first call {cold_seconds:.2f} s)")
    print(f"museval.evaluate  : {museval_seconds:8.2f} s")
    print(f"speed ratio       : {museval_seconds / ours_seconds:8.1f}x (target >= 20x; "
          f"{museval_seconds / min(ours_runs):.1f}x with our fastest run, "
          f"{museval_seconds / cold_seconds:.1f}x with the first call)")
    names = ("SDR", "ISR", "SIR", "SAR")
    for name, mine, reference in zip(names, ours, theirs):
        mine = mine.numpy()
        same_nan = np.array_equal(np.isnan(mine), np.isnan(reference))
        diff = np.nanmax(np.abs(mine - reference))
        note = "" if name == "SDR" or all_metrics else "  (round-off in museval on tonal sources)"
        print(f"max |framewise {name} difference| = {diff:.3e} dB, NaN pattern equal: {same_nan}{note}")
    medians_ours = ours.median()["SDR"].numpy()
    medians_theirs = np.nanmedian(theirs[0], axis=1)
    print("median SDR sfsep  : " + " / ".join(f"{v:.3f}" for v in medians_ours))
    print("median SDR museval: " + " / ".join(f"{v:.3f}" for v in medians_theirs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--broadband", action="store_true", help="also compare on noise sources")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    ensure_ffmpeg_stubs()
    print(f"torch {torch.__version__}, numpy {np.__version__}, threads {args.threads}")
    compare("tonal track (fixture generator)", *tonal_track(args.seconds), all_metrics=False)
    if args.broadband:
        compare("broadband track", *broadband_track(args.seconds), all_metrics=True)


if __name__ == "__main__":
    main()
