"""Speed and memory of BSRNN (published vocals config, random weights) on the CPU.

Times (wall clock, and process CPU time as a check on contention) one forward of the network
on one chunk (chunk_samples = 134144 samples, 3.04 s at 44.1 kHz, batch 1), reports seconds
of compute per second of audio and the process's peak resident memory, and compares with the
figure measured with the reference implementation (research notes C.5: 83.7 s per chunk =
27.5 s per second of audio, contended 2-core CPU).

The reference separator runs one chunk every 23894 samples (0.54 s), so a whole track costs
about window / hop = 5.6 times the per-chunk figure per second of audio; that estimate is
printed too, and `--separate SECONDS` measures it on random audio of that length.

On a shared CPU, compare --threads 1: the RNNs run one small matrix product per time step, and
with two threads each of them waits at a barrier for a descheduled worker (2026-11-22, load
~12 on 2 cores: 175 s wall / 50 s CPU per chunk with 2 threads, 23 s / 4.8 s with 1).

    python bench/bench_bsrnn.py [--threads 2] [--repeats 1] [--separate 0]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from sfsep.models import bsrnn

# amanteur/BandSplitRNN-PyTorch src/saved_models/vocals/hparams.yaml (model, featurizer, audio_params).
PUBLISHED_CONFIG = {
    "sr": 44100,
    "n_fft": 2048,
    "bandsplits": [[1000, 100], [4000, 250], [8000, 500], [16000, 1000], [20000, 2000]],
    "t_timesteps": 263,
    "bottleneck_layer": "rnn",
    "fc_dim": 128,
    "rnn_dim": 256,
    "rnn_type": "LSTM",
    "bidirectional": True,
    "num_layers": 12,
    "mlp_dim": 512,
    "return_mask": False,
    "complex_as_channel": True,
    "is_mono": False,
    "_featurizer": {
        "direct_transform": {"n_fft": 2048, "win_length": 2048, "hop_length": 512},
        "inverse_transform": {"n_fft": 2048, "win_length": 2048, "hop_length": 512},
    },
    "_audio_params": {"target": "vocals", "sr": 44100, "win_size": 3, "hop_size": 0.5, "batch_size": 8, "window": None},
}

REFERENCE_SECONDS_PER_CHUNK = 83.7  # research notes C.5
REFERENCE_SECONDS_PER_SECOND = 27.5
REFERENCE_SEPARATOR_ESTIMATE = 200.0  # notes C.5, estimated, not measured


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed forwards (best is reported)")
    parser.add_argument("--separate", type=float, default=0.0, help="also time separate_waveform on this many seconds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = bsrnn.build(PUBLISHED_CONFIG).eval()
    rate = PUBLISHED_CONFIG["sr"]
    chunk = bsrnn.chunk_samples(PUBLISHED_CONFIG)
    chunk_seconds = chunk / rate
    mix = torch.randn(1, 2, chunk, generator=torch.Generator().manual_seed(1))
    parameters = sum(p.numel() for p in model.parameters())
    print(f"BSRNN vocals config: {parameters:,} parameters, chunk {chunk} samples ({chunk_seconds:.3f} s), "
          f"{args.threads} thread(s)")
    rss_before = peak_rss_mib()

    timings, cpu_timings = [], []
    with torch.inference_mode():
        for _ in range(args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            stems = model(mix)
            timings.append(time.perf_counter() - start)
            cpu_timings.append(time.process_time() - cpu_start)
    assert stems.shape == (1, 1, 2, chunk)
    best = min(timings)
    per_second = best / chunk_seconds
    layout = bsrnn.separator_layout(PUBLISHED_CONFIG, 10 * rate)
    separator_per_second = best * rate / layout.hop
    print(f"forward on one chunk: {best:.1f} s wall (runs: {', '.join(f'{t:.1f}' for t in timings)}); "
          f"process CPU time {min(cpu_timings):.1f} s (wall > CPU / threads means the CPU is shared)")
    print(f"  = {per_second:.2f} s per second of audio; reference {REFERENCE_SECONDS_PER_SECOND} s/s "
          f"({REFERENCE_SECONDS_PER_CHUNK} s per chunk); ratio sfsep/reference = "
          f"{per_second / REFERENCE_SECONDS_PER_SECOND:.2f}")
    print(f"  CPU time: {min(cpu_timings) / chunk_seconds:.2f} CPU-s per second of audio")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (model built: {rss_before:.0f} MiB)")
    print(f"reference separator (one chunk per {layout.hop} samples): ~{separator_per_second:.0f} s per second "
          f"of audio estimated from this run; reference estimate ~{REFERENCE_SEPARATOR_ESTIMATE:.0f} s/s; ratio "
          f"{separator_per_second / REFERENCE_SEPARATOR_ESTIMATE:.2f}")

    if args.separate > 0:
        length = int(args.separate * rate)
        track = torch.randn(2, length, generator=torch.Generator().manual_seed(2))
        start = time.perf_counter()
        bsrnn.separate_waveform(model, track)
        elapsed = time.perf_counter() - start
        chunks = bsrnn.separator_layout(PUBLISHED_CONFIG, length).chunks
        print(f"separate_waveform on {args.separate} s ({chunks} chunks): {elapsed:.1f} s = "
              f"{elapsed / args.separate:.1f} s per second of audio; peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
