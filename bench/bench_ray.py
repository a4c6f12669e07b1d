"""Throughput of `sfsep batch --engine ray` against the local engine, on this machine.

Eight short files (synthetic stereo music, `--seconds` each at 44.1 kHz) are separated with
`--model classic` (no weights) by the library calls the command line makes
(`runs.separate_folder`), on a local Ray instance started once before (`ray.init(num_cpus=2)`,
as a running cluster joined with --address is):
  - local:      the local engine with --jobs 2 (two files at a time, one torch thread each: the
                same parallelism as two Ray workers of one CPU);
  - ray, cold:  --engine ray --workers 2 --cpus-per-worker 1, as every command-line run does it:
                two workers started for the run (new Python processes that import torch and
                sfsep), the model shipped through the object store, one actor task per file, the
                results back, the workers ended;
  - ray, kept:  the same run by a program that keeps its workers between runs
                (`RayEngine.keep_workers()`): the second run of such a block, whose workers are
                already up. What it costs beyond local is Ray's cost per file.
The instance's own start is timed once (a run without --address pays it too).

Printed per run: seconds, files per minute; then, from the best of `--repeats` runs of each,
Ray's overhead per file, (kept - local) / files, and ray / local for kept workers (target: at
most 1.10, i.e. at most 10% slower) and for a cold run, whose difference is the workers' start.
The load average is printed before, during and after the runs. The runs themselves keep two
processes busy (a load of about 2 on this 2-core machine); a load above 1 before they start
means other processes share the CPUs, and the script says its ratios are then not trustworthy.

    python bench/bench_ray.py [--files 8] [--seconds 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from sfsep.pipeline import ModelChoice, OutputOptions, Settings
from sfsep.runs import separate_folder

RATE = 44100


def _write_music(folder: Path, files: int, seconds: float) -> None:
    """Short stereo clips: a bass line, a chord, a vibrato voice and noise bursts (seeded)."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * RATE)) / RATE
    for index in range(files):
        rng = np.random.default_rng(index)
        voice = 0.2 * np.sin(2 * np.pi * (330 + 20 * index + 15 * np.sin(2 * np.pi * 5 * t)) * t)
        bass = 0.3 * np.sin(2 * np.pi * (55 + 5 * index) * t)
        chord = 0.08 * sum(np.sin(2 * np.pi * f * t) for f in (440, 554, 659))
        drums = 0.3 * rng.standard_normal(t.size) * np.exp(-(t % 0.5) * 30)
        mix = voice + bass + chord + drums
        stereo = np.stack([mix, 0.9 * mix + 0.01 * rng.standard_normal(t.size)], axis=1)
        sf.write(folder / f"clip{index}.wav", stereo.astype(np.float32), RATE, subtype="PCM_16")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min) on {os.cpu_count()} CPUs"


def _run(music: Path, out: Path, **engine) -> float:
    tick = time.perf_counter()
    report = separate_folder(music, ModelChoice("classic", device="cpu"), OutputOptions(out=out, overwrite=True),
                             Settings(device="cpu"), **engine)
    seconds = time.perf_counter() - tick
    counts = report.counts()
    if counts["done"] != len(report.results):
        sys.exit(f"not every file was separated: {counts}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each file")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each engine (the best counts)")
    args = parser.parse_args()

    import ray

    from sfsep.ray_engine import RayEngine

    torch.set_num_threads(1)  # the driver's own work (and --jobs 2: one thread per file)
    before = os.getloadavg()[0]
    print(_load(), flush=True)
    with tempfile.TemporaryDirectory(prefix="sfsep-bench-ray-") as scratch:
        music, out = Path(scratch) / "music", Path(scratch) / "out"
        _write_music(music, args.files, args.seconds)
        print(f"{args.files} files of {args.seconds:g} s, 44.1 kHz stereo, --model classic", flush=True)

        tick = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        started = time.perf_counter() - tick
        print(f"ray.init(num_cpus=2): the local Ray instance started in {started:.1f} s (paid once by a run "
              f"without --address)", flush=True)
        engine = RayEngine(workers=2, cpus_per_worker=1)
        names = ("local --jobs 2", "ray, cold", "ray, kept")
        times: dict[str, list[float]] = {name: [] for name in names}

        def timed(repeat: int, name: str, **options) -> None:
            seconds = _run(music, out / name.split()[-1], **options)
            times[name].append(seconds)
            print(f"  run {repeat + 1}, {name:<15} {seconds:7.2f} s  {args.files / seconds * 60:6.1f} files/min   "
                  f"({_load()})", flush=True)

        try:
            for repeat in range(args.repeats):
                timed(repeat, names[0], jobs=2)
                timed(repeat, names[1], engine=engine)
                with engine.keep_workers() as kept:
                    _run(music, out / "warm-up", engine=kept)  # the block's first run: its workers start
                    timed(repeat, names[2], engine=kept)
        finally:
            ray.shutdown()

    local, cold, kept = (min(times[name]) for name in names)
    print(f"best: local {local:.2f} s ({args.files / local * 60:.1f} files/min), ray cold {cold:.2f} s "
          f"({args.files / cold * 60:.1f} files/min), ray kept {kept:.2f} s ({args.files / kept * 60:.1f} files/min)")
    print(f"Ray's overhead per file (kept workers): {(kept - local) / args.files:+.2f} s; ray / local = "
          f"{kept / local:.3f} (target <= 1.10{', met' if kept / local <= 1.10 else ', NOT met'})")
    print(f"a cold run (what each command-line run pays): ray / local = {cold / local:.3f}; the workers' start "
          f"{cold - kept:.1f} s; with the instance's start (a run without --address): {(cold + started) / local:.3f}")
    print(_load())
    if before > 1:
        print(f"the 1-minute load was {before:.2f} before the runs: other processes were using the CPUs, so these "
              f"ratios are not trustworthy; run it again on a quiet machine")


if __name__ == "__main__":
    main()
