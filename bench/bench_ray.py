"""Throughput of `sfsep batch --engine ray` against the local engine, on this machine.

Eight short files (synthetic stereo music, `--seconds` each at 44.1 kHz) are separated with
`--model classic` (no weights) by the library calls the command line makes
(`runs.separate_folder`):
  - local: the local engine with --jobs 2 (two files at a time, one torch thread each: the same
    parallelism as two Ray workers of one CPU);
  - ray:   --engine ray --workers 2 --cpus-per-worker 1 on a local Ray instance started once
    before (`ray.init(num_cpus=2)`, as a running cluster joined with --address is), so what is
    timed is the engine's own cost: creating the two workers, shipping the model through the
    object store, one actor task per file, the results back.
Two fixed costs are timed separately: the Ray instance's start (a run without --address pays it
once, about 5 s on a quiet machine; a run joining a cluster does not), and the start of two
workers (new Python processes that import torch and sfsep; every run pays it, and it is part of
the ray time above).

Printed per run: seconds, files per minute; then Ray's overhead per file, (ray - local) / files,
the ratio ray / local (target: at most 1.10, i.e. at most 10% slower), and the same without the
workers' start (the cost per file once the workers run: what more files, or longer ones, tend
to). Each engine runs `--repeats` times, alternating, and the best time of each is compared.
The load average is printed first and last: the machine is shared, and a ratio measured at a
load above 2 (more runnable processes than its 2 cores) is not trustworthy; the script says so.

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


def _worker_start(ray, count: int) -> float:
    """Seconds until `count` fresh engine workers answer (what each run pays before its first file)."""
    from sfsep.ray_engine import SeparationWorker

    tick = time.perf_counter()
    worker_class = ray.remote(SeparationWorker).options(num_cpus=1, max_concurrency=2)
    workers = [worker_class.remote("cpu", 1) for _ in range(count)]
    ray.get([worker.stop.remote() for worker in workers])
    seconds = time.perf_counter() - tick
    for worker in workers:
        ray.kill(worker, no_restart=True)
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
        times: dict[str, list[float]] = {"local --jobs 2": [], "ray --workers 2": []}
        try:
            workers_start = _worker_start(ray, 2)
            print(f"two fresh Ray workers answered after {workers_start:.1f} s (each run pays this)", flush=True)
            for repeat in range(args.repeats):
                for name, options in (("local --jobs 2", {"jobs": 2}), ("ray --workers 2", {"engine": engine})):
                    seconds = _run(music, out / name.split()[0], **options)
                    times[name].append(seconds)
                    print(f"  run {repeat + 1}, {name:<16} {seconds:7.2f} s  {args.files / seconds * 60:6.1f} "
                          f"files/min   ({_load()})", flush=True)
        finally:
            ray.shutdown()

    local, on_ray = min(times["local --jobs 2"]), min(times["ray --workers 2"])
    print(f"best: local {local:.2f} s ({args.files / local * 60:.1f} files/min), ray {on_ray:.2f} s "
          f"({args.files / on_ray * 60:.1f} files/min)")
    print(f"Ray's overhead per file: {(on_ray - local) / args.files:+.2f} s; ray / local = {on_ray / local:.3f} "
          f"(target <= 1.10{', met' if on_ray / local <= 1.10 else ', NOT met'}); with the instance's start: "
          f"{(on_ray + started) / local:.3f}")
    steady = on_ray - workers_start
    print(f"without the workers' start ({workers_start:.1f} s): {(steady - local) / args.files:+.2f} s per file, "
          f"ray / local = {steady / local:.3f}")
    print(_load())
    if max(os.getloadavg()[:2]) > 2:
        print("the load was above 2 on 2 cores: other processes shared the CPUs, so this ratio is not "
              "trustworthy; run it again on a quiet machine")


if __name__ == "__main__":
    main()
