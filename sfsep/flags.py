"""The command line's options, each declared once: shared option types (`Model`, `Sigma`, ...)
and option groups (`ModelFlags`, `TuneFlags`, `RunFlags`, `OutputFlags`, `EngineFlags`,
`TrainFlags`), which `@command` expands into every command that takes them, the way demucs'
`add_model_flags` adds its model flags to each parser. A group maps onto one library object
(`ModelChoice`, `Settings`, `OutputOptions`, `RayEngine`, `TrainSettings`), which checks the values.
"""

from __future__ import annotations

import inspect
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from typer import Argument as Arg, Option as Opt

from .registry import DEFAULT_MODEL

Model = Annotated[Optional[str], Opt("--model", "-n", help=f"Model name or alias (`sfsep models` lists them). "
                                     f"Default: {DEFAULT_MODEL} (needs its weights; `classic` needs none).")]
Sigma = Annotated[float, Opt("--sigma", help="Noisy-kernel noise standard deviation (1e-3: variance 1e-6).")]
Snr = Annotated[float, Opt("--snr", help="SNR in dB of the noise added by --resampler noise.")]
Seed = Annotated[int, Opt("--seed", help="Seed for the random resamplers.")]
Json = Annotated[bool, Opt("--json", help="Print JSON instead of text.")]
Files = Annotated[List[Path], Arg(help="Audio files.", show_default=False)]
Musdb = Annotated[Optional[Path], Opt("--musdb", help="MUSDB18-HQ folder (wav layout). Default: $MUSDB_PATH.")]


@dataclass
class ModelFlags:
    """Which model, where, from which weights (the `ModelChoice` of the library)."""

    model: Model = None
    device: Annotated[str, Opt("--device", "-d", help="auto | cpu | cuda | cuda:N | mps.")] = \
        os.environ.get("SFSEP_DEVICE", "auto")
    offline: Annotated[bool, Opt("--offline", help="Never use the network: weights must be cached (also "
                                                   "SFSEP_OFFLINE=1).")] = False
    weights: Annotated[Optional[Path], Opt("--weights", help="Run a local checkpoint file instead of the model's "
                                                             "published weights.")] = None
    config: Annotated[Optional[Path], Opt("--config", help="An MSST-style YAML config for the checkpoint (replaces "
                                                           "the model's architecture, stems and chunking; the family "
                                                           "is taken from --model or guessed).")] = None

    def choice(self, progress: bool | None = None):
        """The library's ModelChoice (`progress`: download bars; None: when on a terminal)."""
        from .pipeline import ModelChoice

        return ModelChoice(self.model, device=self.device, weights=self.weights, config=self.config,
                           offline=self.offline, progress=progress)


@dataclass
class TuneFlags:
    """How the model runs, and the random resamplers' noise (a `Settings` of the library)."""

    sigma: Sigma = 1e-3
    snr: Snr = 20.0
    chunk_seconds: Annotated[Optional[float], Opt("--chunk-seconds", help="Chunk length in seconds (default: the "
                                                                          "model's).")] = None
    overlap: Annotated[Optional[float], Opt("--overlap", help="Chunk overlap, a fraction (default: the model's).")] = None
    batch_size: Annotated[Optional[int], Opt("--batch-size", help="Chunks per batch (default: the model's).")] = None
    precision: Annotated[str, Opt("--precision", help="fp32 | fp16 | bf16 (autocast; fp16 on CUDA only).")] = "fp32"
    gate_db: Annotated[Optional[float], Opt("--gate-db", help="Silence a stem in 50-ms windows where it is more than "
                                                              "this many dB below the mixture (e.g. -40).")] = None
    shifts: Annotated[int, Opt("--shifts", help="Average over N random time shifts of the input (demucs' option; N "
                                                "times slower).")] = 0

    def settings(self, device: str, **fields):
        """The library's Settings (checked there); `fields` adds others (resampler, seed)."""
        from .pipeline import Settings

        return Settings(sigma=self.sigma, snr_db=self.snr, chunk_seconds=self.chunk_seconds, overlap=self.overlap,
                        batch_size=self.batch_size, device=device, precision=self.precision, gate_db=self.gate_db,
                        shifts=self.shifts, **fields)


@dataclass
class RunFlags(TuneFlags):
    """TuneFlags, and the resampler with its seed (`separate`, `batch`)."""

    resampler: Annotated[str, Opt("--resampler", "-r", help="auto | conventional | noisy | noise | trainable | none. "
                                  "auto: noisy below the model's rate, conventional above, none when equal; "
                                  "trainable: the kernel `sfsep train-kernel` trained.")] = "auto"
    seed: Annotated[Optional[int], Opt("--seed", help="Seed for the random resamplers, to reproduce a run.")] = None
    stems: Annotated[Optional[str], Opt("--stems", help="Write only these stems, e.g. vocals,drums (default: "
                                                        "all).")] = None
    two_stems: Annotated[Optional[str], Opt("--two-stems", help="Write STEM and no_STEM (demucs' option), e.g. "
                                                                "vocals.")] = None
    other_method: Annotated[Optional[str], Opt("--other-method", help="With --two-stems, no_STEM is: add = the other "
                                               "stems summed (default), minus = the mixture minus STEM, none = not "
                                               "written.")] = None

    def settings(self, device: str, **fields):
        from .errors import UsageError

        if self.other_method is not None and self.two_stems is None:
            raise UsageError(f"--other-method {self.other_method}: only applies with --two-stems STEM")
        stems = None if self.stems is None else tuple(name.strip() for name in self.stems.split(",") if name.strip())
        return super().settings(device, resampler=self.resampler, seed=self.seed, stems=stems,
                                two_stems=self.two_stems, other_method=self.other_method or "add", **fields)


@dataclass
class OutputFlags:
    """Where and how the stems are written (an `OutputOptions` of the library)."""

    out: Annotated[Path, Opt("--out", "-o", help="Output folder.")] = Path("separated")
    filename: Annotated[str, Opt("--filename", help="Output path below --out/<model>; fields {model} {track} "
                                                    "{trackext} {stem} {ext} {resampler}.")] = "{track}/{stem}.{ext}"
    fmt: Annotated[str, Opt("--format", help="wav | flac | mp3 | ogg | opus.")] = "wav"
    bits: Annotated[Optional[int], Opt("--bits", help="wav and flac: 16 (default), 24 or 32 (32 = float, wav "
                                                      "only).")] = None
    bitrate: Annotated[Optional[int], Opt("--bitrate", help="mp3: constant bitrate in kbps (default: the most the "
                                                            "rate allows, 320 at 32-48 kHz).")] = None
    quality: Annotated[Optional[float], Opt("--quality", help="ogg and opus: 0 to 10 (ogg: oggenc's -q, default 4; "
                                                              "opus: 6 + 25*Q kbps per channel).")] = None
    clip: Annotated[str, Opt("--clip", help="clamp | rescale | none: samples beyond full scale.")] = "clamp"
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace existing outputs (default: skip the file).")] = False
    downmix: Annotated[bool, Opt("--downmix", help="Fold inputs with more than 2 channels to stereo.")] = False

    def options(self):
        from .pipeline import OutputOptions

        return OutputOptions(out=self.out, filename=self.filename, format=self.fmt, bits=self.bits, clip=self.clip,
                             overwrite=self.overwrite, downmix=self.downmix, bitrate=self.bitrate,
                             quality=self.quality)


ENGINES = ("local", "ray")


@dataclass
class EngineFlags:
    """Where `batch` and `eval` run: on this machine, or on a Ray cluster (`sfsep.ray_engine`)."""

    engine: Annotated[str, Opt("--engine", help="local | ray. ray: on a Ray cluster, one actor task per file (or per "
                                                "eval result) on workers that each load the model once (needs "
                                                "pip install 'sfsep[ray]'); the inputs and --out (or --musdb) must "
                                                "be at the same path on every node.")] = "local"
    address: Annotated[Optional[str], Opt("--address", help="--engine ray: the cluster to join, auto | HOST:PORT | "
                                                            "ray://HOST:PORT (default: a local Ray instance for this "
                                                            "run).")] = None
    workers: Annotated[Optional[int], Opt("--workers", help="--engine ray: Ray workers, each holding the model "
                                                            "(default: as many as the cluster's CPUs hold).")] = None
    cpus_per_worker: Annotated[Optional[float], Opt("--cpus-per-worker", help="--engine ray: CPUs each worker "
                                                                              "requests (default 1).")] = None
    gpus_per_worker: Annotated[Optional[float], Opt("--gpus-per-worker", help="--engine ray: GPUs each worker "
                                                                              "requests (default 0).")] = None

    def choice(self, device: str):
        """None for the local engine, else the library's RayEngine for workers on `device` (Ray
        is imported only here, and its absence is one error naming the extra)."""
        from .errors import UsageError

        if self.engine not in ENGINES:
            raise UsageError(f"--engine {self.engine}: use {' or '.join(ENGINES)}")
        given = [flag for flag, value in (("--address", self.address), ("--workers", self.workers),
                                          ("--cpus-per-worker", self.cpus_per_worker),
                                          ("--gpus-per-worker", self.gpus_per_worker)) if value is not None]
        if self.engine == "local":
            if given:
                raise UsageError(f"{given[0]}: only applies with --engine ray")
            return None
        from .ray_engine import RayEngine, import_ray

        import_ray()  # before anything else is checked or loaded
        engine = RayEngine(address=self.address, workers=self.workers,
                           cpus_per_worker=1.0 if self.cpus_per_worker is None else self.cpus_per_worker,
                           gpus_per_worker=0.0 if self.gpus_per_worker is None else self.gpus_per_worker)
        engine.check_device(device)
        return engine


@dataclass
class TrainFlags:
    """`train-kernel`'s training settings (the fields of the library's `TrainSettings`)."""

    rate: Annotated[int, Opt("--rate", help="Input rate in Hz the kernel upsamples from (e.g. 8000).",
                             show_default=False)] = ...
    epochs: Annotated[int, Opt("--epochs", help="Most epochs.")] = 100
    patience: Annotated[int, Opt("--patience", help="Stop after this many epochs without a better validation "
                                                    "loss.")] = 10
    batch_size: Annotated[int, Opt("--batch-size", help="Segments per batch.")] = 4
    steps_per_epoch: Annotated[int, Opt("--steps-per-epoch", help="Random training batches per epoch.")] = 32
    valid_segments: Annotated[int, Opt("--valid-segments", help="Fixed segments per validation track.")] = 2
    segment_seconds: Annotated[Optional[float], Opt("--segment-seconds", help="Segment length (default: the model's "
                                                                              "chunk).")] = None
    learning_rate: Annotated[float, Opt("--lr", help="Adam learning rate.")] = 1e-3
    lr_decay: Annotated[float, Opt("--lr-decay", help="Learning-rate factor every --decay-every epochs.")] = 0.98
    decay_every: Annotated[int, Opt("--decay-every", help="Epochs between learning-rate decays.")] = 2
    clip_norm: Annotated[float, Opt("--clip-norm", help="Gradient clipping norm.")] = 5.0
    fit_steps: Annotated[int, Opt("--fit-steps", help="Steps fitting the kernel to the windowed sinc first.")] = 3000
    seed: Annotated[int, Opt("--seed", help="Seed for the initial fit and the random segments.")] = 0


_GROUPS = (ModelFlags, TuneFlags, RunFlags, OutputFlags, EngineFlags, TrainFlags)


def command(group: typer.Typer, name: str | None = None):
    """`group.command()`, where a parameter annotated with an option group (ModelFlags, ...) stands
    for all of that group's options and receives them as one object (demucs' add_model_flags)."""

    def wrap(function):
        hints, params, groups = typing.get_type_hints(function, include_extras=True), [], {}
        for param in inspect.signature(function).parameters.values():
            kind = hints.get(param.name)
            if kind in _GROUPS:
                groups[param.name], kind_hints = kind, typing.get_type_hints(kind, include_extras=True)
                params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=kind_hints[f.name],
                                             **({} if f.default is ... else {"default": f.default}))
                           for f in fields(kind)]
            else:
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=kind))

        def run(**values):
            for param_name, kind in groups.items():
                values[param_name] = kind(**{f.name: values.pop(f.name) for f in fields(kind)})
            return function(**values)

        run.__name__, run.__doc__, run.__signature__ = function.__name__, function.__doc__, inspect.Signature(params)
        return group.command(name)(run)

    return wrap
