"""The separation flow as functions a library user can call, streamed in bounded blocks.

    file --blocks--> resample up (stateful; strategy from the input rate vs the model's; one
    kernel per file) --> chunks + overlap-add by the model's run-time contract --> stems at the
    model rate --> resample down (stateful, conventional) --> staged files, published together

`Separator` is sfsep's library entry point: a model loaded once (spec, modules, device, run-time
contract) with the settings it runs with; its methods run the flow on a tensor, a file or several.
`separate_file(path, model, ...)` runs it on a file without ever holding the track: memory is
bounded by the block and chunk sizes, not by the track's length. What needs the whole track is
gathered first in cheap passes over the file (its decoded length and a NaN check, the effective
bandwidth, the mixture statistics a model normalizes by, the energy the "noise" resampler
scales to); a pass re-reads the file, which costs far less than the model. `separate(audio, rate,
model)` runs the same flow on a tensor and returns the stems in memory. `Settings` and
`OutputOptions` check themselves when made, so library callers get the command line's checks.
Nothing here names a model family: each family's module states its contract
(`sfsep.models.run_contract`).

Which stems a run returns and writes is part of its `Settings` (`stems`, `two_stems`,
`other_method`; see `plan_stems`): the same selection for `separate` and `separate_file`. Stems
not selected are dropped at the model rate, before anything is brought back down or written.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import torch

from . import audio as audio_io
from .errors import AudioError, ModelError, ResampleError, UsageError, long_name, os_error_reason
from .inference import (MixtureStatistics, ProgressCallback, RunContract, count_chunks, resolve_device,
                        run_chunks)
from .models import build_model, run_contract
from .postprocess import GateStream
from .registry import DEFAULT_MODEL, ModelSpec, get_spec
from .resample import choose_strategy
from .resample.kernel import cached_conventional_kernel, kernel_geometry
from .resample.stream import StreamResampler
from .resample.strategies import noisy_kernel

if TYPE_CHECKING:
    from .runs import RunReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """How to run a separation. None means: take the model's own setting (its run-time contract).

    A Settings checks itself when it is made (a UsageError naming the option), so a library
    caller gets the same checks as the command line, before any work.

    Stem selection (`plan_stems` checks it against the model's stems, before any work):
    `stems` returns (and writes) only those stems, in the model's order; `two_stems` returns that
    stem and `no_<stem>` (demucs' --two-stems), made by `other_method`: "add" = the sum of the
    model's other stems (demucs' default), "minus" = the mixture minus the stem, computed at the
    input rate so that the two add up to the mixture, "none" = not returned. The two options
    exclude each other; neither means every stem of the model.
    """

    resampler: str = "auto"
    sigma: float = 1e-3  # noisy-kernel standard deviation (sigma^2 = 1e-6)
    snr_db: float = 20.0  # post-resampling noise level for the "noise" strategy
    seed: int | None = None
    chunk_seconds: float | None = None
    overlap: float | None = None  # a fraction of a chunk (sfsep's cross-fade for MSST-style models)
    batch_size: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    gate_db: float | None = None  # energy gate threshold (dB relative to the mixture); None = off
    shifts: int = 0  # random time shifts averaged (demucs' --shifts); 0 = none
    stems: Sequence[str] | None = None  # return only these stems; None = every stem of the model
    two_stems: str | None = None  # return this stem and no_<stem> (see other_method)
    other_method: str = "add"  # how no_<stem> is made: add | minus | none (demucs' --other-method)

    def __post_init__(self) -> None:
        from .inference import PRECISIONS
        from .resample import METHODS

        if self.resampler != "auto" and self.resampler not in METHODS:
            raise UsageError(f"--resampler {self.resampler}: use auto or one of {', '.join(METHODS)}")
        if self.sigma < 0:
            raise UsageError(f"--sigma {self.sigma}: must not be negative")
        if self.shifts < 0:
            raise UsageError(f"--shifts {self.shifts}: must not be negative")
        if self.chunk_seconds is not None and self.chunk_seconds <= 0:
            raise UsageError(f"--chunk-seconds {self.chunk_seconds}: must be positive")
        if self.overlap is not None and not 0 <= self.overlap < 1:
            raise UsageError(f"--overlap {self.overlap}: give a fraction of a chunk, at least 0 and below 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision {self.precision}: use one of {', '.join(PRECISIONS)}")


@dataclass
class Separation:
    """The result of `separate` / `Separator.separate_tensor`: the stems (name -> (channels,
    samples) tensor) at the input rate, the model's rate, the resampler used (`strategy`) and
    why (`reason`), and notes (e.g. a stem computed as the mixture minus the others)."""

    stems: dict[str, torch.Tensor]
    input_rate: int
    model_rate: int
    strategy: str
    reason: str
    notes: list[str] = field(default_factory=list)


def model_stem_names(spec: ModelSpec) -> list[str]:
    """The stems a run of `spec` returns, in order: the model's, then its residual stem if any."""
    residual = spec.residual_stem
    return list(spec.stems) + ([residual] if residual else [])


OTHER_METHODS = ("add", "minus", "none")
"""How --two-stems makes no_<stem>, as demucs' --other-method defines them (demucs 4.1.0 itself
names the "minus" file minus_<stem>; sfsep names it no_<stem> with every method)."""


@dataclass(frozen=True)
class StemPlan:
    """The stems a run returns, and how each is made from the model's stems (`plan_stems`).

    `rows` are the model's stems (its residual stem included, in `Separator.stem_names` order)
    kept as they are; with `summed`, one more stem is the sum of those rows (--other-method add),
    both at the model rate, so stems nobody asked for are never brought back down. With `minus`,
    a last stem is the mixture minus the returned stem at that position, at the input rate."""

    names: tuple[str, ...]
    rows: tuple[int, ...]
    summed: tuple[int, ...] = ()
    minus: int | None = None
    notes: tuple[str, ...] = ()

    def pick(self, stems: torch.Tensor) -> torch.Tensor:
        """(model stems, channels, n) -> the kept rows, then the summed stem if any."""
        picked = stems if self.rows == tuple(range(stems.shape[0])) else stems[list(self.rows)]
        if self.summed:
            picked = torch.cat([picked, stems[list(self.summed)].sum(0, keepdim=True)])
        return picked


def plan_stems(available: Sequence[str], settings: Settings, model: str) -> StemPlan:
    """The stems `settings` selects among `available` (a model's stem names, residual included),
    or a UsageError that lists the model's stems: an unknown name, an empty --stems, an unknown
    --other-method, or --stems and --two-stems together. Called before any work is done."""
    available = list(available)
    listed = ", ".join(available)
    if settings.other_method not in OTHER_METHODS:
        raise UsageError(f"--other-method {settings.other_method}: use {', '.join(OTHER_METHODS)}")
    if settings.stems is not None and settings.two_stems is not None:
        raise UsageError("--stems and --two-stems exclude each other: --stems A,B writes those stems, "
                         "--two-stems A writes A and no_A; give one of them")
    if settings.two_stems is not None:
        stem = settings.two_stems
        if stem not in available:
            raise UsageError(f"--two-stems {stem}: model '{model}' has no stem {stem!r}; its stems are {listed}")
        row = available.index(stem)
        others = tuple(index for index in range(len(available)) if index != row)
        complement = f"no_{stem}"
        if settings.other_method == "none":
            return StemPlan((stem,), (row,))
        if settings.other_method == "add":
            note = f"'{complement}' is the sum of {', '.join(available[index] for index in others)}"
            return StemPlan((stem, complement), (row,), summed=others, notes=(note,))
        note = f"'{complement}' is the mixture minus '{stem}' (at the input rate: the two add up to the mixture)"
        return StemPlan((stem, complement), (row,), minus=0, notes=(note,))
    if settings.stems is None:
        return StemPlan(tuple(available), tuple(range(len(available))))
    wanted = [settings.stems] if isinstance(settings.stems, str) else list(settings.stems)
    shown = ",".join(wanted)
    if not wanted:
        raise UsageError(f"--stems: name at least one stem; model '{model}' has {listed}")
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise UsageError(f"--stems {shown}: model '{model}' has no stem {', '.join(map(repr, unknown))}; "
                         f"its stems are {listed}")
    rows = tuple(index for index, name in enumerate(available) if name in wanted)
    return StemPlan(tuple(available[index] for index in rows), rows)


class Separator:
    """A separation model, loaded once, with the settings it runs with: sfsep's library entry point.

        from sfsep import Separator
        separator = Separator("htdemucs", device="cpu")       # weights fetched, checked, loaded once
        result = separator.separate_tensor(audio, 8000)      # stems at 8000 Hz, and what was done
        result = separator.separate_file("song.wav", out="separated")

    `model` is a name or alias from models.toml (`Separator.models()` lists them) or a ModelSpec;
    None means the default model, or, with `config`, the model that config describes. `weights`
    runs a local checkpoint instead of the published one; `config` (an MSST-style YAML path, or
    its dict) replaces the spec's architecture, stems and chunking; `offline` (or SFSEP_OFFLINE=1)
    never uses the network; `progress` shows download bars (None: when on a terminal).
    `resampler`, `settings` and any further keyword (a `Settings` field such as sigma, seed,
    chunk_seconds, shifts, gate_db) set how it runs; each call may override them.

    For internal callers that already hold the built modules, `Separator(spec, modules=[...],
    contract=...)` wraps them without loading anything. Models with a trained rate are built
    once; models that run at any rate (the classical ones) are built for each input rate they
    meet, since their filters are set in Hz. `contract(rate)` says how the model is run there.
    """

    def __init__(self, model: str | ModelSpec | None = DEFAULT_MODEL, *, device: str | torch.device = "auto",
                 resampler: str | None = None, weights: str | os.PathLike | None = None,
                 config: str | os.PathLike | dict | None = None, offline: bool = False,
                 progress: bool | None = None, settings: Settings | None = None,
                 modules: list[torch.nn.Module] | None = None, contract: RunContract | None = None,
                 **options: Any):
        overrides = dict(options, **({"resampler": resampler} if resampler is not None else {}))
        if settings is not None and str(device) == "auto":
            device = settings.device
        self.settings: Settings = replace(settings or Settings(), device=str(device), **overrides)
        if modules is None:
            spec, modules, contract = _load(model, weights=weights, offline=offline, config=config, progress=progress)
        else:
            spec = model if isinstance(model, ModelSpec) else get_spec(model or DEFAULT_MODEL)
        plan_stems(model_stem_names(spec), self.settings, spec.name)  # a selection the model cannot give
        self.spec: ModelSpec = spec
        self.device: torch.device = resolve_device(device)
        self._modules_by_rate: dict[int | None, list[torch.nn.Module]] = {}
        self._contracts: dict[int | None, RunContract] = {}
        self._identity: dict | None = None
        if modules:
            self._modules_by_rate[spec.trained_rate] = [m.to(self.device).eval() for m in modules]
            self._contracts[spec.trained_rate] = contract or run_contract(spec, modules[0])
        log.debug("model %s (%s) ready on %s", spec.name, spec.family, self.device)

    @staticmethod
    def models() -> list[dict[str, Any]]:
        """What sfsep knows about every model in models.toml: name, aliases, family, stems,
        trained rate, weights (size, sources, whether cached), chunking, license, citation.
        Reads no weights and uses no network."""
        from .catalog import model_rows

        return model_rows()

    def _settings(self, overrides: dict[str, Any]) -> Settings:
        if not overrides:
            return self.settings
        settings = replace(self.settings, **overrides)
        plan_stems(self.stem_names, settings, self.spec.name)
        return settings

    def separate_tensor(self, wav: torch.Tensor, rate: int, *, progress: ProgressCallback | None = None,
                        **overrides: Any) -> "Separation":
        """Separate `wav` ((channels, samples) or (samples,), mono or stereo) recorded at `rate` Hz.

        Returns a Separation: `.stems` maps each stem name to a (channels, samples) tensor at
        `rate` with the input's length; `.strategy`, `.reason`, `.input_rate`, `.model_rate`
        and `.notes` say what was done. `overrides` are Settings fields for this call only."""
        return separate(wav, rate, self, settings=self._settings(overrides), progress=progress)

    def separate_file(self, path: str | os.PathLike, out: str | os.PathLike = "separated", *,
                      filename: str = "{track}/{stem}.{ext}", format: str = "wav", bits: int | None = None,
                      bitrate: int | None = None, quality: float | None = None, clip: str = "clamp",
                      overwrite: bool = False, downmix: bool = False, output: "OutputOptions | None" = None,
                      track: str | None = None, progress: ProgressCallback | None = None,
                      **overrides: Any) -> "FileResult":
        """Separate an audio file, streamed in bounded memory, into `out/<model>/<track>/<stem>.<ext>`
        (the `filename` template below `out/<model>`), at the file's own rate (`format`, `bits`,
        `bitrate`, `quality` as in OutputOptions). Existing stems are
        skipped unless `overwrite`; nothing half-written is ever left. Returns a FileResult (its
        `status` is "done" or "skipped"); errors about the file raise AudioError naming it.
        `output` (an OutputOptions, whose `out` is the folder the template fills) replaces the
        output keywords; `overrides` are Settings fields for this call only."""
        if output is None:
            output = OutputOptions(out=Path(out) / self.spec.name, filename=filename, format=format, bits=bits,
                                   bitrate=bitrate, quality=quality, clip=clip, overwrite=overwrite, downmix=downmix)
        return separate_file(path, self, output=output, settings=self._settings(overrides), progress=progress,
                             track=track)

    def separate_files(self, paths: Iterable[str | os.PathLike], out: str | os.PathLike = "separated", *,
                       jobs: int = 1, **output: Any) -> "RunReport":
        """Separate several files like `separate_file` (output keywords alike), `jobs` at a time.
        A file that fails does not stop the others: the RunReport holds one FileResult per file
        (status "done", "skipped" or "failed" with its `error`), in the given order."""
        from .runs import separate_files

        return separate_files(list(paths), self, OutputOptions(out=Path(out), **output), self.settings, jobs=jobs,
                              strict=False)

    def on_device(self, device: str | torch.device) -> "Separator":
        """This separator with its model on `device` ("auto" is resolved here, where it will run):
        what a worker process does with a separator loaded elsewhere (the Ray engine loads it on
        the driver's CPU and ships it to its workers). The modules are moved, not copied; the
        identity (`identity()`) stays the same."""
        import copy

        moved = copy.copy(self)
        moved.device = resolve_device(device)
        moved.settings = replace(self.settings, device=str(device))
        moved._modules_by_rate = {key: [module.to(moved.device) for module in modules]
                                  for key, modules in self._modules_by_rate.items()}
        moved._contracts = dict(self._contracts)
        return moved

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def stem_names(self) -> list[str]:
        """The stems a run returns, in order: the model's, then its residual stem if any."""
        return model_stem_names(self.spec)

    def _key(self, model_rate: int) -> int | None:
        return model_rate if self.spec.any_rate else self.spec.trained_rate

    def modules(self, model_rate: int) -> list[torch.nn.Module]:
        key = self._key(model_rate)
        if key not in self._modules_by_rate:
            if not self.spec.any_rate:
                raise ModelError(f"model '{self.spec.name}' has no weights loaded")
            config = self.spec.config_copy()
            config["sample_rate"] = model_rate
            module = build_model(self.spec.family, config).to(self.device)
            self._modules_by_rate[key] = [module]
            self._contracts[key] = run_contract(self.spec, module)
        return self._modules_by_rate[key]

    def contract(self, model_rate: int, settings: Settings | None = None) -> RunContract:
        """The run-time contract at `model_rate`, with --chunk-seconds, --overlap and
        --batch-size applied (checked against what the model allows)."""
        self.modules(model_rate)
        contract = self._contracts[self._key(model_rate)]
        if settings is None:
            return contract
        name = self.spec.name
        if contract.style == "bsrnn" and (settings.chunk_seconds is not None or settings.overlap is not None):
            raise UsageError(f"model '{name}' runs with its reference chunking; "
                             f"--chunk-seconds and --overlap do not apply to it")
        if settings.chunk_seconds is not None:
            segment = max(1, round(settings.chunk_seconds * model_rate))
            if contract.padded_length is not None and segment > contract.padded_length:
                raise UsageError(f"--chunk-seconds: model '{name}' takes at most "
                                 f"{contract.padded_length / model_rate:.2f} s per chunk")
            contract = replace(contract, segment=segment)
        if settings.overlap is not None:
            if contract.style in ("msst", "msst_demucs"):
                contract = replace(contract, style="fade")  # a fractional --overlap: sfsep's cross-fade
            contract = replace(contract, overlap=settings.overlap)
        if settings.batch_size is not None:
            contract = replace(contract, batch_size=settings.batch_size)
        return contract

    def identity(self) -> dict:
        """What this separator is, for keying stored results: its name, a sha256 of its spec
        (architecture config, stems, rates, chunking: everything models.toml or --config says) and
        a sha256 of its loaded weights (every tensor of every module's state, with its name,
        dtype and shape), so that other weights under the same name never pass for these. The
        weights are hashed once (a 900 MB checkpoint takes about two seconds); a model with no
        weights (the classical ones) has none."""
        if self._identity is None:
            import hashlib
            import json
            from dataclasses import asdict

            spec_text = json.dumps(asdict(self.spec), sort_keys=True, default=str)
            weights = None
            loaded = self._modules_by_rate.get(self.spec.trained_rate) if not self.spec.any_rate else None
            if loaded:
                digest = hashlib.sha256()
                for module in loaded:
                    for key, tensor in sorted(module.state_dict().items()):
                        value = tensor.detach().to("cpu").contiguous()
                        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
                        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
                weights = digest.hexdigest()
            self._identity = {"name": self.spec.name,
                              "spec_sha256": hashlib.sha256(spec_text.encode()).hexdigest(),
                              "weights_sha256": weights}
        return dict(self._identity)

    def model_function(self, model_rate: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """(batch, channels, n) -> (batch, stems, channels, n): the model, or the plain mean of
        several checkpoints given without bag weights."""
        modules = self.modules(model_rate)
        if len(modules) == 1:
            return modules[0]
        return lambda batch: torch.stack([module(batch) for module in modules]).mean(0)


class _WeightedBag(torch.nn.Module):
    """A bag of checkpoints as one module: stem k is the weighted mean over the models of their
    stem k (demucs' bag weights, e.g. htdemucs_ft's identity: each model gives one stem). The
    mean is linear, so running it inside each chunk equals demucs' model-by-model run."""

    def __init__(self, members: list[torch.nn.Module], weights):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.weights = weights

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        from .models.demucs import average_bag

        return average_bag([member(mix) for member in self.members], self.weights)


@dataclass(frozen=True)
class ModelChoice:
    """Which model to load and how, before loading it: `spec()` resolves the name (and a --config)
    and raises the usage errors (an unknown name, --weights without --model) at once; `load()`
    builds the Separator (weights fetched, checked and loaded). `model` None: the default model,
    or with `config` the model it describes."""

    model: str | None = None
    device: str = "auto"
    weights: Path | None = None
    config: Path | None = None
    offline: bool = False
    progress: bool | None = None

    def spec(self) -> ModelSpec:
        """The spec to load (before any --config is applied to it); UsageError for a bad choice."""
        return _spec_to_load(self.model, self.config, self.weights)[0]

    @property
    def name(self) -> str:
        """The model's name: its output folder's name."""
        return self.spec().name

    def check(self, settings: Settings) -> None:
        """A stem selection this model cannot give, before its weights are loaded (with --weights
        or --config the checkpoint may name other stems: then the Separator checks it once loaded)."""
        if self.config is None and self.weights is None:
            spec = self.spec()
            plan_stems(model_stem_names(spec), settings, spec.name)

    def load(self, **settings: Any) -> Separator:
        """The Separator (weights fetched, checked and loaded); `settings` are Settings fields."""
        return Separator(self.model, device=self.device, weights=self.weights, config=self.config,
                         offline=self.offline, progress=self.progress, **settings)


def load_separator(model: str | ModelSpec | None = DEFAULT_MODEL, *, device: str = "auto",
                   weights: str | os.PathLike | None = None, offline: bool = False,
                   config: str | os.PathLike | dict | None = None, progress: bool | None = None) -> Separator:
    """`Separator(model, device=..., weights=..., offline=..., config=..., progress=...)`."""
    return Separator(model, device=device, weights=weights, offline=offline, config=config, progress=progress)


def _spec_to_load(model: str | ModelSpec | None, config, weights) -> tuple[ModelSpec, Any, bool]:
    """The spec to run, the config still to apply to it, and whether it is the default model."""
    from .checkpoint import load_yaml_config
    from .registry import spec_from_config

    if model is None and config is not None:
        if weights is None:
            raise UsageError(f"--config {config}: also pass --weights PATH (or --model NAME of a published model)")
        data = config if isinstance(config, dict) else load_yaml_config(config)
        name = Path(config).stem if not isinstance(config, dict) else "config"
        return spec_from_config(data, name=name, source=f"--config {config}"), None, False
    if model is None and weights is not None:
        raise UsageError(f"--weights {weights}: also pass --model NAME (a model of the checkpoint's family) "
                         f"or --config PATH (its MSST config)")
    spec = get_spec(model) if isinstance(model, str) else model or get_spec(DEFAULT_MODEL)
    return spec, config, model is None


def _load(model: str | ModelSpec | None, *, weights: str | os.PathLike | None, offline: bool,
          config: str | os.PathLike | dict | None, progress: bool | None
          ) -> tuple[ModelSpec, list[torch.nn.Module], RunContract | None]:
    """The spec, the loaded modules and their contract (None: the modules' own) of a model.

    Weights come from `weights` (a local checkpoint file) or from the model's sources in
    models.toml through `sfsep.hub` (cache, download, checksum; never the network when
    `offline` or SFSEP_OFFLINE=1). `config` replaces the spec's architecture config, stems,
    rate and chunking. Checkpoints are read with `sfsep.checkpoint` (no code in them runs) and
    loaded strictly. Models that run at any rate have no weights: their modules are built later,
    for each rate."""
    from . import checkpoint, hub
    from .errors import WeightsError
    from .models import builder, checkpoint_config, limits
    from .registry import spec_from_config

    spec, config, default = _spec_to_load(model, config, weights)
    if config is not None:
        if spec.any_rate:
            raise UsageError(f"--config: model '{spec.name}' is a built-in separator and takes no config")
        data = config if isinstance(config, dict) else checkpoint.load_yaml_config(config)
        spec = spec_from_config(data, name=spec.name, base=spec, source=f"--config {config}"
                                if not isinstance(config, dict) else "config")
    if spec.any_rate:
        if weights is not None:
            raise UsageError(f"--weights: model '{spec.name}' has no weights (it is a built-in separator)")
        return spec, [], None
    try:
        builder(spec.family)
    except ModelError as exc:
        raise ModelError(
            f"model '{spec.name}': its architecture '{spec.family}' is not available in this version of "
            f"sfsep ({exc}); use another model (`sfsep models` shows which are ready) or --model classic"
        ) from exc
    if not _registry_own(spec):  # a user's config: refused before anything of its size is allocated
        limits.check_fields(spec.family, spec.config, spec.config_source or f"model '{spec.name}'")
        limits.check_fits(spec, spec.config_source or f"model '{spec.name}'")
    if weights is not None:
        paths = [Path(weights)]
        if not paths[0].is_file():
            raise UsageError(f"--weights {weights}: no such file")
    else:
        try:
            paths = hub.fetch_model(spec, offline=offline, progress=progress)
        except WeightsError as exc:
            if not default:
                raise
            raise WeightsError(f"{exc} ({spec.name} is the default model; pass --model to choose another)") from exc

    modules = []
    stems = spec.stems
    for path in paths:
        log.debug("loading %s", path)
        loaded = checkpoint.load_checkpoint(path)
        # A checkpoint that records how it was built (a demucs package's kwargs) is authoritative.
        model_config, own_stems = checkpoint_config(spec, loaded.kwargs)
        if model_config != spec.config:  # the constructor kwargs a package records
            # Each field's type and range, also for a downloaded file (a Hub export has no published
            # digest); the memory estimate, which costs seconds, for a user's --weights only.
            limits.check_fields(spec.family, model_config, f"{path} (its recorded kwargs)")
            if weights is not None:
                limits.check_fits(replace(spec, config=model_config), f"{path} (its recorded kwargs)")
        stems = own_stems or stems
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
        contract = run_contract(spec, modules[0])
        return spec, [_WeightedBag(modules, bag_weights)], contract
    return spec, modules, None


def _registry_own(spec: ModelSpec) -> bool:
    """True for a spec exactly as models.toml states it (its config is the published one)."""
    try:
        return get_spec(spec.name) == spec
    except ModelError:
        return False


@dataclass(frozen=True)
class Mixture:
    """A mixture to separate, readable as many times as the flow needs: `blocks()` returns a
    fresh iterator of float32 (channels, n) blocks, `length` samples in all, at `rate`."""

    blocks: Callable[[], Iterable[torch.Tensor]]
    length: int
    rate: int
    channels: int

    @classmethod
    def of_tensor(cls, audio: torch.Tensor, rate: int, block: int = audio_io.BLOCK_FRAMES) -> "Mixture":
        audio = audio.float()
        return cls(lambda: (audio[:, first : first + block] for first in range(0, audio.shape[-1], block)),
                   audio.shape[-1], rate, audio.shape[0])


def _stereo(blocks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Mono is separated as dual mono (and written back as mono)."""
    for block in blocks:
        yield block.expand(2, -1) if block.shape[0] == 1 else block


class _Aligned:
    """Takes exactly n samples at a time from a stream of blocks of any sizes."""

    def __init__(self, blocks: Iterable[torch.Tensor]):
        self._blocks = iter(blocks)
        self._held: list[torch.Tensor] = []
        self._count = 0

    def take(self, count: int) -> torch.Tensor:
        while self._count < count:
            block = next(self._blocks, None)
            if block is None:
                raise RuntimeError(f"stream ended {count - self._count} samples early")
            self._held.append(block)
            self._count += block.shape[-1]
        joined = torch.cat(self._held, dim=-1) if len(self._held) > 1 else self._held[0]
        taken, rest = joined[..., :count], joined[..., count:]
        self._held, self._count = ([rest] if rest.shape[-1] else []), rest.shape[-1]
        return taken


def _exact_length(blocks: Iterable[torch.Tensor], length: int) -> Iterator[torch.Tensor]:
    """The first `length` samples of a stream, zero-padded at the end if it is shorter."""
    given = 0
    last = None
    for block in blocks:
        last = block
        keep = min(block.shape[-1], length - given)
        if keep > 0:
            yield block[..., :keep]
            given += keep
    if given < length and last is not None:
        yield last.new_zeros(*last.shape[:-1], length - given)


def _noise_blocks(seed: int, channels: int, length: int) -> Iterator[torch.Tensor]:
    """White Gaussian noise for the "noise" resampler, drawn block by block so that a stream
    and a whole signal get the same draws: fixed blocks of NOISE_BLOCK samples from a generator
    seeded by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    for first in range(0, length, NOISE_BLOCK):
        yield torch.randn(channels, min(NOISE_BLOCK, length - first), generator=generator)


NOISE_BLOCK = 1 << 16


class _Flow:
    """One separation of one mixture: the choices made once (strategy, kernel, contract, shifts,
    statistics), and the passes that stream it."""

    def __init__(self, separator: Separator, mixture: Mixture, settings: Settings):
        spec = separator.spec
        self.separator, self.mixture, self.settings = separator, mixture, settings
        rate = mixture.rate
        self.plan = plan_stems(separator.stem_names, settings, spec.name)  # before any work
        self.model_rate = spec.model_rate(rate)
        self.strategy, self.reason = _pick_strategy(settings.resampler, rate, self.model_rate)
        generator = torch.Generator().manual_seed(settings.seed) if settings.seed is not None else None
        self.kernel = self._kernel(generator)  # one draw per file for the random kernels
        self.model_length = (kernel_geometry(rate, self.model_rate).output_length(mixture.length)
                             if rate != self.model_rate else mixture.length)
        self.noise_seed, self.noise_scale = None, 0.0
        if self.strategy == "noise":
            self.noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            self.noise_scale = self._noise_scale()
        self.contract = separator.contract(self.model_rate, settings)
        if settings.chunk_seconds is not None and self.contract.segment is not None:
            # The command line's chunk length gets the check a config's chunk_size gets, before
            # anything is sized by it. A model that takes any length runs a signal shorter than
            # one chunk as it is, so its chunk is never longer than the signal.
            from .models.limits import check_chunk

            chunk = self.contract.segment
            if self.contract.any_length and self.contract.style == "fade":
                chunk = min(chunk, self.model_length + (self.model_rate // 2 if settings.shifts > 0 else 0))
            check_chunk(chunk, len(separator.stem_names), f"--chunk-seconds {settings.chunk_seconds:g}")
        self.normalization = None
        if self.contract.normalize:
            statistics = MixtureStatistics()
            for block in self.model_rate_blocks():
                statistics.update(block)
            self.normalization = statistics.normalization(self.contract.normalize)
        max_shift = self.model_rate // 2
        self.delays = [max_shift - int(torch.randint(0, max_shift + 1, (1,), generator=generator))
                       for _ in range(settings.shifts)] if settings.shifts > 0 else [0]
        self.total_chunks = sum(count_chunks(self.contract, self.model_length + delay) for delay in self.delays)

    def _kernel(self, generator: torch.Generator | None) -> torch.Tensor | None:
        rate, model_rate, settings = self.mixture.rate, self.model_rate, self.settings
        if self.strategy == "none":
            return None
        if self.strategy == "noisy":
            return noisy_kernel(rate, model_rate, sigma=settings.sigma, generator=generator)
        if self.strategy == "trainable":  # the kernel `sfsep train-kernel` trained for this model and rate
            from .resample.trainable import load_trained_kernel

            learned = load_trained_kernel(self.separator.spec.name, rate)
            with torch.no_grad():
                return learned.matrix(rate, model_rate).detach().float()
        return cached_conventional_kernel(rate, model_rate, torch.float32, torch.device("cpu"))

    def _resampled(self) -> Iterator[torch.Tensor]:
        resampler = StreamResampler(self.kernel, self.mixture.rate, self.model_rate)
        for block in _stereo(self.mixture.blocks()):
            yield resampler.push(block)
        if not resampler.passthrough:
            yield resampler.finish()

    def _noise_scale(self) -> float:
        """The gain that puts the noise exactly `snr_db` below the upsampled signal (as a whole)."""
        signal = sum(float(block.double().pow(2).sum()) for block in self._resampled())
        noise = sum(float(block.double().pow(2).sum())
                    for block in _noise_blocks(self.noise_seed, 2, self.model_length))
        return (signal / (max(noise, 1e-300) * 10.0 ** (self.settings.snr_db / 10.0))) ** 0.5

    def model_rate_blocks(self) -> Iterator[torch.Tensor]:
        """The mixture at the model rate (stereo), as the model's input is made from it."""
        if self.noise_seed is None:
            yield from self._resampled()
            return
        noise = _Aligned(_noise_blocks(self.noise_seed, 2, self.model_length))
        for block in self._resampled():
            yield block + self.noise_scale * noise.take(block.shape[-1])

    def _model_stems(self, progress: ProgressCallback | None) -> Iterator[torch.Tensor]:
        """Stems (S, 2, n) at the model rate, shift-averaged and denormalized."""
        done = 0

        def counted(count: int) -> None:
            nonlocal done
            done += count
            if progress is not None:
                progress(done, self.total_chunks)

        if progress is not None:  # the whole file's chunk count is known before the first one runs
            progress(0, self.total_chunks)
        model = self.separator.model_function(self.model_rate)
        mean, scale = self.normalization or (0.0, 1.0)

        def one_run(delay: int) -> Iterator[torch.Tensor]:
            blocks: Iterable[torch.Tensor] = self.model_rate_blocks()
            if self.normalization is not None:
                blocks = ((block - mean) / scale for block in blocks)
            if delay:
                blocks = itertools.chain([torch.zeros(2, delay)], blocks)
            out = run_chunks(model, blocks, self.model_length + delay, self.contract,
                             device=self.separator.device, precision=self.settings.precision, on_chunks=counted)
            return _skip(out, delay)

        runs = [one_run(delay) for delay in self.delays]
        others = [_Aligned(run) for run in runs[1:]]
        for block in runs[0]:
            total = block
            for other in others:
                total = total + other.take(block.shape[-1])
            if len(runs) > 1:
                total = total / len(runs)
            if self.normalization is not None:
                total = total * scale + mean
            yield total

    def stems(self, progress: ProgressCallback | None = None) -> Iterator[torch.Tensor]:
        """The selected stems (plan.names, channels of the input, n) at the input rate, block by block."""
        rate, length = self.mixture.rate, self.mixture.length
        predicted = len(self.separator.spec.stems)
        stems: Iterator[torch.Tensor] = self._checked(self._model_stems(progress), predicted)
        if self.contract.residual_stem and any(row >= predicted for row in self.plan.rows + self.plan.summed):
            stems = _with_mixture_minus(stems, self.model_rate_blocks(), range(predicted))
        stems = (self.plan.pick(block) for block in stems)  # what is not selected is not brought down
        if self.model_rate != rate:  # every selected stem goes back to the input rate in one stream
            down = StreamResampler(cached_conventional_kernel(self.model_rate, rate, torch.float32,
                                                              torch.device("cpu")), self.model_rate, rate)
            stems = itertools.chain((down.push(block) for block in stems), _lazy(down.finish))
        stems = _exact_length(stems, length)
        if self.settings.gate_db is not None:
            gate = GateStream(rate, self.settings.gate_db, length)
            at_input_rate = _Aligned(_stereo(self.mixture.blocks()))
            stems = itertools.chain((gate.push(block, at_input_rate.take(block.shape[-1])) for block in stems),
                                    _lazy(gate.finish))
        stems = (block.mean(1, keepdim=True) if self.mixture.channels == 1 else block
                 for block in stems if block.shape[-1])
        if self.plan.minus is not None:  # --other-method minus: the mixture as read, minus the stem as returned
            stems = _with_mixture_minus(stems, self.mixture.blocks(), (self.plan.minus,))
        yield from stems

    def _checked(self, stems: Iterator[torch.Tensor], expected: int) -> Iterator[torch.Tensor]:
        for block in stems:
            if block.shape[0] != expected:
                raise ModelError(f"model '{self.separator.spec.name}' returned {block.shape[0]} stems, "
                                 f"its spec lists {expected}")
            yield block


def _with_mixture_minus(stems: Iterable[torch.Tensor], mixture: Iterable[torch.Tensor],
                        rows: Iterable[int]) -> Iterator[torch.Tensor]:
    """Each (S, channels, n) block of `stems` with one more stem: the mixture minus the sum of
    stems `rows`, the mixture's blocks taken in step with the stems'. The one way sfsep makes a
    stem from the mixture: the residual stem at the model rate, --other-method minus at the
    input rate (each stream sample-aligned with its mixture)."""
    aligned, rows = _Aligned(mixture), list(rows)
    for block in stems:
        rest = aligned.take(block.shape[-1]) if block.shape[-1] else block[0]
        yield torch.cat([block, (rest - block[rows].sum(0))[None]])


def _skip(blocks: Iterable[torch.Tensor], count: int) -> Iterator[torch.Tensor]:
    """A stream without its first `count` samples."""
    for block in blocks:
        if count >= block.shape[-1]:
            count -= block.shape[-1]
            continue
        yield block[..., count:]
        count = 0


def _lazy(make: Callable[[], torch.Tensor]) -> Iterator[torch.Tensor]:
    """One block, computed only when the stream gets there (a resampler's finish())."""
    yield make()


def _notes(separator: Separator, plan: StemPlan) -> list[str]:
    """How the returned stems that the model does not predict itself were made."""
    residual, predicted = separator.spec.residual_stem, len(separator.spec.stems)
    notes = []
    if residual and any(row >= predicted for row in plan.rows + plan.summed):
        notes.append(f"'{residual}' is the mixture minus {', '.join(separator.spec.stems)} "
                     f"(the model predicts only those)")
    return notes + list(plan.notes)


def _separator(model: str | ModelSpec | Separator, settings: Settings | None) -> Separator:
    """`model` as a Separator; a stem selection the model cannot give fails before its weights load."""
    if isinstance(model, Separator):
        return model
    spec = get_spec(model) if isinstance(model, str) else model
    if settings is not None:
        plan_stems(model_stem_names(spec), settings, spec.name)
    return Separator(spec, device=settings.device if settings else "auto")


def separate(
    audio: torch.Tensor,
    rate: int,
    model: str | ModelSpec | Separator,
    resampler: str | None = None,
    *,
    settings: Settings | None = None,
    progress: ProgressCallback | None = None,
) -> Separation:
    """Separate `audio` (channels, samples) at `rate`; stems come back at `rate` with the input's
    channel count and length. `settings` defaults to the Separator's own; `resampler` overrides
    its `resampler`. The same flow as `separate_file`, on a tensor held in memory; `settings`
    selects the stems returned (`Settings.stems`, `two_stems`, `other_method`)."""
    separator = _separator(model, settings)
    settings = settings or separator.settings
    if resampler is not None:
        settings = replace(settings, resampler=resampler)
    if audio.dim() == 1:
        audio = audio.unsqueeze(0)
    if audio.dim() != 2 or audio.shape[-1] == 0:
        raise AudioError(f"expected (channels, samples) audio, got shape {tuple(audio.shape)}")
    if audio.shape[0] > 2:
        raise AudioError(f"{audio.shape[0]}-channel audio: sfsep separates mono or stereo (fold it down first)")
    flow = _Flow(separator, Mixture.of_tensor(audio, rate, block=max(1, audio.shape[-1])), settings)
    joined = torch.cat(list(flow.stems(progress)), dim=-1)
    stems = dict(zip(flow.plan.names, joined))
    return Separation(stems, rate, flow.model_rate, flow.strategy, flow.reason, _notes(separator, flow.plan))


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
    """Where and how stems are written: `out` is the folder the `filename` template fills
    (`Separator.separate_file` puts `out/<model>` here). `format` wav, flac, mp3, ogg or opus;
    `bits` 16, 24 or 32 for wav and flac (None: 16), never for the lossy formats; `bitrate` kbps
    for mp3 (None: the highest the rate allows); `quality` 0 to 10 for ogg and opus (None: the
    encoder's default), see `audio.encoder_options`. A format that cannot hold the input's rate
    (mp3, opus) gets the stems at the nearest rate it holds (`audio.writable_rate`), with a note.
    `clip`: what to do with samples beyond full scale; `overwrite` existing stems; `downmix`
    inputs with more than two channels to stereo. Checked when made (UsageError)."""

    out: Path = Path("separated")
    filename: str = "{track}/{stem}.{ext}"
    format: str = "wav"
    bits: int | None = None
    clip: str = "clamp"
    overwrite: bool = False
    downmix: bool = False
    bitrate: int | None = None
    quality: float | None = None

    def __post_init__(self) -> None:
        audio_io.check_encoding(self.format, bits=self.bits, bitrate=self.bitrate, quality=self.quality)
        audio_io.check_template(self.filename, ext=self.format)
        if self.clip not in audio_io.CLIP_MODES:
            raise UsageError(f"--clip {self.clip}: use one of {', '.join(audio_io.CLIP_MODES)}")


@dataclass
class FileResult:
    """What became of one input file: `status` "done" (its stems are `outputs`), "skipped"
    (`notes` say why; `busy` when another run was writing them) or "failed" (`error`, from
    `separate_files`); the rates, the resampler and why it was chosen, the input's bandwidth."""

    path: Path
    status: str  # "done" | "skipped" | "failed"
    input_rate: int = 0
    model_rate: int = 0
    strategy: str = ""
    reason: str = ""
    bandwidth_hz: float = 0.0
    outputs: list[Path] = field(default_factory=list)
    stems: list[str] = field(default_factory=list)  # the stems written, in the order of `outputs`
    clipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    busy: bool = False  # skipped because another run was writing the same stems
    error: str = ""  # why it failed

    def summary(self) -> list[str]:
        """A done file in words: its rate and bandwidth, the model's rate, the resampler and why,
        where the stems went and which; then a line per stem with clipped samples and per note."""
        folder = os.path.commonpath([str(p.parent) for p in self.outputs]) if self.outputs else ""
        return ([f"{self.path}: {self.input_rate} Hz (bandwidth {self.bandwidth_hz / 1000:.1f} kHz) -> model at "
                 f"{self.model_rate} Hz, resampler {self.strategy} ({self.reason}) -> {folder} "
                 f"({', '.join(self.stems)})"]
                + [f"  {stem}: {count} samples were beyond full scale (handled by --clip)"
                   for stem, count in self.clipped.items()] + [f"  note: {note}" for note in self.notes])


def file_resampler(separator: Separator, settings: Settings, rate: int) -> str:
    """The resampler the flow uses for an input at `rate` (the {resampler} of --filename);
    a ResampleError for --resampler none at another rate than the model's."""
    return _pick_strategy(settings.resampler, rate, separator.spec.model_rate(rate))[0]


def stem_paths(path: Path, separator: Separator, output: OutputOptions, *, track: str | None = None,
               settings: Settings | None = None, resampler: str | None = None) -> dict[str, Path]:
    """Where each stem `settings` selects (all by default) of `path` goes: the --filename template
    filled with the track's name (`track`, by default the file's name without its extension), each
    stem's name and, for a template that names {resampler}, `resampler` (by default the one the
    flow will use for the file, which reads the file's rate)."""
    settings = settings or Settings()
    names = plan_stems(separator.stem_names, settings, separator.spec.name).names
    if resampler is None and "resampler" in audio_io.template_fields(output.filename):
        resampler = file_resampler(separator, settings, audio_io.inspect(path).rate)
    return {
        name: audio_io.output_path(output.filename, out=Path(output.out), model=separator.spec.name,
                                   track=path.stem if track is None else track,
                                   trackext=path.suffix.lstrip("."), stem=name, ext=output.format,
                                   resampler=resampler)
        for name in names
    }


@dataclass
class OutputPlan:
    """The stem paths of every input of one run, and the inputs that must not run."""

    targets: dict[Path, dict[str, Path]] = field(default_factory=dict)
    refused: dict[Path, AudioError] = field(default_factory=dict)


def plan_outputs(inputs: Iterable[tuple[Path, str]], separator: Separator, output: OutputOptions,
                 settings: Settings | None = None) -> OutputPlan:
    """Each (input, track name)'s stem paths (the stems `settings` selects), in the given order. An
    input whose outputs an earlier input already claims (song.wav and song.flac are both the
    track "song"), or whose outputs would replace an input of the run, is refused with an error
    naming both files: within one run nothing is silently skipped or replaced. So is a track
    whose name makes the template leave the output folder, and, with {resampler} in the
    template, a file whose rate cannot be read or suits no resampler. A template or a stem
    selection that cannot work at all raises UsageError."""
    inputs = [(Path(path), track) for path, track in inputs]
    sources = {os.path.realpath(path): path for path, _ in inputs}
    claimed: dict[str, Path] = {}
    plan = OutputPlan()
    names_resampler = "resampler" in audio_io.template_fields(output.filename)
    for path, track in inputs:
        try:
            resampler = None
            if names_resampler:  # the file's own: its rate is read from its header
                try:
                    resampler = file_resampler(separator, settings or Settings(), audio_io.inspect(path).rate)
                except AudioError as exc:  # names the file already
                    plan.refused[path] = exc
                    continue
                except ResampleError as exc:
                    raise AudioError(str(exc)) from exc
            targets = stem_paths(path, separator, output, track=track, settings=settings, resampler=resampler)
        except AudioError as exc:
            plan.refused[path] = AudioError(f"{path}: {exc}")
            continue
        if len({os.path.realpath(target) for target in targets.values()}) < len(targets):
            plan.refused[path] = AudioError(f"{path}: with --filename {output.filename!r} two of its stems would "
                                            f"share a file ({', '.join(map(str, targets.values()))})")
            continue
        for target in targets.values():
            key = os.path.realpath(target)
            if key in claimed:
                plan.refused[path] = AudioError(
                    f"{path}: output collision with {claimed[key]}: both would write {target}; rename one of them "
                    f"or tell them apart in --filename (e.g. '{{track}}.{{trackext}}/{{stem}}.{{ext}}')")
                break
            if key in sources:
                plan.refused[path] = AudioError(
                    f"{path}: output collision with the input {sources[key]}: its stem {target} would replace it; "
                    f"choose another --out or --filename")
                break
        else:
            plan.targets[path] = targets
            claimed.update({os.path.realpath(target): path for target in targets.values()})
    return plan


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
    output: OutputOptions | None = None,
    settings: Settings | None = None,
    progress: ProgressCallback | None = None,
    block_frames: int = audio_io.BLOCK_FRAMES,
    track: str | None = None,
) -> FileResult:
    """Read `path` block by block, separate it and write its stems; existing outputs are
    skipped unless `output.overwrite`. Memory stays bounded whatever the file's length.
    `track` is the {track} of the --filename template (default: the file's name without
    its extension; `batch` passes the path below its folder).
    Only the stems `settings` selects are computed and written (see `Settings`); the result's
    `stems` and `outputs` list them.
    Errors about the file are AudioError naming it; on any error (and on Ctrl-C) nothing is
    published and no existing stem is touched. While the stems are written the track is locked
    (`audio.TrackLock`): a second run that reaches it meanwhile skips it with a note, and the
    staged files a killed run left for this track are removed before its stems are staged again."""
    started = time.perf_counter()
    path = Path(path)
    separator = _separator(model, settings)
    settings = settings or separator.settings
    output = output or OutputOptions()
    audio_io.check_encoding(output.format, bits=output.bits, bitrate=output.bitrate,  # before any work
                            quality=output.quality)
    info = audio_io.check_input(path, downmix=output.downmix)  # its rate names the {resampler}
    targets = stem_paths(path, separator, output, track=track, settings=settings,  # checks the stem selection
                         resampler=file_resampler(separator, settings, info.rate))
    for target in targets.values():
        too_long = long_name(target)
        if too_long:
            raise AudioError(f"{target}: cannot be written ({too_long}); shorten --out, --filename or the "
                             f"input file's name")
    try:
        existing = [p for p in targets.values() if p.exists()]
    except OSError as exc:
        raise AudioError(f"{exc.filename}: cannot be written ({os_error_reason(exc)})") from exc
    if existing and not output.overwrite:
        return FileResult(path, "skipped", info.rate, notes=[f"{existing[0]} exists (use --overwrite to replace)"])
    for folder in {p.parent for p in targets.values()}:
        check_writable(folder)

    def blocks() -> Iterator[torch.Tensor]:
        return audio_io.read_blocks(path, downmix=output.downmix, block_frames=block_frames, info=info)

    # First pass: the decoded length (a compressed file's header may only estimate it; FFmpeg's
    # frame count is an estimate from the container's duration) and every sample checked for
    # NaN/Inf before anything is written. A truncated file is refused at the end of this pass.
    # The decoded length is what counts from here on.
    length = sum(block.shape[-1] for block in blocks())
    length_note = audio_io.check_length(info, length) if info.reader != "ffmpeg" else None
    info = replace(info, frames=length)
    channels = min(info.channels, 2)
    bandwidth = audio_io.file_bandwidth(info)
    try:
        flow = _Flow(separator, Mixture(blocks, length, info.rate, channels), settings)
    except ModelError as exc:
        if not separator.spec.any_rate:
            raise
        # A model that runs at the input's own rate is built for this file's rate: the file is the cause.
        raise AudioError(f"{path}: model '{separator.name}' cannot separate a file sampled at {info.rate} Hz "
                         f"({exc}); resample the file first") from exc
    log.debug("%s: %d Hz -> %s at %d Hz with resampler %s (%s); %d chunks of %s samples, %s style", path,
              info.rate, separator.name, flow.model_rate, flow.strategy, flow.reason, flow.total_chunks,
              flow.contract.segment, flow.contract.style)
    write_rate = audio_io.writable_rate(output.format, info.rate)
    notes = (_notes(separator, flow.plan) + _format_notes(output, info.rate, write_rate)
             + ([length_note] if length_note else []))
    with audio_io.TrackLock(targets.values()) as lock:  # two runs never write one track at once
        if not lock.held:
            return FileResult(path, "skipped", info.rate, busy=True,
                              notes=[f"another sfsep run is writing its stems in {lock.path.parent} now"])
        existing = [p for p in targets.values() if p.exists()]  # again: a run may have just finished them
        if existing and not output.overwrite:
            return FileResult(path, "skipped", info.rate,
                              notes=[f"{existing[0]} exists (use --overwrite to replace)"])
        for leftover in lock.remove_leftovers():  # a run killed while writing this track (e.g. a Ray worker)
            log.debug("removed %s, left by a run that was killed while writing it", leftover)
        with audio_io.StagedStems(targets, write_rate, channels, bits=output.bits, clip=output.clip,
                                  bitrate=output.bitrate, quality=output.quality) as staged:
            names = flow.plan.names
            stems: Iterator[torch.Tensor] = flow.stems(progress)
            if write_rate != info.rate:  # a format that cannot hold the input's rate: conventional, streamed
                to_format = StreamResampler(cached_conventional_kernel(info.rate, write_rate, torch.float32,
                                                                       torch.device("cpu")), info.rate, write_rate)
                stems = itertools.chain((to_format.push(block) for block in stems), _lazy(to_format.finish))
            for block in stems:
                for name, stem in zip(names, block):
                    staged.write(name, stem)
            reports = staged.publish()
    return FileResult(
        path=path, status="done", input_rate=info.rate, model_rate=flow.model_rate,
        strategy=flow.strategy, reason=flow.reason, bandwidth_hz=bandwidth,
        outputs=[r.path for r in reports], stems=list(flow.plan.names),
        clipped={name: r.clipped_samples for name, r in zip(flow.plan.names, reports) if r.clipped_samples},
        notes=notes, seconds=time.perf_counter() - started,
    )


def _format_notes(output: OutputOptions, input_rate: int, write_rate: int) -> list[str]:
    """What the output format changed: the rate the stems are written at, an mp3 bitrate."""
    notes = []
    if write_rate != input_rate:
        notes.append(f"{output.format} cannot hold {input_rate} Hz: the stems were written at {write_rate} Hz "
                     f"(conventional resampler)")
    if output.format == "mp3" and output.bitrate is not None:
        bitrate = audio_io.mp3_bitrate(write_rate, output.bitrate)
        if bitrate != output.bitrate:
            notes.append(f"mp3 at {write_rate} Hz ({audio_io.mpeg_version(write_rate)}) has no {output.bitrate} "
                         f"kbps: written at {bitrate} kbps")
    return notes


def describe(result: FileResult) -> dict[str, Any]:
    """A plain-data summary of one file's result (the fields of `separate --json` and of each line
    of `batch --json`)."""
    return {
        "file": str(result.path), "status": result.status, "input_rate": result.input_rate,
        "model_rate": result.model_rate, "resampler": result.strategy, "reason": result.reason,
        "bandwidth_hz": round(result.bandwidth_hz, 1), "stems": list(result.stems),
        "outputs": [str(p) for p in result.outputs],
        "clipped_samples": result.clipped, "notes": result.notes, "seconds": round(result.seconds, 3),
        "error": result.error or None,
    }


def describe_input(path: str | os.PathLike, model: str | ModelSpec = DEFAULT_MODEL) -> dict[str, Any]:
    """What `sfsep info` reports about a file: its rate, channels, duration, format, effective
    bandwidth, and the model rate and resampler `auto` would use with `model` (nothing is loaded)."""
    from .resample import choose_strategy

    spec = get_spec(model) if isinstance(model, str) else model
    details = audio_io.inspect(path)
    audio, rate = audio_io.read(path, downmix=True, max_channels=max(2, details.channels))
    model_rate = spec.model_rate(rate)
    strategy, reason = choose_strategy(rate, model_rate)
    return {
        "file": str(path), "rate": rate, "channels": details.channels,
        "duration_s": round(details.duration, 3), "format": details.format, "subtype": details.subtype,
        "bandwidth_hz": round(audio_io.effective_bandwidth(audio, rate), 1), "nyquist_hz": rate / 2,
        "model": spec.name, "model_rate": model_rate, "resampler": strategy, "reason": reason,
    }
