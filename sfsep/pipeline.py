"""The separation flow as functions a library user can call.

    audio @ input_rate --resample up (strategy from input_rate vs the model's trained rate)-->
    @ model rate --chunked inference--> stems @ model rate --resample down (conventional)-->
    stems @ input_rate

`separate(audio, rate, model)` runs it on a tensor; `separate_file(path, model, ...)` reads a
file, runs it and writes the stems atomically. `Separator` is a model made ready to run (spec,
module, device), so that a batch of files loads the model once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from . import audio as audio_io
from .errors import AudioError, ModelError, ResampleError, UsageError
from .inference import ProgressCallback, demix, resolve_device
from .models import build_model
from .postprocess import energy_gate
from .registry import ModelSpec, get_spec
from .resample import choose_strategy, resample


@dataclass(frozen=True)
class Settings:
    """How to run a separation. None means: take the model's own setting from models.toml."""

    resampler: str = "auto"
    sigma: float = 1e-3  # noisy-kernel standard deviation (sigma^2 = 1e-6)
    snr_db: float = 20.0  # post-resampling noise level for the "noise" strategy
    seed: int | None = None
    chunk_seconds: float | None = None
    overlap: float | None = None
    batch_size: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    gate_db: float | None = None  # energy gate threshold (dB relative to the mixture); None = off
    shifts: int = 0  # random time shifts averaged (demucs' --shifts); 0 = none


@dataclass
class Separation:
    """The result of `separate`: stems at the input rate, and what was done to get them."""

    stems: dict[str, torch.Tensor]
    input_rate: int
    model_rate: int
    strategy: str
    reason: str
    notes: list[str] = field(default_factory=list)


class Separator:
    """A model ready to run on a device.

    Models with a trained rate are built once; models that run at any rate (the classical ones)
    are built for each input rate they meet, since their filters are set in Hz.
    """

    def __init__(self, spec: ModelSpec, *, device: str | torch.device = "auto",
                 modules: list[torch.nn.Module] | None = None):
        self.spec = spec
        self.device = resolve_device(device)
        self._modules_by_rate: dict[int | None, list[torch.nn.Module]] = {}
        if modules is not None:
            self._modules_by_rate[spec.trained_rate] = [m.to(self.device).eval() for m in modules]

    @property
    def name(self) -> str:
        return self.spec.name

    def modules(self, model_rate: int) -> list[torch.nn.Module]:
        key = model_rate if self.spec.any_rate else self.spec.trained_rate
        if key not in self._modules_by_rate:
            if not self.spec.any_rate:
                raise ModelError(f"model '{self.spec.name}' has no weights loaded")
            config = self.spec.config_copy()
            config["sample_rate"] = model_rate
            self._modules_by_rate[key] = [build_model(self.spec.family, config).to(self.device)]
        return self._modules_by_rate[key]

    def run(self, mix: torch.Tensor, model_rate: int, settings: Settings,
            progress: ProgressCallback | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stems (S, C, T) of a mixture (C, T) that is already at `model_rate`.

        Chunking follows the model's spec unless --chunk-seconds/--overlap override it; with
        `settings.shifts` the whole run is averaged over random time shifts (demucs' trick),
        drawn from `generator`."""
        spec = self.spec
        modules = self.modules(model_rate)
        batch_size = settings.batch_size or spec.batch_size
        if spec.chunk_style == "bsrnn":
            return self._run_bsrnn(modules, mix, settings, batch_size, progress)
        chunk_size = spec.chunk_size
        style = spec.chunk_style
        spec_overlap = spec.num_overlap if style in ("msst", "msst_demucs") else spec.overlap
        overlap = spec_overlap if settings.overlap is None else settings.overlap
        if settings.chunk_seconds is not None:
            chunk_size = max(1, round(settings.chunk_seconds * model_rate))
        if style in ("msst", "msst_demucs") and settings.overlap is not None:
            style = "fade"  # a fractional --overlap means sfsep's own cross-fade
        padded_length = spec.padded_length if style == "demucs" else None
        if padded_length is not None and chunk_size is not None and chunk_size > padded_length:
            raise UsageError(f"--chunk-seconds: model '{spec.name}' takes at most "
                             f"{padded_length / model_rate:.2f} s per chunk")

        def run_once(signal: torch.Tensor) -> torch.Tensor:
            outputs = [demix(module, signal, chunk_size=chunk_size, overlap=overlap, style=style,
                             batch_size=batch_size, device=self.device, precision=settings.precision,
                             padded_length=padded_length, progress=progress) for module in modules]
            return outputs[0] if len(outputs) == 1 else torch.stack(outputs).mean(0)

        if settings.shifts > 0:
            from .models.demucs import apply_shifts

            return apply_shifts(run_once, mix, settings.shifts, model_rate // 2, generator)
        return run_once(mix)

    def _run_bsrnn(self, modules, mix, settings, batch_size, progress):
        """BSRNN runs with its reference separator (fixed 263-frame chunks every ~0.54 s)."""
        from .inference import autocast_context
        from .models.bsrnn import separate_waveform

        if settings.chunk_seconds is not None or settings.overlap is not None or settings.shifts:
            raise UsageError(f"model '{self.spec.name}' runs with its reference chunking; "
                             f"--chunk-seconds, --overlap and --shifts do not apply to it")
        with torch.inference_mode(), autocast_context(self.device, settings.precision):
            return separate_waveform(modules[0], mix, batch_size=batch_size, device=self.device,
                                     progress=progress).float().cpu()


class _WeightedBag(torch.nn.Module):
    """A bag of checkpoints as one module: stem k is the weighted mean over the models of their
    stem k (demucs' bag weights, e.g. htdemucs_ft's identity: each model gives one stem). The
    mean is linear, so running it inside each chunk equals demucs' model-by-model run."""

    def __init__(self, members: list[torch.nn.Module], weights: list[list[float]]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.weights = weights

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        from .models.demucs import average_bag

        return average_bag([member(mix) for member in self.members], self.weights)


def load_separator(model: str | ModelSpec, *, device: str = "auto", weights: str | os.PathLike | None = None,
                   offline: bool = False, config: str | os.PathLike | dict | None = None,
                   progress: bool | None = None) -> Separator:
    """A Separator for a registry name (or alias) or a ModelSpec, with its weights loaded.

    Weights come from `weights` (a local checkpoint file) or from the model's sources in
    models.toml through `sfsep.hub` (cache, download, checksum; never the network when
    `offline` or SFSEP_OFFLINE=1). `config` (an MSST-style YAML path, or its dict) replaces the
    spec's architecture config, stems, rate and chunking. Checkpoints are read with
    `sfsep.checkpoint` (no code in them runs) and loaded strictly.
    """
    from . import checkpoint, hub
    from .models import builder
    from .registry import spec_from_config

    spec = get_spec(model) if isinstance(model, str) else model
    if config is not None:
        if spec.any_rate:
            raise UsageError(f"--config: model '{spec.name}' is a built-in separator and takes no config")
        data = config if isinstance(config, dict) else checkpoint.load_yaml_config(config)
        spec = spec_from_config(data, name=spec.name, base=spec, source=f"--config {config}"
                                if not isinstance(config, dict) else "config")
    if spec.any_rate:
        if weights is not None:
            raise UsageError(f"--weights: model '{spec.name}' has no weights (it is a built-in separator)")
        return Separator(spec, device=device)
    try:
        builder(spec.family)
    except ModelError as exc:
        raise ModelError(
            f"model '{spec.name}': its architecture '{spec.family}' is not available in this version of "
            f"sfsep ({exc}); use another model (`sfsep models` shows which are ready) or --model classic"
        ) from exc
    if weights is not None:
        paths = [Path(weights)]
        if not paths[0].is_file():
            raise UsageError(f"--weights {weights}: no such file")
    else:
        paths = hub.fetch_model(spec, offline=offline, progress=progress)

    demucs_kwargs = spec.family in ("htdemucs", "conv_tasnet") and "sources" in spec.config
    modules = []
    stems = spec.stems
    for path in paths:
        loaded = checkpoint.load_checkpoint(path)
        model_config = spec.config_copy()
        if demucs_kwargs and loaded.kwargs.get("sources"):
            # A demucs package records the kwargs it was trained with: they are authoritative.
            model_config = dict(loaded.kwargs)
            stems = tuple(str(name) for name in loaded.kwargs["sources"])
        module = build_model(spec.family, model_config)
        checkpoint.load_state(module, loaded.state, source=path)
        modules.append(module)
    if stems != spec.stems:
        if len(paths) > 1 and set(stems) != set(spec.stems):
            raise ModelError(f"model '{spec.name}': the checkpoints' sources {list(stems)} differ from "
                             f"models.toml's stems {list(spec.stems)}")
        spec = replace(spec, stems=stems)
    bag_weights = spec.bag_weights
    if len(modules) > 1 and bag_weights and weights is None:
        if len(bag_weights) != len(modules) or any(len(row) != len(spec.stems) for row in bag_weights):
            raise ModelError(f"models.toml: model '{spec.name}': bag_weights must be {len(modules)} rows of "
                             f"{len(spec.stems)} weights")
        modules = [_WeightedBag(modules, bag_weights)]
    return Separator(spec, device=device, modules=modules)


def _normalize(mix: torch.Tensor, kind: str) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Standardize the mixture by its mono mix as the model's reference does; returns the
    normalized mixture and the function that maps stems back."""
    if kind == "msst":
        from .models.scnet import normalize_mixture

        return normalize_mixture(mix)
    from .models.demucs import denormalize, normalize_by_mixture

    normalized, mean, scale = normalize_by_mixture(mix, eps=1e-8 if kind == "demucs" else 0.0)
    return normalized, lambda stems: denormalize(stems, mean, scale)


def separate(
    audio: torch.Tensor,
    rate: int,
    model: str | ModelSpec | Separator,
    resampler: str = "auto",
    *,
    settings: Settings | None = None,
    progress: ProgressCallback | None = None,
) -> Separation:
    """Separate `audio` (channels, samples) at `rate`; stems come back at `rate` with the input's
    channel count and length. `resampler` overrides `settings.resampler`."""
    settings = replace(settings or Settings(), resampler=resampler)
    separator = model if isinstance(model, Separator) else load_separator(model, device=settings.device)
    spec = separator.spec
    if audio.dim() == 1:
        audio = audio.unsqueeze(0)
    if audio.dim() != 2 or audio.shape[-1] == 0:
        raise AudioError(f"expected (channels, samples) audio, got shape {tuple(audio.shape)}")
    channels, length = audio.shape
    mix = audio.float()
    if channels == 1:
        mix = mix.expand(2, -1)  # mono is separated as dual mono and written back as mono
    elif channels != 2:
        raise AudioError(f"{channels}-channel audio: sfsep separates mono or stereo (fold it down first)")

    model_rate = spec.model_rate(rate)
    strategy, reason = _pick_strategy(settings.resampler, rate, model_rate)
    generator = torch.Generator().manual_seed(settings.seed) if settings.seed is not None else None
    learned_kernel = None
    if strategy == "trainable":  # the kernel `sfsep train-kernel` trained for this model and input rate
        from .resample.trainable import load_trained_kernel

        learned_kernel = load_trained_kernel(spec.name, rate)
    at_model_rate = resample(mix, rate, model_rate, strategy, sigma=settings.sigma, snr_db=settings.snr_db,
                             generator=generator, kernel=learned_kernel)
    model_input = at_model_rate
    restore = None
    if spec.normalize:
        model_input, restore = _normalize(at_model_rate, spec.normalize)
    stems = separator.run(model_input, model_rate, settings, progress, generator)
    if restore is not None:
        stems = restore(stems)

    names = list(spec.stems)
    notes: list[str] = []
    residual = spec.residual_stem
    if residual:
        stems = torch.cat([stems, (at_model_rate - stems.sum(0))[None]])
        names.append(residual)
        notes.append(f"'{residual}' is the mixture minus {', '.join(spec.stems)} (the model predicts only those)")
    if stems.shape[0] != len(names):
        raise ModelError(f"model '{spec.name}' returned {stems.shape[0]} stems, models.toml lists {len(names)}")

    # All stems go back to the input rate in one call (the resampler takes leading dimensions).
    back = resample(stems, model_rate, rate, "conventional" if model_rate != rate else "none")[..., :length]
    if back.shape[-1] < length:
        back = torch.nn.functional.pad(back, (0, length - back.shape[-1]))
    result: dict[str, torch.Tensor] = {}
    for name, stem in zip(names, back):
        if settings.gate_db is not None:
            stem = energy_gate(stem, mix, rate, settings.gate_db)
        result[name] = stem.mean(0, keepdim=True) if channels == 1 else stem
    return Separation(result, rate, model_rate, strategy, reason, notes)


def _pick_strategy(requested: str, input_rate: int, model_rate: int) -> tuple[str, str]:
    if requested == "auto":
        return choose_strategy(input_rate, model_rate)
    if requested == "none" and input_rate != model_rate:
        raise ResampleError(
            f"--resampler none: the input is at {input_rate} Hz but the model runs at {model_rate} Hz; "
            f"pick a resampler (auto, conventional, noisy, noise)"
        )
    if input_rate == model_rate:
        return "none", f"input already at the model rate ({model_rate} Hz)"
    return requested, "chosen with --resampler"


# --------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class OutputOptions:
    out: Path = Path("separated")
    filename: str = "{track}/{stem}.{ext}"
    format: str = "wav"
    bits: int = 16
    clip: str = "clamp"
    overwrite: bool = False
    downmix: bool = False


@dataclass
class FileResult:
    path: Path
    status: str  # "done" | "skipped"
    input_rate: int = 0
    model_rate: int = 0
    strategy: str = ""
    reason: str = ""
    bandwidth_hz: float = 0.0
    outputs: list[Path] = field(default_factory=list)
    clipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def stem_paths(path: Path, separator: Separator, output: OutputOptions) -> dict[str, Path]:
    spec = separator.spec
    names = list(spec.stems) + ([spec.residual_stem] if spec.residual_stem else [])
    return {
        name: audio_io.output_path(output.filename, out=Path(output.out), model=spec.name, track=path.stem,
                                   trackext=path.suffix.lstrip("."), stem=name, ext=output.format)
        for name in names
    }


def check_writable(folder: Path) -> None:
    """Fail early (before any separation work) if the output folder cannot be written."""
    probe_dir = folder
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir() or not os.access(probe_dir, os.W_OK | os.X_OK):
        raise AudioError(f"{folder}: the output folder cannot be written (check --out and its permissions)")


def separate_file(
    path: str | os.PathLike,
    model: str | Separator,
    *,
    output: OutputOptions = OutputOptions(),
    settings: Settings = Settings(),
    progress: ProgressCallback | None = None,
) -> FileResult:
    """Read `path`, separate it and write its stems; existing outputs are skipped unless
    `output.overwrite`. Errors about the file are AudioError naming it."""
    started = time.perf_counter()
    path = Path(path)
    separator = model if isinstance(model, Separator) else load_separator(model, device=settings.device)
    audio_io.subtype_for(output.format, output.bits)  # reject impossible format/bits before any work
    targets = stem_paths(path, separator, output)
    existing = [p for p in targets.values() if p.exists()]
    info = audio_io.inspect(path)
    if existing and not output.overwrite:
        return FileResult(path, "skipped", info.rate, notes=[f"{existing[0]} exists (use --overwrite to replace)"])
    for folder in {p.parent for p in targets.values()}:
        check_writable(folder)
    mix, rate = audio_io.read(path, downmix=output.downmix)
    bandwidth = audio_io.effective_bandwidth(mix, rate)
    separation = separate(mix, rate, separator, settings.resampler, settings=settings, progress=progress)
    reports = audio_io.write_all([(targets[name], stem) for name, stem in separation.stems.items()], rate,
                                 bits=output.bits, clip=output.clip, overwrite=True)
    return FileResult(
        path=path, status="done", input_rate=rate, model_rate=separation.model_rate,
        strategy=separation.strategy, reason=separation.reason, bandwidth_hz=bandwidth,
        outputs=[r.path for r in reports],
        clipped={r.path.stem: r.clipped_samples for r in reports if r.clipped_samples},
        notes=separation.notes, seconds=time.perf_counter() - started,
    )


def describe(result: FileResult) -> dict[str, Any]:
    """A plain-data summary (for --json and sidecars)."""
    return {
        "file": str(result.path), "status": result.status, "input_rate": result.input_rate,
        "model_rate": result.model_rate, "resampler": result.strategy, "reason": result.reason,
        "bandwidth_hz": round(result.bandwidth_hz, 1), "outputs": [str(p) for p in result.outputs],
        "clipped_samples": result.clipped, "notes": result.notes, "seconds": round(result.seconds, 3),
    }
