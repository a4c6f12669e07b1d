"""Speed and memory of BS-RoFormer / Mel-Band RoFormer on the CPU, beside MSST's figures.

For each published config (the four MSST manifests in shared/parity) or a tiny fixture config:
build the model with random weights, run ONE stereo chunk of 0.3 * N(0, 1) noise under
torch.inference_mode with `--threads` threads (2 by default, as in shared/research/msst.md
section 5), and print seconds of compute per second of audio and the peak resident memory
(ru_maxrss before and after the forward pass: weights, then weights + activations).

MSST's reference timings (same machine type, full published chunk, single cold run):
BS-RoFormer 4-stem 35.6 s/s, KJ Mel-Band RoFormer 15.5 s/s. When `--seconds` shortens the
chunk the comparison is only indicative: time-axis attention grows with the square of the
chunk length, so a short chunk costs less per second than a full one.

    python bench/bench_roformer.py --config tiny_bs --config tiny_mel
    python bench/bench_roformer.py --config mel_band_roformer --seconds 2
    python bench/bench_roformer.py --config all          # full chunks: many minutes each
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

import torch

from sfsep.models.roformer import build_bs_roformer, build_mel_band_roformer

BUILDERS = {"bs_roformer": build_bs_roformer, "mel_band_roformer": build_mel_band_roformer}
PUBLISHED = [
    "bs_roformer",
    "bs_roformer_viperx_ep317",
    "mel_band_roformer",
    "mel_band_roformer_viperx_ep3005",
]
TINY = {"tiny_bs": "bs_roformer_tiny.pt", "tiny_mel": "mel_band_roformer_tiny.pt"}
# shared/research/msst.md section 5: seconds of compute per second of audio, 2 threads.
REFERENCE_SECONDS_PER_SECOND = {"bs_roformer": 35.6, "mel_band_roformer": 15.5}
# Same section: the BS-RoFormer reference run used user 174 s + sys 82 s of CPU for 11 s of audio.
# Compare CPU time when the machine is shared: wall time then mostly measures the other jobs.
REFERENCE_CPU_SECONDS_PER_SECOND = {"bs_roformer": (174 + 82) / 11.0}


def shared_dir() -> Path:
    return Path(os.environ.get("SFSEP_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")


def load_config(name: str) -> tuple[str, dict]:
    """(model_type, whole MSST config) of a manifest or tiny fixture."""
    parity = shared_dir() / "parity"
    if name in TINY:
        fixture = torch.load(parity / TINY[name], weights_only=True)
        return fixture["model_type"], fixture["config"]
    manifest = json.loads((parity / f"{name}.manifest.json").read_text())
    config = manifest["config"]
    if isinstance(config, str):
        config = ast.literal_eval(config)
    return manifest["model_type"], config


def chunk_size_of(config: dict) -> int:
    return int((config.get("inference") or {}).get("chunk_size") or config["audio"]["chunk_size"])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench(name: str, seconds: float | None, runs: int) -> None:
    model_type, config = load_config(name)
    sample_rate = int(config["audio"].get("sample_rate", 44100))
    chunk = chunk_size_of(config)
    if seconds is not None:
        hop = int(config["model"]["stft_hop_length"])
        chunk = max(hop, int(round(seconds * sample_rate / hop)) * hop)
    torch.manual_seed(0)
    model = BUILDERS[model_type](config).eval()
    params = sum(parameter.numel() for parameter in model.parameters())
    mix = 0.3 * torch.randn(1, model.audio_channels, chunk, generator=torch.Generator().manual_seed(1))
    rss_weights = peak_rss_mib()
    times, cpu_times = [], []
    with torch.inference_mode():
        for _ in range(runs):
            start, cpu_start = time.perf_counter(), time.process_time()
            out = model(mix)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    rss_peak = peak_rss_mib()
    audio_seconds = chunk / sample_rate
    best = min(times)
    per_second = best / audio_seconds
    cpu_per_second = min(cpu_times) / audio_seconds
    reference = REFERENCE_SECONDS_PER_SECOND.get(name)
    comparison = (
        f"reference {reference:.1f} s/s, ours/reference {per_second / reference:.2f}"
        if reference is not None
        else "reference n/a"
    )
    cpu_reference = REFERENCE_CPU_SECONDS_PER_SECOND.get(name)
    cpu_comparison = (
        f"  [reference {cpu_reference:.1f} CPU-s/s, ours/reference {cpu_per_second / cpu_reference:.2f}]"
        if cpu_reference is not None
        else ""
    )
    full = chunk == chunk_size_of(config)
    print(
        f"{name:34s} {params / 1e6:7.1f} M params  chunk {chunk} ({audio_seconds:.2f} s"
        f"{'' if full else ', shortened'})  out {tuple(out.shape)}\n"
        f"    forward {best:.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)})  "
        f"{per_second:.2f} s/s  [{comparison}]\n"
        f"    CPU time {min(cpu_times):.2f} s = {cpu_per_second:.2f} CPU-s/s{cpu_comparison}\n"
        f"    (CPU = user + sys of all threads; wall >> CPU / threads means the cores were shared)\n"
        f"    peak RSS {rss_peak:.0f} MiB (weights and setup {rss_weights:.0f} MiB, "
        f"forward adds {rss_peak - rss_weights:.0f} MiB)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        action="append",
        choices=[*TINY, *PUBLISHED, "all"],
        help="config to run (repeatable; 'all' = the four published ones); default tiny_bs, tiny_mel",
    )
    parser.add_argument("--seconds", type=float, default=None, help="chunk length in seconds (default: the config's chunk)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="forward passes; the fastest is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.config or ["tiny_bs", "tiny_mel"]
    if "all" in names:
        names = PUBLISHED
    if len(names) > 1:
        # Peak RSS is per process: give every config its own process.
        for name in names:
            command = [sys.executable, __file__, "--config", name, "--threads", str(args.threads), "--runs", str(args.runs)]
            if args.seconds is not None:
                command += ["--seconds", str(args.seconds)]
            subprocess.run(command, check=True)
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s)", flush=True)
    bench(names[0], args.seconds, args.runs)


if __name__ == "__main__":
    main()
