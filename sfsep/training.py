"""Training a resampling kernel for a frozen separator (`sfsep train-kernel`).

Only the kernel's parameters theta (`sfsep.resample.trainable.TrainableKernel`) are trained;
the separator's weights are frozen (requires_grad False, eval mode) but gradients flow through
it to the kernel. For a batch of low-rate segments (mixture m and reference stems s, both at
the input rate r, taken from MUSDB18-HQ, or with `--generated` from the procedural music of
sfsep.demo.generate, brought down from 44.1 kHz with the conventional resampler)::

    y_trainable = up_theta(m)            r -> trained rate, learned kernel (differentiable)
    y_sinc      = up_conventional(m)     r -> trained rate, Kaiser windowed sinc (a constant)
    s_hat       = down(separator(y_trainable))       back to r, conventional kernel
    loss        = mean((s_hat - s)^2) + mean((y_trainable - y_sinc)^2)

Both terms are means over all their elements (so the two squared norms of the issue are
weighed per sample, and a longer segment does not change their balance). The first term makes
the kernel useful to this separator; the second keeps the upsampled signal close to what the
conventional resampler gives, so the kernel cannot drift into producing arbitrary signals.

The separator is called as a module on fixed-length segments at its trained rate (its input
length is `model_length`, the model's chunk size unless --segment-seconds says otherwise),
with the same standardisation by the mono mixture as the pipeline applies (here per segment,
since a segment is all the module sees). Stems the model predicts that MUSDB has not (and
MUSDB sources it does not predict) are left out of the loss (the generated clips have MUSDB's
four sources), and so is a residual stem (mixture minus the predicted ones, e.g. a vocals model's
"other"): it is not the MUSDB source of its name, and its error is minus the predicted stems' own.

Schedule (all settings are `TrainSettings` fields and `sfsep train-kernel` flags): Adam, lr
1e-3, multiplied by 0.98 every 2 epochs, gradient clipping at norm 5, batches of 4 random
segments from the train split, `steps_per_epoch` batches per epoch, validation on fixed
segments of the valid split after every epoch (and once before training), early stopping
after 10 epochs without a better validation loss, at most 100 epochs. The kernel with the
best validation loss is kept and saved to ``<cache>/kernels/<model>/<rate>.pt`` with its
settings and curves.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import soundfile
import torch

from .errors import DatasetError, UsageError
from .inference import normalize_mixture
from .resample import apply_kernel, resample
from .resample.trainable import (
    TrainableKernel,
    fit_error,
    fit_windowed_sinc,
    kernel_path,
    save_kernel,
)

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
"""(mixture (B, C, T), references (B, S, C, T)), both at the input rate."""

SeparateFn = Callable[[torch.Tensor], torch.Tensor]
"""(B, C, model_length) at the trained rate -> (B, S, C, model_length), differentiable."""


@dataclass(frozen=True)
class TrainSettings:
    """Settings of `sfsep train-kernel` (defaults from the issue, our own where it is silent)."""

    rate: int
    segment_seconds: float | None = None  # None: the model's chunk size (at its trained rate)
    batch_size: int = 4
    epochs: int = 100
    patience: int = 10  # epochs without a better validation loss before stopping
    learning_rate: float = 1e-3
    lr_decay: float = 0.98
    decay_every: int = 2  # epochs
    clip_norm: float = 5.0
    steps_per_epoch: int = 32  # random batches per epoch (ours)
    valid_segments: int = 2  # fixed segments per validation track (ours)
    fit_steps: int = 3000  # steps of the initial fit to the windowed sinc
    seed: int = 0

    def check(self) -> None:
        """UsageError naming the flag for values that cannot work."""
        positive = {"--rate": self.rate, "--batch-size": self.batch_size, "--epochs": self.epochs,
                    "--patience": self.patience, "--decay-every": self.decay_every,
                    "--steps-per-epoch": self.steps_per_epoch, "--valid-segments": self.valid_segments}
        for flag, value in positive.items():
            if value is None or value < 1:
                raise UsageError(f"{flag} {value}: must be at least 1")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise UsageError(f"--lr {self.learning_rate}: must be a positive number")
        if not 0 < self.lr_decay <= 1:
            raise UsageError(f"--lr-decay {self.lr_decay}: must be in (0, 1]")
        if not self.clip_norm > 0:
            raise UsageError(f"--clip-norm {self.clip_norm}: must be positive")
        if self.segment_seconds is not None and not self.segment_seconds > 0:
            raise UsageError(f"--segment-seconds {self.segment_seconds}: must be positive")
        if self.fit_steps < 0:
            raise UsageError(f"--fit-steps {self.fit_steps}: must not be negative")


@dataclass
class TrainProgress:
    """What the progress callback receives: after every step and every validation."""

    phase: str  # "fit", "step", "valid" or "done"
    epoch: int  # 0 before training
    epochs: int
    step: int
    steps: int
    train_loss: float | None = None
    valid_loss: float | None = None
    best_valid_loss: float | None = None


ProgressFn = Callable[[TrainProgress], None]


@dataclass
class TrainResult:
    kernel: TrainableKernel  # with the best validation loss
    valid_curve: list[float]  # index 0: before training; index e: after epoch e
    train_curve: list[float]  # mean training loss of each epoch
    best_epoch: int
    stopped_early: bool
    fit: dict[str, float] = field(default_factory=dict)  # initial fit error to the windowed sinc

    def summary(self) -> list[str]:
        """What a run achieved, in two lines: the initial fit, and the validation loss before and after."""
        return [f"initial fit to the windowed sinc: max error {self.fit['max_abs']:.2e}, rms {self.fit['rms']:.2e}",
                f"validation loss {self.valid_curve[0]:.4e} before training, {self.valid_curve[self.best_epoch]:.4e} "
                f"at best epoch {self.best_epoch} of {len(self.train_curve)}"
                f"{' (stopped early)' if self.stopped_early else ''}"]


# --------------------------------------------------------------------------------------------
# The objective


def kernel_loss(kernel: TrainableKernel, separate_fn: SeparateFn, batch: Batch, input_rate: int,
                trained_rate: int, model_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, separation term, resampling term) for one batch; see the module docstring."""
    mixture, references = batch
    low_length = mixture.shape[-1]
    learned = kernel.matrix(input_rate, trained_rate, dtype=mixture.dtype, device=mixture.device)
    upsampled = _fit_length(apply_kernel(mixture, learned, input_rate, trained_rate), model_length)
    with torch.no_grad():
        reference_up = _fit_length(resample(mixture, input_rate, trained_rate), model_length)
    estimates = separate_fn(upsampled)
    back = _fit_length(resample(estimates, trained_rate, input_rate), low_length)
    separation = (back - references).square().mean()
    fidelity = (upsampled - reference_up).square().mean()
    return separation + fidelity, separation, fidelity


def _fit_length(signal: torch.Tensor, length: int) -> torch.Tensor:
    if signal.shape[-1] >= length:
        return signal[..., :length]
    return torch.nn.functional.pad(signal, (0, length - signal.shape[-1]))


def low_rate_length(model_length: int, input_rate: int, trained_rate: int) -> int:
    """Samples at the input rate whose upsampled version fits in `model_length` samples."""
    return max(1, model_length * input_rate // trained_rate)


def separate_function(modules: Sequence[torch.nn.Module], *, normalize: str | None = None,
                      predicted: Sequence[str], wanted: Sequence[str]) -> SeparateFn:
    """A differentiable (B, C, T) -> (B, len(wanted), C, T) function of frozen modules.

    `predicted` are the module's stems in order; `wanted` the stems to return, in that order (a
    residual stem is never one: see `train_kernel_for_model`). With `normalize` ("msst",
    "demucs" or "demucs_v2") each item is standardised by its mono mixture first and the stems
    mapped back (`sfsep.inference.normalize_mixture`), as the pipeline does for the whole track.
    """
    missing = [name for name in wanted if name not in predicted]
    if missing:
        raise UsageError(f"the model does not predict {', '.join(missing)}")
    order = [list(predicted).index(name) for name in wanted]
    for module in modules:
        module.eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)

    def run(mixture: torch.Tensor) -> torch.Tensor:
        model_input, restore = mixture, None
        if normalize:
            model_input, restore = normalize_mixture(mixture, normalize)
        outputs = [module(model_input) for module in modules]
        stems = outputs[0] if len(outputs) == 1 else torch.stack(outputs).mean(0)
        if restore is not None:
            stems = restore(stems)
        return stems[:, order]

    return run


# --------------------------------------------------------------------------------------------
# Data: random and fixed segments of MUSDB18-HQ tracks, brought down to the input rate


def _stacked(items: Sequence[Batch]) -> Batch:
    """(mixture, stems) segments as one batch: (B, C, T) and (B, stems, C, T)."""
    return torch.stack([mixture for mixture, _ in items]), torch.stack([stems for _, stems in items])


class MusdbSegments:
    """Segments of MUSDB18-HQ tracks at `rate` Hz: mixture (C, T) and stems (S, C, T).

    Only the samples a segment needs are read (plus the resampler's context) and brought
    down from 44.1 kHz with the conventional kernel. Mono tracks are duplicated to stereo.
    """

    def __init__(self, tracks: Sequence, rate: int, length: int, stems: Sequence[str]):
        from .evaluate.musdb import MUSDB_RATE

        if not tracks:
            raise DatasetError("no MUSDB18-HQ tracks to draw training segments from")
        self.tracks = list(tracks)
        self.rate = int(rate)
        self.length = int(length)
        self.stems = list(stems)
        self.source_rate = MUSDB_RATE
        self.source_length = -(-self.length * self.source_rate // self.rate)
        short = [t.name for t in self.tracks if t.num_samples < self.source_length]
        if len(short) == len(self.tracks):
            raise DatasetError(f"every track is shorter than a segment ({self.source_length / self.source_rate:.1f} s);"
                               f" use a smaller --segment-seconds")
        self.tracks = [t for t in self.tracks if t.num_samples >= self.source_length]

    def segment(self, track, start: int) -> Batch:
        parts = []
        for name in ["mixture", *self.stems]:
            path = track.path(name)
            try:
                data, _ = soundfile.read(str(path), start=start, frames=self.source_length, dtype="float32",
                                         always_2d=True)
            except (RuntimeError, OSError) as error:
                raise DatasetError(f"cannot read {path}: {error}") from error
            audio = torch.from_numpy(np.ascontiguousarray(data.T))
            if audio.shape[0] == 1:
                audio = audio.expand(2, -1)
            parts.append(audio[:2])
        stacked = torch.stack(parts)
        low = _fit_length(resample(stacked, self.source_rate, self.rate), self.length)
        return low[0], low[1:]

    def random_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        items = []
        for _ in range(batch_size):
            track = self.tracks[int(torch.randint(len(self.tracks), (1,), generator=generator))]
            start = int(torch.randint(track.num_samples - self.source_length + 1, (1,), generator=generator))
            items.append(self.segment(track, start))
        return _stacked(items)

    def fixed_batches(self, per_track: int, batch_size: int) -> list[Batch]:
        """Evenly spaced segments of every track, grouped into batches (the validation set)."""
        items = []
        for track in self.tracks:
            room = track.num_samples - self.source_length
            for index in range(per_track):
                items.append(self.segment(track, room * (index + 1) // (per_track + 1)))
        return [_stacked(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


class GeneratedSegments:
    """Segments of generated clips (sfsep.demo.generate, one split of one seed) at `rate` Hz: the
    same interface as MusdbSegments. The clips are made at 44.1 kHz, held in memory and brought
    down with the conventional kernel once; a clip's `per_track` fixed segments are evenly spaced."""

    def __init__(self, seed: int, split: str, clips: int, rate: int, length: int, stems: Sequence[str],
                 seconds: float = 4.0):
        from .demo.generate import RATE, STEMS, generate_clip

        self.rate, self.length = int(rate), int(length)
        seconds = max(seconds, 1.5 * self.length / self.rate)  # room for random offsets
        order = [STEMS.index(name) for name in stems]
        audio = torch.stack([torch.from_numpy(generate_clip(seed, split, index, seconds)) for index in range(clips)])
        stacked = torch.cat([audio.sum(1, keepdim=True), audio[:, order]], dim=1)  # mixture first
        self.clips = resample(stacked, RATE, self.rate)

    def _segment(self, clip: int, start: int) -> Batch:
        part = self.clips[clip, :, :, start:start + self.length]
        return part[0], part[1:]

    def random_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        room = self.clips.shape[-1] - self.length + 1
        items = [self._segment(int(torch.randint(len(self.clips), (1,), generator=generator)),
                               int(torch.randint(room, (1,), generator=generator))) for _ in range(batch_size)]
        return _stacked(items)

    def fixed_batches(self, per_track: int, batch_size: int) -> list[Batch]:
        room = self.clips.shape[-1] - self.length
        items = [self._segment(clip, room * (index + 1) // (per_track + 1))
                 for clip in range(len(self.clips)) for index in range(per_track)]
        return [_stacked(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


GENERATED_VALID_CLIPS = 4
"""Validation clips of `--generated` training (the generator's valid split)."""


# --------------------------------------------------------------------------------------------
# The loop


def train_kernel(separate_fn: SeparateFn, train_batch: Callable[[torch.Generator], Batch],
                 valid_batches: Sequence[Batch], *, trained_rate: int, model_length: int,
                 settings: TrainSettings, kernel: TrainableKernel | None = None,
                 device: torch.device | str = "cpu", progress: ProgressFn | None = None) -> TrainResult:
    """Train theta; return the kernel with the best validation loss and the curves.

    `train_batch(generator)` draws a random training batch; `valid_batches` are fixed. Without
    `kernel`, a new one is fitted to the windowed sinc first (`settings.fit_steps`).
    """
    settings.check()
    if not valid_batches:
        raise DatasetError("no validation segments (the valid split is empty)")
    device = torch.device(device)
    report = progress or (lambda event: None)
    rate = settings.rate
    if kernel is None:
        report(TrainProgress("fit", 0, settings.epochs, 0, settings.steps_per_epoch))
        kernel = TrainableKernel()
        fit = fit_windowed_sinc(kernel, steps=settings.fit_steps, seed=settings.seed)
    else:
        fit = fit_error(kernel)
    kernel = kernel.to(device).train()
    for parameter in kernel.parameters():
        parameter.requires_grad_(True)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(kernel.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.decay_every, gamma=settings.lr_decay)

    def to_device(batch: Batch) -> Batch:
        return batch[0].to(device), batch[1].to(device)

    def validate() -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in valid_batches:
                loss, _, _ = kernel_loss(kernel, separate_fn, to_device(batch), rate, trained_rate, model_length)
                total += float(loss) * batch[0].shape[0]
                count += batch[0].shape[0]
        return total / count

    best = validate()
    best_state = copy.deepcopy(kernel.state_dict())
    best_epoch, stale, stopped_early = 0, 0, False
    valid_curve, train_curve = [best], []
    log.info("epoch 0: validation loss %.4e", best)
    report(TrainProgress("valid", 0, settings.epochs, 0, settings.steps_per_epoch, valid_loss=best,
                         best_valid_loss=best))
    with torch.enable_grad():
        for epoch in range(1, settings.epochs + 1):
            losses = []
            for step in range(1, settings.steps_per_epoch + 1):
                batch = to_device(train_batch(generator))
                optimizer.zero_grad()
                loss, _, _ = kernel_loss(kernel, separate_fn, batch, rate, trained_rate, model_length)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(kernel.parameters(), settings.clip_norm)
                optimizer.step()
                losses.append(float(loss.detach()))
                report(TrainProgress("step", epoch, settings.epochs, step, settings.steps_per_epoch,
                                     train_loss=losses[-1], best_valid_loss=best))
            schedule.step()
            train_curve.append(float(np.mean(losses)))
            current = validate()
            valid_curve.append(current)
            if current < best:
                best, best_epoch, stale = current, epoch, 0
                best_state = copy.deepcopy(kernel.state_dict())
            else:
                stale += 1
            log.info("epoch %d: validation loss %.4e", epoch, current)
            report(TrainProgress("valid", epoch, settings.epochs, settings.steps_per_epoch,
                                 settings.steps_per_epoch, train_loss=train_curve[-1], valid_loss=current,
                                 best_valid_loss=best))
            if stale >= settings.patience:
                stopped_early = True
                break
    kernel.load_state_dict(best_state)
    kernel.eval()
    for parameter in kernel.parameters():
        parameter.requires_grad_(False)
    report(TrainProgress("done", len(train_curve), settings.epochs, settings.steps_per_epoch,
                         settings.steps_per_epoch, valid_loss=best, best_valid_loss=best))
    return TrainResult(kernel, valid_curve, train_curve, best_epoch, stopped_early, fit)


def train_kernel_for_model(model, musdb: str | os.PathLike | None, settings: TrainSettings, *,
                           device: str = "auto", offline: bool = False, output: str | os.PathLike | None = None,
                           progress: ProgressFn | None = None,
                           generated_clips: int | None = None) -> tuple[Path, TrainResult]:
    """`sfsep train-kernel`: train a kernel for a model (a name, a ModelChoice or a loaded Separator)
    and input rate; save it. A model without a trained rate is refused before any weights are
    looked for; a weights error does not suggest the weightless classical models.

    The data is MUSDB18-HQ at `musdb` (train and valid subsets), or with `generated_clips` that
    many clips of sfsep.demo.generate's train split (seed `settings.seed`) and
    GENERATED_VALID_CLIPS of its valid split; then `musdb` must be None.

    Returns the path written (`output`, default ``<cache>/kernels/<model>/<rate>.pt``) and the result.
    """
    from . import hub
    from .errors import WeightsError
    from .evaluate.musdb import SOURCES, list_tracks
    from .pipeline import ModelChoice, Separator

    settings.check()
    if generated_clips is not None and musdb is not None:
        raise UsageError("--generated and --musdb: pick one data source")
    if generated_clips is not None and generated_clips < 1:
        raise UsageError(f"--generated {generated_clips}: give at least 1 clip")
    if isinstance(model, str):
        model = ModelChoice(model, device=device, offline=offline)
    spec = model.spec if isinstance(model, Separator) else model.spec()
    if spec.any_rate:  # before any weights are looked for
        raise UsageError(f"--model {spec.name}: this separator runs at any input rate, so nothing is resampled "
                         f"and there is no kernel to train; pick a model with a trained rate")
    try:
        separator = model if isinstance(model, Separator) else model.load()
    except WeightsError as exc:  # the usual fallback, a model without weights, has no kernel to train
        raise WeightsError(str(exc).replace(hub.CLASSIC_HINT, "") + "; train-kernel needs a model with "
                           "weights: fetch them first (`sfsep fetch " + spec.name + "`)") from exc
    spec = separator.spec
    trained_rate = spec.trained_rate
    if settings.rate >= trained_rate:
        raise UsageError(f"--rate {settings.rate}: the kernel upsamples inputs below the model's {trained_rate} Hz; "
                         f"use a lower rate (e.g. 8000)")
    # The loaded model's contract, not models.toml: a demucs package carries its own segment and
    # valid length (models.toml's chunk_size is only a fallback for it).
    contract = separator.contract(trained_rate)
    if settings.segment_seconds is not None:
        model_length = max(1, round(settings.segment_seconds * trained_rate))
    elif contract.segment:
        model_length = int(contract.segment)
    else:
        model_length = 4 * trained_rate
    padded_length = contract.padded_length
    if padded_length is not None and model_length > padded_length:
        raise UsageError(f"--segment-seconds: model '{spec.name}' takes at most {padded_length / trained_rate:.2f} s")
    residual = spec.residual_stem
    names = list(spec.stems) + ([residual] if residual else [])
    # A residual stem (a vocals model's "other": the mixture minus the vocals) is everything the
    # predicted stems leave, not the MUSDB source of its name (eval scores it as the accompaniment);
    # its error is minus the predicted stems' error, so it is left out of the loss.
    wanted = [name for name in spec.stems if name in SOURCES]
    if not wanted:
        raise UsageError(f"--model {spec.name}: none of its stems ({', '.join(names)}) is a MUSDB source "
                         f"({', '.join(SOURCES)}), so there is nothing to compare with")
    separate_fn = separate_function(separator.modules(trained_rate), normalize=contract.normalize,
                                    predicted=spec.stems, wanted=wanted)
    low_length = low_rate_length(model_length, settings.rate, trained_rate)
    if generated_clips is not None:
        train = GeneratedSegments(settings.seed, "train", generated_clips, settings.rate, low_length, wanted)
        valid = GeneratedSegments(settings.seed, "valid", GENERATED_VALID_CLIPS, settings.rate, low_length, wanted)
    else:
        train = MusdbSegments(list_tracks(musdb, "train"), settings.rate, low_length, wanted)
        valid = MusdbSegments(list_tracks(musdb, "valid", no_valid_hint="train-kernel validates on them: add them "
                                         "to the train folder (it uses the other train tracks for training)"),
                              settings.rate, low_length, wanted)
    valid_batches = valid.fixed_batches(settings.valid_segments, settings.batch_size)
    result = train_kernel(separate_fn, lambda generator: train.random_batch(settings.batch_size, generator), valid_batches,
                          trained_rate=trained_rate, model_length=model_length, settings=settings,
                          device=separator.device, progress=progress)
    path = Path(output) if output is not None else kernel_path(spec.name, settings.rate)
    save_kernel(result.kernel, path, model=spec.name, input_rate=settings.rate, trained_rate=trained_rate,
                stems=wanted, model_length=model_length, train_settings=asdict(settings),
                valid_curve=result.valid_curve, train_curve=result.train_curve, best_epoch=result.best_epoch,
                stopped_early=result.stopped_early, fit_error=result.fit)
    return path, result
