"""Speed and memory of SCNet and MDX23C on the CPU, for each published config.

For each config (the four manifests in shared/parity) the model is built with random
weights and run once, batch 1, on one stereo chunk of 0.3 * N(0, 1) noise (the published
chunk_size unless --seconds is given), in eval mode under torch.inference_mode. Printed:
seconds of compute per second of audio, the process's peak resident memory and how much
of it the forward pass added on top of the built model, and the ratio to the reference
figures measured with MSST's own code on this machine (research/msst.md section 5: SCNet
small 1.91 s/s, MDX23C 4-stem 9.42 s/s, full chunks, 2 threads, batch 1).

Each config runs in its own subprocess so that the peak-memory figure belongs to it alone.

    python bench/bench_scnet_mdx23c.py                  # all four, full chunks (minutes)
    python bench/bench_scnet_mdx23c.py --seconds 2      # quicker, shorter excerpts
    python bench/bench_scnet_mdx23c.py --configs scnet mdx23c
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

# Seconds of compute per second of audio with MSST's code (research/msst.md section 5).
REFERENCE_SECONDS_PER_SECOND = {"scnet": 1.91, "mdx23c": 9.42}
CONFIGS = {
    "scnet": "scnet",
    "scnet_large": "scnet",
    "mdx23c": "mdx23c",
    "mdx23c_vocals": "mdx23c",
}


def shared_dir() -> Path:
    return Path(os.environ.get("SFSEP_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")


def load_config(name: str) -> dict:
    manifest = json.loads((shared_dir() / "parity" / f"{name}.manifest.json").read_text())
    config = manifest["config"]
    return ast.literal_eval(config) if isinstance(config, str) else config


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_child(name: str, seconds: float | None, threads: int) -> dict:
    """Build and time one config; returns the figures as a dict (runs in a subprocess)."""
    import torch

    from sfsep.models import build_model

    torch.set_num_threads(threads)
    config = load_config(name)
    torch.manual_seed(0)
    model = build_model(CONFIGS[name], config)
    rate = int(config["audio"]["sample_rate"])
    samples = int(seconds * rate) if seconds else int(config["audio"]["chunk_size"])
    if hasattr(model, "valid_length"):
        samples = model.valid_length(samples)
    mix = 0.3 * torch.randn(1, int(config["audio"]["num_channels"]), samples,
                            generator=torch.Generator().manual_seed(1))
    params = sum(p.numel() for p in model.parameters())
    rss_built = peak_rss_mib()
    with torch.inference_mode():
        start, cpu_start = time.perf_counter(), time.process_time()
        out = model(mix)
        elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "name": name,
        "params": params,
        "samples": samples,
        "audio_seconds": samples / rate,
        "forward_seconds": elapsed,
        "seconds_per_second": elapsed / (samples / rate),
        "cpu_seconds_per_second": cpu_elapsed / (samples / rate),
        "peak_rss_mib": peak_rss_mib(),
        "forward_added_mib": peak_rss_mib() - rss_built,
        "output_shape": list(out.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seconds", type=float, default=None, help="audio length (default: the config's chunk)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_child(args.child, args.seconds, args.threads)))
        return

    print(f"CPU, {args.threads} threads, batch 1, random weights, one forward per config")
    header = f"{'config':<15}{'params':>12}{'audio s':>9}{'fwd s':>9}{'s/s':>8}{'ref s/s':>9}{'ratio':>8}{'cpu s/s':>9}{'peak MiB':>10}{'fwd +MiB':>10}"
    print(header)
    for name in args.configs:
        command = [sys.executable, __file__, "--child", name, "--threads", str(args.threads)]
        if args.seconds:
            command += ["--seconds", str(args.seconds)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"{name:<15} failed:\n{result.stderr}")
            continue
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        reference = REFERENCE_SECONDS_PER_SECOND.get(name)
        ratio = f"{figures['seconds_per_second'] / reference:8.2f}" if reference else f"{'-':>8}"
        reference_text = f"{reference:9.2f}" if reference else f"{'-':>9}"
        print(
            f"{name:<15}{figures['params']:>12,}{figures['audio_seconds']:>9.2f}{figures['forward_seconds']:>9.2f}"
            f"{figures['seconds_per_second']:>8.2f}{reference_text}{ratio}{figures['cpu_seconds_per_second']:>9.2f}"
            f"{figures['peak_rss_mib']:>10.0f}{figures['forward_added_mib']:>10.0f}"
        )
    print("s/s = wall seconds per second of audio; ratio = ours / reference s/s (below 1 is faster). The")
    print("reference was timed (wall) on full chunks with the machine otherwise idle; on a shared CPU the wall")
    print("figure grows with the load, so also compare 'cpu s/s' (process CPU time, summed over threads).")


if __name__ == "__main__":
    main()
