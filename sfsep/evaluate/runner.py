"""The evaluation loop of `sfsep eval`: MUSDB18-HQ tracks x test rates x resamplers, scored.

Protocol (the README's "Evaluation protocol" section says the same for users)
----------------------------------------------------------------------------
For each selected track, for each test rate r, the mixture and the four references are
brought down from 44.1 kHz to r with the conventional resampler (one deterministic kernel,
so references and mixture see the same filter). The r-Hz mixture then goes through the sfsep
pipeline (`sfsep.pipeline.separate`) once per resampler: the resampler is how the mixture is
brought *up* to the model's trained rate; the stems always come back down conventionally.
When r is the model's rate (always, for a model that runs at any rate), no resampling
happens at all, so every resampler would give the same result: that cell is run once and
labelled "none". The stems are scored against the r-Hz references:

- "bsseval": BSSEval v4 (museval's images metrics, 512-tap filters fitted on the whole track)
  over 1-s windows with a 1-s hop counted in samples at r; per track, the median over frames
  ignoring NaN windows; `sfsep.evaluate.bsseval`.
- "sdr": the whole-signal SDR of the MDX challenges and MSST; "si_sdr": scale-invariant SDR;
  one number per track and target; `sfsep.evaluate.metrics`.

Over tracks, `sfsep.evaluate.report` takes the median (the headline number), the mean and its
standard error of the per-track values.

Targets
-------
A model's stems are matched to MUSDB's sources by name (`musdb_targets`):
- a model with (at least) vocals, drums, bass and other is scored on those four; stems MUSDB
  does not have (guitar, piano) are added to the estimate of "other", which holds them in MUSDB;
- a model with vocals and one more stem (a vocals model whose second stem, predicted or the
  residual mixture - vocals, is everything but the vocals, whatever its name) is scored on
  "vocals" and "accompaniment", the reference of the latter being drums + bass + other, as in
  musdb's accompaniment target. Its second stem is NOT compared with MUSDB's "other";
- otherwise the stems named like MUSDB sources are scored, jointly, against those references.

Files (under the run's folder, normally eval/<model>/)
-----------------------------------------------------
    museval/<resampler>-<rate>/<subset>/<track>.json   framewise BSSEval, museval's TrackStore
    records/<resampler>-<rate>/<subset>/<track>.json   sfsep's record of the cell: settings,
                                                       per-track scores, timings, notes
The record is written last (atomically), so its presence marks a finished cell. A rerun skips
the cells whose record covers the requested metrics, was made from the same data (`TrackData`:
the same dataset folder, and the same contents of the mixture and of the sources behind the
references) by the same sfsep version, and with the same settings as far as that cell depends
on them (`cell_settings`: model, the sha256 of its spec and of its loaded weights, targets, gate,
chunking, precision; sigma only for noisy cells, the SNR only for noise cells, the seed only
for random ones; for trainable cells, the same kernel file content); other cells, and every
cell under `force`, are computed again. Random resamplers get a seed derived from (seed,
track, rate, resampler), so a cell's result does not depend on which other cells ran before.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import torch

from sfsep import __version__
from sfsep.audio import write_text_atomic
from sfsep.errors import ModelError, UsageError
from sfsep.evaluate.bsseval import SilentSourceError, TrackScores, bss_eval_v4
from sfsep.evaluate.metrics import si_sdr, utterance_sdr
from sfsep.evaluate.musdb import MUSDB_RATE, SOURCES, MusdbTrack
from sfsep.pipeline import ModelChoice, Separator, Settings, separate
from sfsep.resample import METHODS, resample

__all__ = [
    "DEFAULT_RATES",
    "DEFAULT_RESAMPLERS",
    "METRICS",
    "RECORD_FORMAT",
    "Cell",
    "CellEngine",
    "CellJob",
    "CellOutcome",
    "CellResult",
    "EvalProgress",
    "EvalRun",
    "TargetMap",
    "TrackAudio",
    "cell_seed",
    "cell_settings",
    "evaluate",
    "musdb_targets",
    "parse_metrics",
    "parse_rates",
    "parse_resamplers",
    "plan_cells",
    "run_settings",
    "settings_summary",
    "trained_kernel_file",
]

#: Test rates of the study (Hz).
DEFAULT_RATES = (8000, 11025, 16000, 22050, 32000, 44100)
#: Resamplers compared by default.
DEFAULT_RESAMPLERS = ("conventional", "noisy")
#: Metric families `--metrics` accepts.
METRICS = ("bsseval", "sdr", "si_sdr")
#: Version tag of the record files (bump when their meaning changes: old records are redone).
RECORD_FORMAT = "sfsep-eval-record/2"
#: Window and hop of the framewise BSSEval, in seconds at the evaluated rate.
WINDOW_SECONDS = 1.0

_RANDOM_RESAMPLERS = ("noisy", "noise")


# ----------------------------------------------------------------------------------------
# Options


def parse_rates(value: str | Sequence[int] | None, *, maximum: int | None = MUSDB_RATE,
                default: tuple[int, ...] | None = DEFAULT_RATES) -> tuple[int, ...]:
    """'8000,16000' (or a sequence) -> sorted unique rates in Hz, each positive and at most
    `maximum` (MUSDB18-HQ's rate by default, since `eval` only brings it down; None: no bound).
    Nothing given: `default`, or a UsageError when there is none. sfsep's one --rates parser."""
    if value is None or (isinstance(value, str) and not value.strip(",  ")):
        if default is None:
            raise UsageError("--rates: give at least one rate (e.g. 8000,16000)")
        return default
    items = [item for item in value.split(",") if item.strip()] if isinstance(value, str) else list(value)
    rates = []
    for item in items:
        text = str(item).strip()
        try:
            rate = int(text)
        except ValueError:
            raise UsageError(f"--rates: {text!r} is not a whole number of Hz (e.g. --rates 8000,16000,44100)")
        if rate <= 0:
            raise UsageError(f"--rates: {rate} Hz is not a sampling rate; give positive whole numbers of Hz")
        if maximum is not None and rate > maximum:
            raise UsageError(f"--rates: {rate} Hz is out of range; MUSDB18-HQ is {maximum} Hz and is only "
                             f"brought down, so rates must be between 1 and {maximum}")
        rates.append(rate)
    return tuple(sorted(set(rates)))


def _trained_kernel_available() -> bool:
    """Whether the resampling package offers a trained ("trainable") kernel."""
    return "trainable" in METHODS


def parse_resamplers(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """'conventional,noisy' or 'all' -> resampler names, in the order given, unique."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_RESAMPLERS
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s) for s in value]
    names: list[str] = []
    usable = [m for m in METHODS if m != "none"]
    for item in items:
        if item == "all":
            expanded = ["conventional", "noisy", "noise"] + (["trainable"] if _trained_kernel_available() else [])
        elif item in usable:
            expanded = [item]
        elif item == "none":
            raise UsageError("--resamplers none: 'none' is used by itself wherever the test rate is the model's "
                             "rate; list the resamplers to compare elsewhere (e.g. conventional,noisy)")
        else:
            raise UsageError(f"--resamplers: unknown resampler {item!r}; use 'all' or some of {', '.join(usable)}")
        names.extend(name for name in expanded if name not in names)
    return tuple(names)


def parse_metrics(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """'bsseval,sdr,si_sdr' -> metric families in METRICS order."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return METRICS
    items = [s.strip().lower().replace("-", "_") for s in value.split(",")] if isinstance(value, str) else list(value)
    for item in items:
        if item not in METRICS:
            raise UsageError(f"--metrics: unknown metric {item!r}; use some of {', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in items)


# ----------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class TargetMap:
    """How a model's stems become MUSDB targets.

    `estimates[target]`: the model stems summed into that target's estimate;
    `references[target]`: the MUSDB sources summed into its reference; `notes`: what a reader
    of the results must know (e.g. that a residual is scored as the accompaniment).
    """

    targets: tuple[str, ...]
    estimates: dict[str, tuple[str, ...]]
    references: dict[str, tuple[str, ...]]
    notes: tuple[str, ...] = ()


def musdb_targets(stems: Sequence[str], residual: str | None = None, model: str = "model") -> TargetMap:
    """Match a model's stems (and its residual stem, if any) to MUSDB targets (module docstring)."""
    names = list(stems) + ([residual] if residual else [])
    notes: list[str] = []
    if set(SOURCES) <= set(names):
        extras = tuple(name for name in names if name not in SOURCES)
        estimates = {source: (source,) for source in SOURCES}
        if extras:
            estimates["other"] = ("other",) + extras
            notes.append(f"{model}'s {', '.join(extras)} stem(s) are added to its 'other' estimate "
                         f"(MUSDB's other holds them)")
        if residual in SOURCES:
            notes.append(f"{model}'s '{residual}' is the mixture minus its other stems")
        return TargetMap(SOURCES, estimates, {source: (source,) for source in SOURCES}, tuple(notes))
    if "vocals" in names and len(names) == 2:
        rest = next(name for name in names if name != "vocals")
        how = "the mixture minus vocals" if rest == residual else "everything but the vocals"
        notes.append(f"{model}'s '{rest}' ({how}) is scored as 'accompaniment' against MUSDB's "
                     f"drums + bass + other, not against MUSDB's 'other'")
        return TargetMap(
            ("vocals", "accompaniment"),
            {"vocals": ("vocals",), "accompaniment": (rest,)},
            {"vocals": ("vocals",), "accompaniment": tuple(s for s in SOURCES if s != "vocals")},
            tuple(notes),
        )
    known = tuple(source for source in SOURCES if source in names)
    if not known:
        raise ModelError(f"model '{model}' has stems {', '.join(names)}, none of which is a MUSDB source "
                         f"({', '.join(SOURCES)}); it cannot be evaluated on MUSDB18-HQ")
    left_out = [name for name in names if name not in known]
    if left_out:
        notes.append(f"{model}'s {', '.join(left_out)} stem(s) have no MUSDB counterpart and are not scored")
    return TargetMap(known, {s: (s,) for s in known}, {s: (s,) for s in known}, tuple(notes))


# ----------------------------------------------------------------------------------------
# Cells


@dataclass(frozen=True)
class Cell:
    """One unit of work: a track at a test rate through one resampler."""

    track: MusdbTrack
    rate: int
    resampler: str  # the strategy the pipeline runs: a METHODS name, "none" at the model's rate

    @property
    def config_name(self) -> str:
        return f"{self.resampler}-{self.rate}"

    def record_path(self, folder: Path) -> Path:
        return folder / "records" / self.config_name / self.track.subset / f"{self.track.name}.json"

    def museval_path(self, folder: Path) -> Path:
        return folder / "museval" / self.config_name / self.track.subset / f"{self.track.name}.json"


def plan_cells(tracks: Sequence[MusdbTrack], rates: Sequence[int], resamplers: Sequence[str],
               trained_rate: int | None, kernel_exists: Callable[[int], bool] | None = None) -> list[Cell]:
    """Cells in run order (track, then rate, then resampler); at the model's rate (every rate
    for a model without a trained rate) the resamplers collapse into one "none" cell.
    "trainable" cells are planned only at rates where `kernel_exists(rate)` is true."""
    cells = []
    for track in tracks:
        for rate in rates:
            if trained_rate is None or rate == trained_rate:
                cells.append(Cell(track, rate, "none"))
                continue
            for name in resamplers:
                if name == "trainable" and not (kernel_exists and kernel_exists(rate)):
                    continue
                cells.append(Cell(track, rate, name))
    return cells


def trained_kernel_file(model: str, rate: int) -> Path | None:
    """The file of the kernel trained for `model` at input rate `rate`, if there is one."""
    try:
        from sfsep.resample.trainable import kernel_path
    except ImportError:
        return None
    path = kernel_path(model, rate)
    return path if path.is_file() else None


def cell_seed(seed: int, cell: Cell) -> int:
    """A seed for the cell's random draws that depends only on (seed, track, rate, resampler)."""
    key = f"{seed}/{cell.track.subset}/{cell.track.name}/{cell.rate}/{cell.resampler}"
    return zlib.crc32(key.encode("utf-8"))


# ----------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class EvalProgress:
    """What the progress callback receives after each cell."""

    done: int  # cells finished or skipped so far
    total: int
    cell: Cell
    status: str  # "done" | "skipped" | "started"


@dataclass
class CellResult:
    cell: Cell
    status: str  # "done" | "skipped"
    record: dict


@dataclass
class EvalRun:
    """Everything `evaluate` did: the cells' records (done or reused) and the run's facts."""

    folder: Path
    model: str
    subset: str
    rates: tuple[int, ...]
    resamplers: tuple[str, ...]
    metrics: tuple[str, ...]
    targets: TargetMap
    settings: dict
    results: list[CellResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def computed(self) -> int:
        return sum(1 for r in self.results if r.status == "done")

    @property
    def skipped(self) -> int:
        return sum(1 for r in self.results if r.status == "skipped")

    @property
    def records(self) -> list[dict]:
        return [r.record for r in self.results]


def run_settings(model_id: str, model_name: str, settings: Settings, seed: int, targets: TargetMap,
                 identity: dict | None = None) -> dict:
    """What a cell's result depends on (besides the track's data, rate and resampler): a record
    made with different values is stale. `identity` is `Separator.identity()` (digests of the
    spec and of the loaded weights)."""
    return {
        "model": model_id,
        "model_name": model_name,
        "model_identity": identity,
        "sfsep_version": __version__,
        "targets": list(targets.targets),
        "seed": seed,
        "sigma": settings.sigma,
        "snr_db": settings.snr_db,
        "gate_db": settings.gate_db,
        "chunk_seconds": settings.chunk_seconds,
        "overlap": settings.overlap,
        "shifts": settings.shifts,
        "precision": settings.precision,
        "window_seconds": WINDOW_SECONDS,
    }


def evaluate(
    separator: Separator,
    tracks: Sequence[MusdbTrack],
    folder: str | os.PathLike,
    *,
    rates: Sequence[int] = DEFAULT_RATES,
    resamplers: Sequence[str] = DEFAULT_RESAMPLERS,
    metrics: Sequence[str] = METRICS,
    settings: Settings | None = None,
    seed: int = 0,
    force: bool = False,
    model_id: str | None = None,
    progress: Callable[[EvalProgress], None] | None = None,
    chunk_progress: Callable[[int, int], None] | None = None,
    engine: CellEngine | None = None,
) -> EvalRun:
    """Run (or resume) the evaluation of `separator` on `tracks`; results go under `folder`.

    `settings` carries the pipeline options (sigma, gate_db, chunking, device, ...); its
    resampler and seed are set per cell. `model_id` names the model in the records (default:
    the spec's name; the CLI adds the weights file when --weights is used). `progress` is
    called with an `EvalProgress` when a cell starts and when it is done or skipped;
    `chunk_progress(done, total)` follows the chunks of the separation running.

    The stored cells are found first; the others are computed (`CellJob.compute`) here, in plan
    order, or by `engine` (a Ray cluster: no "started" events, no chunk progress), and each is
    stored here as soon as it arrives (`CellOutcome.store`), so an interrupted run keeps what
    was done whichever engine ran it. `run.results` are in plan order either way.
    """
    started = time.perf_counter()
    settings = settings or Settings()
    folder = Path(folder)
    spec = separator.spec
    metrics = tuple(parse_metrics(list(metrics)))
    if not metrics:
        raise UsageError("--metrics: name at least one of " + ", ".join(METRICS))
    targets = musdb_targets(spec.stems, spec.residual_stem, spec.name)
    fingerprint = run_settings(model_id or spec.name, spec.name, settings, seed, targets, separator.identity())
    run = EvalRun(folder, model_id or spec.name, tracks[0].subset if tracks else "", tuple(rates),
                  tuple(resamplers), metrics, targets, fingerprint)

    def kernel_exists(rate: int) -> bool:
        return trained_kernel_file(spec.name, rate) is not None

    cells = plan_cells(tracks, rates, resamplers, spec.trained_rate, kernel_exists)
    if spec.trained_rate is None:
        run.notes.append(f"{spec.name} runs at any rate: each test-rate mixture is separated as it is, so the "
                         f"resamplers do not apply and every row is 'none'")
    if "trainable" in resamplers and spec.trained_rate is not None:
        missing = [r for r in rates if r != spec.trained_rate and not kernel_exists(r)]
        if missing:
            run.notes.append(f"trainable: no kernel trained for {spec.name} at "
                             f"{', '.join(str(r) for r in missing)} Hz, so no trainable rows there "
                             f"(`sfsep train-kernel` makes them)")
    total = len(cells)
    done = 0
    data: dict[tuple[str, str], TrackData] = {}
    pending: list[Cell] = []
    for cell in cells:
        track_data = data.setdefault(_track_key(cell), TrackData(cell.track, targets))
        record = None if force else _reusable_record(cell, folder, cell_settings(fingerprint, cell), metrics,
                                                     track_data)
        if record is None:
            pending.append(cell)
            continue
        done += 1
        run.results.append(CellResult(cell, "skipped", record))
        if progress:
            progress(EvalProgress(done, total, cell, "skipped"))

    job = CellJob(targets, metrics, settings, seed, fingerprint)

    def computed_here() -> Iterator[tuple[Cell, CellOutcome]]:
        audio: TrackAudio | None = None
        for cell in pending:  # in plan order: a track's cells follow each other, its audio is read once
            if progress:
                progress(EvalProgress(done, total, cell, "started"))
            if audio is None or audio.track != cell.track:
                audio = TrackAudio(cell.track, targets)
            yield cell, job.compute(cell, separator, audio, chunk_progress)

    computed = computed_here() if engine is None else engine.evaluate(separator, pending, job)
    for cell, outcome in computed:
        record = outcome.store(folder, data[_track_key(cell)])
        done += 1
        run.results.append(CellResult(cell, "done", record))
        if progress:
            progress(EvalProgress(done, total, cell, "done"))
    order = {cell: index for index, cell in enumerate(cells)}
    run.results.sort(key=lambda result: order[result.cell])
    run.seconds = time.perf_counter() - started
    return run


def _track_key(cell: Cell) -> tuple[str, str]:
    return cell.track.subset, cell.track.name


def evaluate_model(model: Separator | ModelChoice, musdb: str | os.PathLike | None, out: str | os.PathLike, *,
                   subset: str = "test", tracks: int | None = None, track: str | Sequence[str] | None = None,
                   rates: str | Sequence[int] | None = None, resamplers: str | Sequence[str] | None = None,
                   metrics: str | Sequence[str] | None = None, settings: Settings | None = None, seed: int = 0,
                   force: bool = False, progress: Callable[[EvalProgress], None] | None = None,
                   chunk_progress: Callable[[int, int], None] | None = None,
                   engine: CellEngine | None = None) -> tuple[EvalRun, Path]:
    """`sfsep eval`: the options are checked, then the model's name, then the dataset, all before
    the model is loaded (a ModelChoice is loaded here, or by `engine`); results go to
    out/<model>. Returns the run and that folder. See `evaluate` for the rest."""
    from .musdb import list_tracks

    rates, resamplers, metrics = parse_rates(rates), parse_resamplers(resamplers), parse_metrics(metrics)
    if isinstance(model, ModelChoice):
        model.spec()
    selected = list_tracks(musdb, subset, tracks=tracks, track=track)
    separator = model if isinstance(model, Separator) else model.load() if engine is None else engine.load(model)
    model_id = separator.name
    if isinstance(model, ModelChoice):
        model_id += (f" (weights {model.weights})" if model.weights else "") + (
            f" (config {model.config})" if model.config else "")
    folder = Path(out) / separator.name
    return evaluate(separator, selected, folder, rates=rates, resamplers=resamplers, metrics=metrics,
                    settings=settings, seed=seed, force=force, model_id=model_id, progress=progress,
                    chunk_progress=chunk_progress, engine=engine), folder


class TrackAudio:
    """A track's mixture and target references, read once, brought down to each rate once."""

    def __init__(self, track: MusdbTrack, targets: TargetMap):
        self.track = track
        mixture = track.mixture()
        sources = track.sources()
        references = [sum(sources[name] for name in targets.references[t]) for t in targets.targets]
        # one (1 + targets, channels, samples) stack: the same kernel for mixture and references
        self.full_rate = torch.stack([mixture, *references])
        self._by_rate: dict[int, torch.Tensor] = {}

    def at(self, rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixture (C, T), references (targets, C, T)) at `rate`."""
        if rate not in self._by_rate:
            self._by_rate.clear()  # cells come rate by rate: keep one rate in memory
            self._by_rate[rate] = resample(self.full_rate, MUSDB_RATE, rate, "conventional")
        stack = self._by_rate[rate]
        return stack[0], stack[1:]


@dataclass
class CellOutcome:
    """A computed cell, not yet stored: its record (without the "dataset" stamp, which `store`
    adds where the dataset's hashes are kept) and its framewise BSSEval scores (None when
    "bsseval" was not asked for). Plain data: it travels back from a Ray worker as it is."""

    cell: Cell
    record: dict
    bsseval: TrackScores | None = None

    def store(self, folder: Path, data: TrackData) -> dict:
        """Write the museval JSON, then the record (last, atomically: its presence marks a
        finished cell) under `folder`; returns the record."""
        if self.bsseval is not None:
            self.bsseval.save(self.cell.museval_path(folder))
        record = dict(self.record, dataset=data.stamp())
        _write_json(self.cell.record_path(folder), record)
        return record


@dataclass(frozen=True)
class CellJob:
    """What every cell of a run shares: the targets, the metrics, the pipeline settings, the
    seed and the settings fingerprint. `compute` is the one computation of a cell, whichever
    engine runs it."""

    targets: TargetMap
    metrics: tuple[str, ...]
    settings: Settings
    seed: int
    fingerprint: dict

    def compute(self, cell: Cell, separator: Separator, audio: TrackAudio | None = None,
                chunk_progress: Callable[[int, int], None] | None = None) -> CellOutcome:
        """Separate the cell's test-rate mixture and score it (`audio`: the track's audio when
        the caller keeps it from cell to cell)."""
        targets, metrics = self.targets, self.metrics
        mixture, references = (audio or TrackAudio(cell.track, targets)).at(cell.rate)
        seed_used = cell_seed(self.seed, cell)
        relevant = cell_settings(self.fingerprint, cell)
        tick = time.perf_counter()
        separation = separate(mixture, cell.rate, separator, cell.resampler,
                              settings=replace(self.settings, seed=seed_used), progress=chunk_progress)
        separate_seconds = time.perf_counter() - tick
        estimates = torch.stack([
            sum(separation.stems[name] for name in targets.estimates[target]) for target in targets.targets
        ]).to(references.dtype)
        if separator.device.type == "cuda":  # score where the model ran (float64: not on MPS)
            references, estimates = references.to(separator.device), estimates.to(separator.device)

        tick = time.perf_counter()
        notes = list(targets.notes)
        scores: dict[str, dict] = {}
        frames = None
        track_scores = None
        if "bsseval" in metrics:
            track_scores = _bsseval_scores(cell, references, estimates, targets, notes)
            frames = len(next(iter(track_scores.targets.values()))["SDR"])
            scores["bsseval"] = track_scores.frame_medians()
        if "sdr" in metrics:
            values = utterance_sdr(references, estimates)
            scores["sdr"] = {t: float(v) for t, v in zip(targets.targets, values)}
        if "si_sdr" in metrics:
            values = si_sdr(references, estimates)
            scores["si_sdr"] = {t: float(v) for t, v in zip(targets.targets, values)}
        score_seconds = time.perf_counter() - tick

        record = {
            "format": RECORD_FORMAT,
            "track": cell.track.name,
            "subset": cell.track.subset,
            "dataset": None,  # stamped by CellOutcome.store
            "rate": cell.rate,
            "resampler": cell.resampler,
            "model_rate": separation.model_rate,
            "strategy": separation.strategy,
            "seed_used": seed_used if "seed" in relevant else None,
            "settings": relevant,
            "metrics": list(metrics),
            "scores": scores,
            "frames": frames,
            "duration_seconds": references.shape[-1] / cell.rate,
            "kernel": _kernel_stamp(cell, separator.spec.name),
            "seconds": {"separate": round(separate_seconds, 3), "score": round(score_seconds, 3)},
            "notes": notes,
        }
        return CellOutcome(cell, record, track_scores)


class CellEngine(Protocol):
    """Computes a run's cells somewhere else than in this process (`--engine ray`:
    `sfsep.ray_engine.RayEngine`): `CellJob.compute` for each cell, outcomes yielded as they
    finish, in any order; `evaluate` stores each one as it arrives."""

    def load(self, model: ModelChoice) -> Separator:
        """The separator to ship to the engine's workers, loaded here."""

    def evaluate(self, separator: Separator, cells: Sequence[Cell], job: CellJob
                 ) -> Iterator[tuple[Cell, CellOutcome]]:
        """Each cell and its outcome, as they finish. KeyboardInterrupt stops the workers and
        reaches the caller."""


def _bsseval_scores(cell: Cell, references: torch.Tensor, estimates: torch.Tensor, targets: TargetMap,
                    notes: list[str]) -> TrackScores:
    window = max(1, round(WINDOW_SECONDS * cell.rate))
    try:
        result = bss_eval_v4(references, estimates, window=window, hop=window, source_names=targets.targets)
        return TrackScores.from_result(cell.track.name, result, cell.rate, targets.targets)
    except SilentSourceError as error:
        # A source (reference or estimate) silent over the whole track makes every window NaN
        # for every target, since museval drops a window in which any of them is silent.
        notes.append(f"BSSEval undefined, all frames NaN: {error}")
        length = references.shape[-1]
        count = length // window if window < length else 1  # museval's framing with hop = window
        nan = [math.nan] * count
        scores = TrackScores(cell.track.name, win=window / cell.rate, hop=window / cell.rate)
        for target in targets.targets:
            scores.add_target(target, nan, nan, nan, nan)
        return scores


def cell_settings(fingerprint: dict, cell: Cell) -> dict:
    """The settings a cell's result depends on: the run's, without the noise settings of the
    resamplers it does not use (so that changing --sigma only redoes the noisy cells)."""
    relevant = dict(fingerprint)
    if cell.resampler != "noisy":
        relevant.pop("sigma", None)
    if cell.resampler != "noise":
        relevant.pop("snr_db", None)
    if cell.resampler not in _RANDOM_RESAMPLERS and not fingerprint.get("shifts"):
        relevant.pop("seed", None)  # nothing random happens in this cell
    return relevant


class TrackData:
    """Which data a track's scores come from: its folder (resolved) and, for the mixture and
    every source its references are made of, the file's size, modification time and sha256.

    A stored record is reused only for the same folder and the same contents. A file whose size
    and modification time equal the record's is taken to be unchanged (as make and rsync do),
    so a rerun does not hash the dataset again; any other file is hashed (about 0.2 s for a
    4-minute MUSDB stem) and must match the recorded sha256. Hashes are computed at most once
    per file and run.
    """

    def __init__(self, track: MusdbTrack, targets: TargetMap):
        self.track = track
        used = sorted({name for names in targets.references.values() for name in names})
        self.stems = ["mixture", *used]
        self.folder = str(Path(track.folder).resolve())
        self._digests: dict[str, str] = {}

    def _stat(self, stem: str) -> tuple[int, int] | None:
        try:
            stat = self.track.path(stem).stat()
        except OSError:
            return None
        return stat.st_size, stat.st_mtime_ns

    def _digest(self, stem: str) -> str | None:
        if stem not in self._digests:
            try:
                self._digests[stem] = _sha256_file(self.track.path(stem))
            except OSError:
                return None
        return self._digests[stem]

    def stamp(self) -> dict:
        """The description stored in a record made now."""
        files = {}
        for stem in self.stems:
            stat = self._stat(stem)
            files[stem] = {"size": stat[0] if stat else None, "mtime_ns": stat[1] if stat else None,
                           "sha256": self._digest(stem)}
        return {"folder": self.folder, "files": files}

    def matches(self, stored: object) -> bool:
        """True when `stored` (a record's "dataset") describes this track's data as it is now."""
        if not isinstance(stored, dict) or stored.get("folder") != self.folder:
            return False
        files = stored.get("files")
        if not isinstance(files, dict) or set(files) != set(self.stems):
            return False
        for stem in self.stems:
            entry = files[stem]
            if not isinstance(entry, dict) or not entry.get("sha256"):
                return False
            stat = self._stat(stem)
            if stat is None:
                return False
            if (entry.get("size"), entry.get("mtime_ns")) == stat:
                continue
            if self._digest(stem) != entry["sha256"]:
                return False
        return True


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _reusable_record(cell: Cell, folder: Path, fingerprint: dict, metrics: tuple[str, ...],
                     data: TrackData) -> dict | None:
    """The cell's stored record when it was made from the same data (`TrackData`), with the
    settings `fingerprint` (the cell's `cell_settings`), and covers `metrics`, else None."""
    path = cell.record_path(folder)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("format") != RECORD_FORMAT or record.get("settings") != fingerprint:
        return None
    if not data.matches(record.get("dataset")):
        return None
    if not set(metrics) <= set(record.get("metrics", ())):
        return None
    if "bsseval" in metrics and not cell.museval_path(folder).is_file():
        return None
    if record.get("kernel") != _kernel_stamp(cell, fingerprint["model_name"]):
        return None  # the trained kernel was retrained (or removed) since
    return record


def _kernel_stamp(cell: Cell, model_name: str) -> dict | None:
    """Which trained kernel a "trainable" cell used (path and sha256 of the file, a few kB);
    None for the other cells."""
    if cell.resampler != "trainable":
        return None
    path = trained_kernel_file(model_name, cell.rate)
    if path is None:
        return None
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _write_json(path: Path, document: dict) -> None:
    """Write JSON atomically (temporary name in the same folder, then rename)."""
    write_text_atomic(path, json.dumps(document, indent=2, allow_nan=True))


def settings_summary(run: EvalRun) -> dict:
    """Plain-data facts of a run (for the summary JSON)."""
    return {
        "model": run.model,
        "subset": run.subset,
        "rates": list(run.rates),
        "resamplers": list(run.resamplers),
        "metrics": list(run.metrics),
        "targets": asdict(run.targets),
        "settings": run.settings,
        "cells_computed": run.computed,
        "cells_reused": run.skipped,
        "notes": list(run.notes),
        "seconds": round(run.seconds, 3),
    }
