"""Train the demo model from scratch on generated music, and print its validation tables.

    python -m sfsep.demo.train --seed 0 --steps 900 --minutes 45 --out demo-run/

The model is the registry's `demo` entry (models.toml: its family and config), built with random
weights and trained at 44.1 kHz on clips of `sfsep.demo.generate` (train split), then exported as
float16 safetensors, `<out>/demo.safetensors`, the file the package ships as
`sfsep/demo/demo.safetensors`.

Data: a pool of `--train-clips` generated clips held in memory; every item of a batch is a random
`chunk_size` segment (the model's chunk, as models.toml states it): half of the items keep a clip's
four stems together, the other half take each stem from a random clip and offset (remixing), and
every stem gets a random gain (+-3.5 dB) and a random left/right swap. The mixture is the sum of
the four; the model is trained on its own stems among them (the `demo` BSRNN: vocals; its `other`
is the mixture minus the vocals).

Objective (as MSST trains its models): the L1 distance between estimated and reference stems,
plus the L1 distance of their complex STFTs (window 1024, hop 256). AdamW, a linear warm-up
over the first 5 % of `--steps`, then a cosine decay to zero at `--steps`; gradients clipped at
norm 5. `--minutes` stops a run early (a shared machine may be slower than planned): the weights
are then those of the last step, and the output says so.

A checkpoint (model, optimizer, step, random state) is written to `<out>/checkpoint.pt` every
`--checkpoint-minutes` and at the end; `--resume` continues from it (same settings).

Validation tables (`validation_tables`, also `--tables-only --weights FILE`): the first
`--valid-clips` clips of the valid split are written as a MUSDB18-HQ-like folder and evaluated
by `sfsep.evaluate.runner.evaluate`, the function behind `sfsep eval`: each mixture is brought
down to 8 and 16 kHz (conventional resampler), separated through the normal pipeline with each
upsampling resampler (conventional, noisy, noise), and scored against the references brought
down the same way (`--metrics`: by default the whole-signal SDR of the MDX challenges, `sfsep eval
--metrics sdr`; BSSEval v4 takes seconds per 1-s frame on a CPU); at 44.1 kHz nothing is
resampled ("none"). Rows are the median over clips. The built-in
`classic` separator is scored on the same clips for comparison. Each table is also written as
`<out>/tables.md` and the numbers as `<out>/tables.json`.

`--record` also writes `<out>/validation.json`: the SDRs of a few short valid clips at 44.1 kHz
and at 8 kHz through the noisy kernel (seeded), which tests/test_demo.py checks the packaged
weights reproduce.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..audio import atomic_path, write_text_atomic
from ..evaluate.runner import parse_metrics
from ..registry import get_spec
from .generate import RATE, STEMS, generate_clip, write_musdb_folder

MODEL_NAME = "demo"
WEIGHTS_NAME = "demo.safetensors"
TABLE_RATES = (8000, 16000, 44100)
TABLE_RESAMPLERS = ("conventional", "noisy", "noise")
RECORD_CLIPS = 3
"""Valid clips whose SDRs `--record` stores for the regression test (first ones of the split)."""
RECORD_SECONDS = 4.0
RECORD_CELLS = (("none", 44100), ("noisy", 8000))
"""(resampler, rate) rows the regression test recomputes."""
RECORD_METRICS = ("sdr",)
"""The whole-signal SDR (`sfsep eval --metrics sdr`): BSSEval v4 costs seconds per 1-s frame on a
CPU, too slow for a test."""


@dataclass(frozen=True)
class TrainOptions:
    seed: int = 0
    steps: int = 900
    minutes: float | None = None
    batch_size: int = 4
    learning_rate: float = 3e-3
    train_clips: int = 160
    clip_seconds: float = 4.0
    checkpoint_minutes: float = 3.0
    log_every: int = 20


# --------------------------------------------------------------------------------------------
# Data


class ClipPool:
    """Generated training clips in memory, (clips, stems, 2, samples) float32, and random batches."""

    def __init__(self, seed: int, count: int, seconds: float, log=print):
        started = time.perf_counter()
        clips = []
        for index in range(count):
            clips.append(torch.from_numpy(generate_clip(seed, "train", index, seconds)))
            if (index + 1) % 40 == 0:
                log(f"  generated {index + 1}/{count} training clips ({time.perf_counter() - started:.0f} s)")
        self.clips = torch.stack(clips)
        self.seconds_to_generate = time.perf_counter() - started

    def batch(self, batch_size: int, segment: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixture (B, 2, segment), stems (B, 4, 2, segment))."""
        count, stems, _, length = self.clips.shape

        def draw(high: int) -> int:
            return int(torch.randint(high, (1,), generator=generator))

        items = []
        for _ in range(batch_size):
            remix = torch.rand(1, generator=generator).item() < 0.5
            clip, offset = draw(count), draw(length - segment + 1)
            parts = []
            for stem in range(stems):
                if remix:
                    clip, offset = draw(count), draw(length - segment + 1)
                part = self.clips[clip, stem, :, offset:offset + segment]
                gain = 10 ** ((torch.rand(1, generator=generator).item() * 7 - 3.5) / 20)
                if torch.rand(1, generator=generator).item() < 0.5:
                    part = part.flip(0)
                parts.append(part * gain)
            items.append(torch.stack(parts))
        references = torch.stack(items)
        return references.sum(1), references


# --------------------------------------------------------------------------------------------
# Objective


def _stft(signal: torch.Tensor, n_fft: int) -> torch.Tensor:
    flat = signal.reshape(-1, signal.shape[-1])
    spec = torch.stft(flat, n_fft, n_fft // 4, window=torch.hann_window(n_fft, device=signal.device),
                      center=True, return_complex=True)
    return torch.view_as_real(spec)


def separation_loss(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """L1 of the waveforms plus L1 of the complex STFTs (window 1024)."""
    waveform = (estimates - references).abs().mean()
    return waveform + (_stft(estimates, 1024) - _stft(references, 1024)).abs().mean()


def learning_rate(step: int, steps: int, peak: float) -> float:
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------
# Training


def build_demo_model() -> torch.nn.Module:
    from ..models import build_model

    spec = get_spec(MODEL_NAME)
    return build_model(spec.family, spec.config_copy())


def segment_samples() -> int:
    """The model's chunk (models.toml's chunk_size): what it is trained on and run with."""
    return int(get_spec(MODEL_NAME).chunk_size)


def export_weights(model: torch.nn.Module, path: Path) -> Path:
    """The model's state as float16 safetensors (a plain state_dict; sfsep upcasts it on load)."""
    from safetensors.torch import save_file

    state = {key: value.detach().to(torch.float16).contiguous() for key, value in model.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(state, temporary, metadata={"sfsep_model": MODEL_NAME})
    return path


def train(options: TrainOptions, out: Path, *, resume: bool = False, log=print) -> Path:
    """Train from scratch (or resume), export the weights; returns the weights' path."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(options.seed)
    model = build_demo_model().train()
    parameters = sum(p.numel() for p in model.parameters())
    segment = segment_samples()
    # The model's stems among the generated ones (the mixture is always all four).
    targets = [STEMS.index(name) for name in get_spec(MODEL_NAME).stems]
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(options.seed)
    step, history = 0, []
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        if state["options"] != options.__dict__:
            log(f"note: resuming with other options than the checkpoint's ({state['options']})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, history = state["step"], state["history"]
        log(f"resumed at step {step}")
    log(f"model {MODEL_NAME}: {parameters} parameters; segments of {segment} samples at {RATE} Hz, "
        f"batch {options.batch_size}; {torch.get_num_threads()} threads; load average {_load()}")
    pool = ClipPool(options.seed, options.train_clips, options.clip_seconds, log=log)
    log(f"{options.train_clips} training clips of {options.clip_seconds:g} s generated in "
        f"{pool.seconds_to_generate:.0f} s")

    def save() -> None:
        with atomic_path(checkpoint) as temporary:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "step": step, "history": history,
                        "options": options.__dict__}, temporary)

    load_at_start = _load()
    started = time.perf_counter()
    last_save = started
    running: list[float] = []
    last_logged = 0.0
    stopped_early = False
    while step < options.steps:
        if options.minutes is not None and time.perf_counter() - started > options.minutes * 60:
            stopped_early = True
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, options.steps, options.learning_rate)
        mixture, references = pool.batch(options.batch_size, segment, generator)
        loss = separation_loss(model(mixture), references[:, targets])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        running.append(float(loss.detach()))
        step += 1
        if step % options.log_every == 0 or step == options.steps:
            elapsed = time.perf_counter() - started
            history.append({"step": step, "loss": float(np.mean(running)), "seconds": round(elapsed, 1),
                            "load": _load()})
            log(f"step {step}/{options.steps}  loss {np.mean(running):.4f}  lr {optimizer.param_groups[0]['lr']:.2e}"
                f"  {elapsed / 60:.1f} min  ({(elapsed - last_logged) / len(running):.2f} s/step)"
                f"  load {_load()}")
            running, last_logged = [], elapsed
        if time.perf_counter() - last_save > options.checkpoint_minutes * 60:
            save()
            last_save = time.perf_counter()
    save()
    elapsed = time.perf_counter() - started
    weights = export_weights(model.eval(), out / WEIGHTS_NAME)
    summary = {"steps": step, "planned_steps": options.steps, "stopped_early_by_minutes": stopped_early,
               "train_seconds": round(elapsed, 1), "generate_seconds": round(pool.seconds_to_generate, 1),
               "load_average_start": load_at_start, "load_average_end": _load(), "parameters": parameters, "weights_bytes": weights.stat().st_size,
               "options": options.__dict__, "history": history}
    write_text_atomic(out / "training.json", json.dumps(summary, indent=2))
    log(f"trained {step} steps in {elapsed / 60:.1f} min"
        + (f" (stopped by --minutes before the planned {options.steps})" if stopped_early else "")
        + f"; weights {weights} ({weights.stat().st_size} bytes, float16)")
    return weights


def _load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux/macOS
        return "?"


# --------------------------------------------------------------------------------------------
# Validation through sfsep eval's own code


def demo_separator(weights: str | os.PathLike | None = None):
    """The demo model as a Separator: the packaged weights, or a file (e.g. a training run's)."""
    from ..pipeline import Separator

    return Separator(MODEL_NAME, device="cpu", weights=weights, offline=True)


def evaluate_on_clips(separator, root: Path, out: Path, *, rates: Sequence[int], resamplers: Sequence[str],
                      metrics: Sequence[str] = ("sdr",), seed: int = 0, force: bool = True):
    """`sfsep eval`'s evaluation (sfsep.evaluate.runner.evaluate) of a separator on the "test" tracks of
    a MUSDB18-HQ-like folder of generated clips; returns the summary (sfsep.evaluate.report.Summary),
    whose tables name the clips, not MUSDB18-HQ."""
    from ..evaluate.musdb import list_tracks
    from ..evaluate.report import summarize
    from ..evaluate.runner import evaluate

    tracks = list_tracks(root, "test")
    run = evaluate(separator, tracks, out / separator.name, rates=rates, resamplers=resamplers,
                   metrics=tuple(metrics), seed=seed, force=force)
    summary = summarize(run)
    summary.dataset = f"sfsep.demo's generated clips ({root.name})"  # a MUSDB-like folder, not MUSDB18-HQ
    return summary


def validation_tables(weights: str | os.PathLike | None, out: Path, *, seed: int = 0, clips: int = 16,
                      seconds: float = 4.0, metrics: Sequence[str] = ("sdr",), log=print) -> dict:
    """Print and store the validation tables of the demo model and of `classic` (see the module
    docstring); returns {model: {"<resampler>-<rate>": {stem: SDR}}}."""
    from ..evaluate.report import markdown_table

    out.mkdir(parents=True, exist_ok=True)
    root = write_musdb_folder(out / "valid-musdb", seed, "valid", clips, seconds)
    started = time.perf_counter()
    tables, texts = {}, []
    for separator in (demo_separator(weights), _classic()):
        summary = evaluate_on_clips(separator, root, out / "eval", rates=TABLE_RATES, resamplers=TABLE_RESAMPLERS,
                                    metrics=metrics, seed=seed)
        text = markdown_table(summary)
        texts.append(text)
        log(text)
        tables[separator.name] = {f"{resampler}-{rate}": {t: summary.value((resampler, rate), t)
                                                          for t in summary.targets}
                                  for resampler, rate in summary.rows}
    seconds_taken = time.perf_counter() - started
    log(f"validation tables: {clips} valid clips of {seconds:g} s (seed {seed}), {seconds_taken / 60:.1f} min, "
        f"load average {_load()}")
    write_text_atomic(out / "tables.md", "\n".join(texts))
    write_text_atomic(out / "tables.json", json.dumps(tables, indent=2))
    return tables


def _classic():
    from ..pipeline import Separator

    return Separator("classic", device="cpu")


def record_scores(weights: str | os.PathLike | None, out: Path, *, seed: int = 0, log=print) -> dict:
    """The SDRs the regression test recomputes (RECORD_CLIPS short valid clips, RECORD_CELLS)."""
    document = scores_for_record(weights, out / "record", seed=seed)
    write_text_atomic(out / "validation.json", json.dumps(document, indent=2) + "\n")
    log(f"recorded {out / 'validation.json'}: {json.dumps(document['sdr'])}")
    return document


def scores_for_record(weights: str | os.PathLike | None, work: Path, *, seed: int = 0) -> dict:
    """{"seed", "clips", "seconds", "sdr": {"<resampler>-<rate>": {stem: median whole-signal SDR}}} of the
    demo model (packaged weights when `weights` is None) on the first RECORD_CLIPS valid clips."""
    root = write_musdb_folder(work / "musdb", seed, "valid", RECORD_CLIPS, RECORD_SECONDS)
    rates = sorted({rate for _, rate in RECORD_CELLS})
    resamplers = [resampler for resampler, _ in RECORD_CELLS if resampler != "none"]
    summary = evaluate_on_clips(demo_separator(weights), root, work / "eval", rates=rates, resamplers=resamplers,
                                metrics=RECORD_METRICS, seed=seed)
    sdr = {f"{resampler}-{rate}": {t: round(summary.value((resampler, rate), t), 4) for t in summary.targets}
           for resampler, rate in RECORD_CELLS}
    return {"seed": seed, "clips": RECORD_CLIPS, "seconds": RECORD_SECONDS, "sdr": sdr}


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sfsep.demo.train",
                                     description="Train the demo model from scratch; print its validation tables.")
    parser.add_argument("--out", type=Path, default=Path("demo-run"), help="folder for checkpoints, weights, tables")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=TrainOptions.steps, help="planned steps (the lr schedule)")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this many minutes of training")
    parser.add_argument("--batch-size", type=int, default=TrainOptions.batch_size)
    parser.add_argument("--lr", type=float, default=TrainOptions.learning_rate)
    parser.add_argument("--train-clips", type=int, default=TrainOptions.train_clips)
    parser.add_argument("--clip-seconds", type=float, default=TrainOptions.clip_seconds)
    parser.add_argument("--checkpoint-minutes", type=float, default=TrainOptions.checkpoint_minutes)
    parser.add_argument("--log-every", type=int, default=TrainOptions.log_every, help="steps between log lines")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    parser.add_argument("--valid-clips", type=int, default=16)
    parser.add_argument("--valid-seconds", type=float, default=4.0)
    parser.add_argument("--metrics", default="sdr",
                        help="sfsep eval's metrics for the tables: sdr (whole-signal SDR, the default), bsseval "
                             "(BSSEval v4: seconds per 1-s frame on a CPU), si_sdr; comma-separated")
    parser.add_argument("--no-tables", action="store_true", help="skip the validation tables")
    parser.add_argument("--tables-only", action="store_true", help="no training: tables of --weights")
    parser.add_argument("--weights", type=Path, default=None,
                        help="with --tables-only/--record-only: these weights (default: the packaged ones)")
    parser.add_argument("--record", action="store_true", help="also write <out>/validation.json (test numbers)")
    parser.add_argument("--record-only", action="store_true", help="no training: only <out>/validation.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = args.weights
    started = time.perf_counter()
    if not (args.tables_only or args.record_only):
        options = TrainOptions(seed=args.seed, steps=args.steps, minutes=args.minutes, batch_size=args.batch_size,
                               learning_rate=args.lr, train_clips=args.train_clips, clip_seconds=args.clip_seconds,
                               checkpoint_minutes=args.checkpoint_minutes, log_every=args.log_every)
        weights = train(options, args.out, resume=args.resume)
    if not args.no_tables and not args.record_only:
        validation_tables(weights, args.out, seed=args.seed, clips=args.valid_clips, seconds=args.valid_seconds,
                          metrics=parse_metrics(args.metrics))
    if args.record or args.record_only:
        record_scores(weights, args.out, seed=args.seed)
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min (wall), load average {_load()}")


if __name__ == "__main__":
    main()
