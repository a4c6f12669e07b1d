"""Speed and memory of sfsep.resample on the CPU.

Part 1 (speed): 180 s of stereo float32 at 8000 -> 44100 Hz and 44100 -> 8000 Hz, methods
"conventional", "noisy" and "noise" timed in the same run. Runs are interleaved (one of each
method in turn) after one warm-up each, so a change in machine load hits all methods alike; the
median of `--repeats` runs is reported, as seconds, input and output samples per second,
times realtime, and the ratios to "conventional" (target for noisy: <= 1.1). The load average
is printed before and after, since this machine is shared; the ratio of the fastest runs and
the time of drawing the noisy kernel alone (its only extra work) are printed too, as they
depend less on the load than the medians.
For context, torchaudio 2.9.1 functional.resample (Kaiser, width 24) took 0.252 s and 0.108 s
for the same two cases on this machine at load 1.3 (research notes, section 3).

Part 2 (memory, `--memory`): for rate pairs whose reduced ratio is large, 60 s of stereo is
resampled in a fresh subprocess each (after a 1-s warm-up call that loads the convolution
libraries), which reports the peak resident memory the call added on top of its input (Linux:
VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS before), next
to the size of the output, and the time of one call; in float32 (oneDNN convolution) and
float64 (PyTorch's fallback convolution, which unfolds its input, so this is where the
blocking by `UNFOLD_BUDGET` matters).

    python bench/bench_resample.py [--threads 2] [--seconds 180] [--repeats 5] [--memory]
        [--memory-seconds 60] [--memory-dtypes float32,float64] [--skip-speed]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from sfsep.resample import kernel_geometry, noisy_kernel, resample

SPEED_PAIRS = [(8000, 44100), (44100, 8000)]
SPEED_METHODS = ["conventional", "noisy", "noise"]
TORCHAUDIO_SECONDS = {(8000, 44100): 0.252, (44100, 8000): 0.108}
MEMORY_PAIRS = [(44100, 48000), (48000, 44100), (22050, 16000), (16000, 22050), (8000, 192000),
                (192000, 8000), (44100, 8000), (8000, 44100), (48000, 8000)]


def test_signal(rate: int, seconds: float) -> torch.Tensor:
    """Stereo float32: two tones and some noise, deterministic."""
    generator = torch.Generator().manual_seed(0)
    time_axis = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    left = 0.4 * torch.sin(2 * torch.pi * 440 * time_axis)
    right = 0.4 * torch.sin(2 * torch.pi * 1000 * time_axis + 0.3)
    tones = torch.stack([left, right]).float()
    return tones + 0.05 * torch.randn(tones.shape, generator=generator)


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def speed(seconds: float, repeats: int) -> None:
    for input_rate, output_rate in SPEED_PAIRS:
        signal = test_signal(input_rate, seconds)
        geometry = kernel_geometry(input_rate, output_rate)
        print(f"\n{input_rate} -> {output_rate} Hz, {seconds:g} s stereo "
              f"({signal.shape[-1]} samples per channel), kernel ({geometry.phases}, "
              f"{geometry.taps}), stride {geometry.input_stride}; {load()}")
        generator = torch.Generator().manual_seed(0)
        times: dict[str, list[float]] = {method: [] for method in SPEED_METHODS}
        for method in SPEED_METHODS:  # warm-up (kernel cache, allocator)
            output = resample(signal, input_rate, output_rate, method, generator=generator)
        output_samples = output.shape[-1]
        for _ in range(repeats):
            for method in SPEED_METHODS:
                start = time.perf_counter()
                resample(signal, input_rate, output_rate, method, generator=generator)
                times[method].append(time.perf_counter() - start)
        conventional = statistics.median(times["conventional"])
        for method in SPEED_METHODS:
            median = statistics.median(times[method])
            print(f"  {method:12s} {median:7.3f} s  (min {min(times[method]):.3f}, max "
                  f"{max(times[method]):.3f})  in {2 * signal.shape[-1] / median / 1e6:6.1f} M "
                  f"samples/s  out {2 * output_samples / median / 1e6:6.1f} M samples/s  "
                  f"{seconds / median:6.0f} x realtime  ratio to conventional "
                  f"{median / conventional:.3f}")
        fastest = min(times["conventional"])
        print(f"  ratio of the fastest runs: noisy/conventional "
              f"{min(times['noisy']) / fastest:.3f}, noise/conventional "
              f"{min(times['noise']) / fastest:.3f}")
        draws = []
        for _ in range(50):
            start = time.perf_counter()
            noisy_kernel(input_rate, output_rate, generator=generator)
            draws.append(time.perf_counter() - start)
        draw = statistics.median(draws)
        print(f"  the noisy kernel's own extra work (draw {geometry.phases}x{geometry.taps} "
              f"normals and add): median {draw * 1e3:.2f} ms (min {min(draws) * 1e3:.2f} ms) = "
              f"{100 * draw / conventional:.2f} % of the conventional median")
        print(f"  torchaudio anchor {TORCHAUDIO_SECONDS[(input_rate, output_rate)]:.3f} s "
              f"(quiet machine): conventional / torchaudio = "
              f"{conventional / TORCHAUDIO_SECONDS[(input_rate, output_rate)]:.2f}; {load()}")


CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
from sfsep.resample import resample

def status_kb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])

input_rate, output_rate, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
dtype = getattr(torch, sys.argv[6])
resample(torch.randn(2, input_rate, dtype=dtype), input_rate, output_rate)  # load libraries
signal = torch.randn(2, int(seconds * input_rate), dtype=dtype).mul_(0.3)  # no temporaries
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # reset the peak resident set size (VmHWM) to the current one
before = status_kb("VmRSS")
start = time.perf_counter()
output = resample(signal, input_rate, output_rate)
first = time.perf_counter() - start
peak = status_kb("VmHWM")
start = time.perf_counter()
resample(signal, input_rate, output_rate)
second = time.perf_counter() - start
size = signal.element_size() / 2**20
print(json.dumps({"peak_added_mb": (peak - before) / 1024, "output_mb": output.numel() * size,
                  "input_mb": signal.numel() * size, "first_s": first, "second_s": second}))
"""


def memory(seconds: float, threads: int, dtype: str) -> None:
    print(f"\nmemory: {seconds:g} s stereo {dtype} per pair, one subprocess each; {load()}")
    here = os.path.dirname(os.path.abspath(__file__))
    for input_rate, output_rate in MEMORY_PAIRS:
        geometry = kernel_geometry(input_rate, output_rate)
        completed = subprocess.run(
            [sys.executable, "-c", CHILD, str(input_rate), str(output_rate), str(seconds),
             str(threads), here, dtype], capture_output=True, text=True, check=True)
        figures = json.loads(completed.stdout.strip().splitlines()[-1])
        print(f"  {input_rate:6d} -> {output_rate:6d}: kernel ({geometry.phases:3d}, "
              f"{geometry.taps:4d}) stride {geometry.input_stride:3d}  input "
              f"{figures['input_mb']:6.1f} MB  output {figures['output_mb']:6.1f} MB  peak added "
              f"{figures['peak_added_mb']:6.1f} MB  time {figures['second_s']:.3f} s "
              f"(first call {figures['first_s']:.3f} s)")
    print(f"  {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="also measure peak memory")
    parser.add_argument("--memory-seconds", type=float, default=60.0)
    parser.add_argument("--memory-dtypes", default="float32,float64",
                        help="float64 runs PyTorch's fallback convolution, which unfolds its input")
    parser.add_argument("--skip-speed", action="store_true")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not arguments.skip_speed:
        speed(arguments.seconds, arguments.repeats)
    if arguments.memory:
        for dtype in arguments.memory_dtypes.split(","):
            memory(arguments.memory_seconds, arguments.threads, dtype)


if __name__ == "__main__":
    main()
