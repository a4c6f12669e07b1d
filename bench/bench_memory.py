"""Peak memory of `separate_file` against the length of the input (issue 12, item 3: flat memory).

The streamed flow holds blocks and chunks, never the track, so a 60-minute file should need
about what a 1-minute file needs. Each case (model, input rate, minutes) runs in a fresh Python
process, so that its peak is its own:

1. a synthetic stereo WAV (a chord that changes every 2 s, a bass line, noise bursts on the
   beat, a little broadband noise; 16-bit) is written into the child's own temporary folder,
   block by block, so that making the file never holds it;
2. the model is made ready: `classic` through `load_separator` (the built-in DSP separator),
   `htdemucs` as the full published HT-Demucs config of models.toml (`get_spec("htdemucs")`,
   `build_model`, random weights from torch.manual_seed(0)) in a `Separator`;
3. `separate_file` separates it (stems written to the temporary folder, then deleted).

The child reports its peak resident memory (VmHWM from /proc/self/status: the most resident
memory the process ever had, imports, model and file writing included), the peak it had reached
before separating (torch, the model and the file writer) and the seconds separation took. The
parent watches each child's resident memory and stops a child that goes over --max-mb, so a
separator that does hold the track cannot take the machine down (the row then says "> N").

Printed: the load average (this machine is shared), one row per case, then for each model and
rate the peak of the longest run minus that of the shortest, against the target: less than
100 MB between 1 and 60 minutes (PASS / FAIL). --two-hours adds 120 minutes of 8 kHz stereo
through `classic`, which must separate (its peak is printed).

The allocator. With glibc's defaults a freed tensor's memory often stays in the heap for reuse,
so the peak includes retention that moves from run to run of the same case (HT-Demucs, 1 min:
1125 and 1277 MB; conv_tasnet_tiny, 1 min: 477-528 MB). --mmap-threshold 131072 makes every
tensor above 128 KiB go back to the system when freed: the peaks are then what the flow holds
and repeat within a few MB, at some cost in system time (page faults).

HT-Demucs at full size runs about 0.35x realtime on 2 idle CPU cores whatever the input rate (it
runs at 44.1 kHz; demucs' 25% chunk overlap included), so a 10-minute case takes about half an
hour and a 60-minute one some three hours, several times that on a busy machine; run them
deliberately. Its run-time contract already takes one chunk per model call;
--batch-size changes the chunks per call (never the architecture).

    python bench/bench_memory.py                            # everything: many hours
    python bench/bench_memory.py --models classic --minutes 1,10,60 --two-hours
    python bench/bench_memory.py --models htdemucs --rates 8000 --minutes 1,10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MB = 100.0
"""Most the peak may grow between the shortest and the longest input (issue 12: 1 vs 60 min)."""

WRITE_BLOCK = 1 << 16
"""Frames of synthetic audio computed and written at a time."""


def megabytes(kib: float) -> float:
    return kib * 1024 / 1e6


def peak_kib() -> int:
    """This process's peak resident memory (VmHWM) in KiB; ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage // 1024 if sys.platform == "darwin" else usage  # bytes on macOS, KiB on Linux


def resident_kib(pid: int) -> int | None:
    """A running process's resident memory (VmRSS) in KiB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------------------------
# The child: one case


def write_synthetic_wav(path: Path, rate: int, seconds: float) -> None:
    """Stereo music-like test signal, `seconds` long, written WRITE_BLOCK frames at a time;
    every block is computed from the absolute sample index, so the blocks join seamlessly."""
    import numpy as np
    import soundfile as sf

    total = int(round(seconds * rate))
    generator = np.random.default_rng(0)
    chords = np.array([[220.0, 277.2, 329.6], [196.0, 246.9, 293.7], [174.6, 220.0, 261.6], [164.8, 207.7, 246.9]])
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=2, subtype="PCM_16") as handle:
        for first in range(0, total, WRITE_BLOCK):
            index = np.arange(first, min(total, first + WRITE_BLOCK))
            t = index / rate
            chord = chords[(t // 2).astype(int) % len(chords)]  # (n, 3): a new chord every 2 s
            harmony = 0.08 * np.sin(2 * np.pi * chord * t[:, None]).sum(1)
            bass = 0.2 * np.sin(2 * np.pi * (chord[:, 0] / 2) * t)
            beat = np.exp(-40 * (t % 0.5))  # a decaying burst every half second
            hits = 0.3 * beat * generator.standard_normal(index.size)
            left = harmony + bass + hits + 0.01 * generator.standard_normal(index.size)
            right = 0.8 * harmony + bass + hits + 0.01 * generator.standard_normal(index.size)
            handle.write(np.stack([left, right], axis=1).astype(np.float32))


def make_separator(model: str):
    import torch

    from sfsep.models import build_model
    from sfsep.pipeline import Separator, load_separator
    from sfsep.registry import get_spec

    if model == "classic":
        return load_separator("classic", device="cpu")
    if model == "htdemucs":
        spec = get_spec("htdemucs")  # the full published HT-Demucs config
        torch.manual_seed(0)
        module = build_model(spec.family, spec.config_copy())
        return Separator(spec, device="cpu", modules=[module])
    raise SystemExit(f"unknown model {model} (classic, htdemucs)")


def measure(model: str, rate: int, minutes: float, threads: int, batch_size: int | None, scratch: Path) -> dict:
    """One case, in the child: the input file and the stems go to `scratch` (the parent's to remove)."""
    import torch

    from sfsep.pipeline import OutputOptions, Settings, separate_file

    torch.set_num_threads(threads)
    path = scratch / f"mix_{rate}_{minutes:g}min.wav"
    started = time.perf_counter()
    write_synthetic_wav(path, rate, minutes * 60)
    writing = time.perf_counter() - started
    separator = make_separator(model)
    before = peak_kib()
    settings = Settings(device="cpu", batch_size=batch_size)
    started = time.perf_counter()
    result = separate_file(path, separator, output=OutputOptions(out=scratch / "out"), settings=settings)
    seconds = time.perf_counter() - started
    assert result.status == "done", result
    return {"seconds": seconds, "writing_seconds": writing, "setup_kib": before, "peak_kib": peak_kib(),
            "model_rate": result.model_rate, "strategy": result.strategy}


# --------------------------------------------------------------------------------------------
# The parent: one child per case, watched


def run_case(model: str, rate: int, minutes: float, args) -> dict:
    """Run one case in a fresh process with its own scratch folder (removed afterwards, also when
    the child is stopped); its figures, or {"error": ...}."""
    scratch = tempfile.mkdtemp(prefix="sfsep-bench-memory-", dir=args.tmp)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", f"{model},{rate},{minutes:g}",
               "--threads", str(args.threads), "--scratch", scratch]
    if args.batch_size is not None:
        command += ["--batch-size", str(args.batch_size)]
    child = None
    try:
        environment = dict(os.environ)
        if args.mmap_threshold is not None:
            environment["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            child = subprocess.Popen(command, stdout=out, stderr=err, env=environment)
            largest, stopped = 0, None
            deadline = time.monotonic() + args.timeout * 60 if args.timeout else None
            while True:
                pid, status, usage = os.wait4(child.pid, os.WNOHANG)
                if pid:
                    child.returncode = os.waitstatus_to_exitcode(status)
                    break
                resident = resident_kib(child.pid) or 0
                largest = max(largest, resident)
                if stopped is None and megabytes(resident) > args.max_mb:
                    stopped = f"stopped at > {args.max_mb:.0f} MB resident"
                    child.kill()
                elif stopped is None and deadline is not None and time.monotonic() > deadline:
                    stopped = f"stopped after {args.timeout:g} min"
                    child.kill()
                time.sleep(0.2)
            out.seek(0)
            err.seek(0)
            output, errors = out.read(), err.read()
    finally:
        if child is not None and child.returncode is None:  # interrupted: stop our child
            child.kill()
            child.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    if stopped:
        return {"error": stopped, "peak_kib": max(largest, usage.ru_maxrss), "stopped": True}
    if child.returncode != 0:
        tail = errors.strip().splitlines()[-1] if errors.strip() else f"exit code {child.returncode}"
        return {"error": f"failed: {tail}"}
    figures = json.loads(output.strip().splitlines()[-1])
    figures["child_maxrss_kib"] = usage.ru_maxrss  # the kernel's figure for the same peak
    return figures


def row(model: str, rate: int, minutes: float, figures: dict) -> str:
    head = f"{model:<9} {rate:>6} {minutes:>5g}"
    if "error" in figures:
        peak = megabytes(figures.get("peak_kib", 0))
        shown = f"> {peak:.0f}" if figures.get("stopped") else "-"
        return f"{head} {'-':>9} {'-':>7} {shown:>9} {'-':>9}   {figures['error']}"
    speed = minutes * 60 / figures["seconds"]
    return (f"{head} {figures['seconds']:>9.1f} {speed:>6.2f}x {megabytes(figures['peak_kib']):>9.0f} "
            f"{megabytes(figures['setup_kib']):>9.0f}")


def parse_list(text: str, kind):
    return [kind(item) for item in text.split(",") if item.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", default="1,10,60", help="input lengths in minutes (default 1,10,60)")
    parser.add_argument("--models", default="classic,htdemucs", help="classic and/or htdemucs")
    parser.add_argument("--rates", default="8000,44100", help="input rates in Hz (default 8000,44100)")
    parser.add_argument("--two-hours", action="store_true",
                        help="also 120 minutes of 8 kHz stereo through classic")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per case (default 2)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="chunks per model call (default: the model's run-time contract; HT-Demucs: 1)")
    parser.add_argument("--max-mb", type=float, default=8000.0,
                        help="stop a case whose resident memory passes this many MB (default 8000)")
    parser.add_argument("--timeout", type=float, default=None, help="stop a case after this many minutes")
    parser.add_argument("--mmap-threshold", type=int, default=None, metavar="BYTES",
                        help="run the children with glibc's MALLOC_MMAP_THRESHOLD_=BYTES (e.g. 131072): "
                             "freed tensors go back to the system, so the peak is what the flow holds "
                             "(default: the allocator's own settings, as a user runs sfsep)")
    parser.add_argument("--tmp", default=None, help="where the children's scratch folders go (default: the "
                        "system's temporary folder; 60 min at 44.1 kHz needs ~3.2 GB there)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        model, rate, minutes = args.child.split(",")
        print(json.dumps(measure(model, int(rate), float(minutes), args.threads, args.batch_size,
                                 Path(args.scratch))))
        return

    # A SIGTERM to the bench unwinds like Ctrl-C: the running child is stopped, its scratch removed.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    models, rates, lengths = parse_list(args.models, str), parse_list(args.rates, int), parse_list(args.minutes, float)
    cases = [(model, rate, minutes) for model in models for rate in rates for minutes in sorted(lengths)]
    if args.two_hours:
        cases.append(("classic", 8000, 120.0))

    print(f"load average (1, 5, 15 min): {' '.join(f'{value:.2f}' for value in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs; {args.threads} torch threads per case; allocator: "
          + (f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}" if args.mmap_threshold is not None
             else "glibc defaults"))
    print(f"{'model':<9} {'rate':>6} {'min':>5} {'seconds':>9} {'speed':>7} {'peak MB':>9} {'setup MB':>9}")
    results: dict[tuple[str, int, float], dict] = {}
    for model, rate, minutes in cases:
        figures = run_case(model, rate, minutes, args)
        results[model, rate, minutes] = figures
        print(row(model, rate, minutes, figures), flush=True)
    print("speed: audio seconds per second of separation (realtime factor); peak MB: the child's "
          "VmHWM (10^6 bytes);\nsetup MB: its peak before separating (torch, the model, writing "
          "the input file)")

    print(f"\nflatness: peak(longest) - peak(shortest), target < {TARGET_MB:.0f} MB")
    for model in models:
        for rate in rates:
            measured = [(minutes, results[model, rate, minutes]) for minutes in sorted(lengths)]
            if len(measured) < 2:
                continue
            (short, first), (long, last) = measured[0], measured[-1]
            label = f"{model:<9} {rate:>6} Hz  {long:g} min - {short:g} min:"
            if "error" in first:
                print(f"{label} no figure ({short:g} min: {first['error']})")
            elif "error" in last:
                verdict = "FAIL" if last.get("stopped") and "MB" in last["error"] else "no figure"
                print(f"{label} {verdict} ({long:g} min: {last['error']})")
            else:
                growth = megabytes(last["peak_kib"] - first["peak_kib"])
                print(f"{label} {growth:+8.1f} MB  {'PASS' if growth < TARGET_MB else 'FAIL'}")
    if args.two_hours:
        figures = results["classic", 8000, 120.0]
        outcome = (f"peak {megabytes(figures['peak_kib']):.0f} MB in {figures['seconds']:.0f} s"
                   if "error" not in figures else figures["error"])
        print(f"two hours of 8 kHz stereo through classic: {outcome}")
    print(f"load average at the end: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
