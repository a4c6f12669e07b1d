"""Speed and memory of HT-Demucs and Conv-TasNet (demucs v2) on the CPU, published configs.

Each case builds the published config with random weights (torch.manual_seed(0)), eval mode,
and runs one forward pass, batch 1, on stereo 0.3 * N(0, 1) noise under torch.inference_mode,
with 2 threads by default. Printed per case: wall seconds per second of audio, the CPU time of
the forward (all threads), the peak resident memory of the process and what the forward pass added to the built model, and the
ratio to the figure measured with the reference code on this machine (same kind of run):

- htdemucs, demucs kwargs, one 7.8 s segment: 2.12 s/s (research/demucs-tasnet-bsrnn.md A.5)
- htdemucs, MSST config, one 11 s chunk: 1.34 s/s (research/msst.md section 5)
- conv_tasnet, 2 s forward: about 7.0-7.3 s/s (demucs-tasnet-bsrnn.md B.1; 23.2 s/s at 10 s,
  where memory traffic dominates)

The reference figures were taken on a busy 2-core machine; the CPU is shared here as well, so
ratios near 1 mean "the same speed", not a precise measurement.
Each case runs in its own subprocess so that its peak memory is its own.

    python bench/bench_demucs.py                        # the three cases (a minute or two)
    python bench/bench_demucs.py --cases conv_tasnet --seconds 1
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# case -> (family, manifest, default seconds of audio (None: the model's segment),
#          reference seconds per second of audio, where the reference comes from)
CASES = {
    "htdemucs": ("htdemucs", "htdemucs_demucsrepo", None, 2.12,
                 "demucs code, one 7.8 s segment (demucs-tasnet-bsrnn.md A.5)"),
    "htdemucs_msst": ("htdemucs", "htdemucs", None, 1.34,
                      "MSST code, one 11 s chunk (msst.md section 5)"),
    "conv_tasnet": ("conv_tasnet", "conv_tasnet", 2.0, 7.15,
                    "demucs v2 code, 2 s forward: 7.0-7.3 s/s (demucs-tasnet-bsrnn.md B.1)"),
}


def shared_dir() -> Path:
    override = os.environ.get("SFSEP_SHARED")
    return Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared"


def manifest_config(name: str) -> dict:
    manifest = json.loads((shared_dir() / "parity" / f"{name}.manifest.json").read_text())
    config = manifest["config"]
    return ast.literal_eval(config) if isinstance(config, str) else config


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def measure(case: str, seconds: float | None, threads: int) -> dict:
    """Build and time one case (called in a child process)."""
    import torch

    from sfsep.models import build_model

    torch.set_num_threads(threads)
    family, manifest, default_seconds, _, _ = CASES[case]
    torch.manual_seed(0)
    model = build_model(family, manifest_config(manifest))
    rate = model.samplerate
    seconds = seconds if seconds is not None else default_seconds
    if seconds is not None:
        samples = int(seconds * rate)
    elif family == "htdemucs":
        samples = model.training_length
    else:
        samples = model.segment_length
    mix = 0.3 * torch.randn(1, model.audio_channels, samples,
                            generator=torch.Generator().manual_seed(1))
    built = peak_rss_mib()
    with torch.inference_mode():
        start, start_cpu = time.perf_counter(), time.process_time()
        out = model(mix)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    assert out.shape == (1, len(model.sources), model.audio_channels, samples)
    return {
        "case": case,
        "params": sum(p.numel() for p in model.parameters()),
        "audio_seconds": samples / rate,
        "elapsed": elapsed,
        "cpu": cpu,
        "peak_mib": peak_rss_mib(),
        "forward_mib": peak_rss_mib() - built,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds of audio per forward (default: per case, see the docstring)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.child, args.seconds, args.threads)))
        return

    print(f"{'case':<14} {'params':>11} {'audio s':>8} {'time s':>8} {'cpu s':>7} {'s/s':>7} "
          f"{'ref s/s':>8} {'ratio':>6} {'peak MiB':>9} {'fwd MiB':>8}")
    for case in args.cases:
        command = [sys.executable, __file__, "--child", case, "--threads", str(args.threads)]
        if args.seconds is not None:
            command += ["--seconds", str(args.seconds)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"{case:<14} failed:\n{result.stderr}")
            continue
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        per_second = figures["elapsed"] / figures["audio_seconds"]
        reference = CASES[case][3]
        print(f"{case:<14} {figures['params']:>11,} {figures['audio_seconds']:>8.2f} "
              f"{figures['elapsed']:>8.2f} {figures['cpu']:>7.1f} {per_second:>7.2f} {reference:>8.2f} "
              f"{per_second / reference:>6.2f} {figures['peak_mib']:>9.0f} "
              f"{figures['forward_mib']:>8.0f}")
    print("\ns/s = wall seconds per second of audio; cpu s = CPU time of the process over all "
          "threads\n(on an idle machine wall time is about cpu s / threads; a much larger wall time "
          "means the CPU was shared).")
    print("reference figures:")
    for case in args.cases:
        print(f"  {case}: {CASES[case][3]} s/s, {CASES[case][4]}")


if __name__ == "__main__":
    main()
