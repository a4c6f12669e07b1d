"""Cost of `sfsep eval` per result on a full-length track, and of resuming.

A MUSDB18-HQ-shaped folder with one synthetic stereo track of `--seconds` (default 60) is
written to a temporary folder. The evaluation loop (sfsep.evaluate.runner.evaluate) then runs
the classical separator pinned to 44.1 kHz (a stand-in for a neural model with a trained
rate, so that every resampler really runs) at `--rates` with conventional and noisy
resampling and all three metrics. For every result the bench prints the time of the
separation (resampling included) and of the scoring (BSSEval v4 + SDR + SI-SDR), then the
time of a rerun that resumes from the stored results (nothing to compute), and of writing the
report (tables, summary, plot). museval took 64 s to score one 60-s stereo 4-source track on
this machine (the issue's figure), i.e. per result of this loop.

    python bench/bench_eval.py [--seconds 60] [--rates 8000,22050,44100] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from sfsep.evaluate.musdb import list_tracks
from sfsep.evaluate.report import summarize, write_all
from sfsep.evaluate.runner import evaluate, parse_rates
from sfsep.models import build_model
from sfsep.pipeline import Separator
from sfsep.registry import ModelSpec

RATE = 44100


def write_track(root: Path, seconds: float) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    vocals = 0.2 * np.sin(2 * np.pi * (330 + 20 * np.sin(2 * np.pi * 5 * t)) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * t))
    drums = 0.3 * rng.standard_normal(t.size) * np.exp(-(t % 0.5) * 30)
    bass = 0.3 * np.sin(2 * np.pi * 55 * t)
    other = 0.1 * sum(np.sin(2 * np.pi * f * t) for f in (440, 554, 659))
    stems = {"vocals": vocals, "drums": drums, "bass": bass, "other": other}
    stems["mixture"] = sum(stems.values())
    folder = root / "test" / "Bench - Track"
    folder.mkdir(parents=True)
    for name, mono in stems.items():
        stereo = np.stack([mono, 0.8 * mono + 0.01 * rng.standard_normal(mono.size)], axis=1)
        sf.write(folder / f"{name}.wav", stereo.astype(np.float32), RATE, subtype="FLOAT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rates", default="8000,22050,44100")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.2f}")

    spec = ModelSpec(name="pinned", family="classic", stems=("vocals", "drums", "bass", "other"),
                     trained_rate=RATE, chunk_size=RATE, overlap=0.25, chunk_style="fade")
    separator = Separator(spec, device="cpu", modules=[build_model("classic", {"sample_rate": RATE})])
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        write_track(root / "musdb", args.seconds)
        tracks = list_tracks(root / "musdb", "test")
        folder = root / "eval"
        started = time.perf_counter()
        run = evaluate(separator, tracks, folder, rates=parse_rates(args.rates),
                       resamplers=("conventional", "noisy"), seed=0)
        total = time.perf_counter() - started
        print(f"{args.seconds:.0f}-s stereo track, 4 sources, metrics bsseval+sdr+si_sdr")
        print(f"{'result':<22}{'separate s':>12}{'score s':>10}{'SDR vocals':>12}")
        for result in run.results:
            record = result.record
            print(f"{result.cell.config_name:<22}{record['seconds']['separate']:>12.2f}"
                  f"{record['seconds']['score']:>10.2f}"
                  f"{record['scores']['bsseval']['vocals']['SDR']:>12.2f}")
        print(f"{run.computed} results in {total:.1f} s ({total / run.computed:.2f} s per result, loading "
              f"and bringing the track down included); museval alone: ~64 s per result")

        started = time.perf_counter()
        again = evaluate(separator, tracks, folder, rates=parse_rates(args.rates),
                         resamplers=("conventional", "noisy"), seed=0)
        print(f"resume: {again.skipped} reused, {again.computed} computed in {time.perf_counter() - started:.3f} s")
        started = time.perf_counter()
        written = write_all(summarize(again), folder)
        print(f"report ({', '.join(written)}): {time.perf_counter() - started:.2f} s")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
