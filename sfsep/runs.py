"""Many files through one model: `sfsep separate a.wav b.wav` and `sfsep batch FOLDER`.

What a run of several files needs beyond `pipeline.separate_file`: the inputs checked before
the model is loaded (a model is loaded only when some input can be read), the output plan (two
inputs that would write the same stems), the files of a folder (never its own output folder),
parallel workers, Ctrl-C, and one `FileResult` per file, failed ones included: a bad file is
reported and the others go on. The caller sees each file start and finish through callbacks,
so that it can show progress; nothing here prints. Each file is `separate_one`, in worker
threads here or, through a `FileEngine`, on a Ray cluster (`sfsep.ray_engine`): the checks, the
output plan and the results are the same either way.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from . import audio as audio_io
from .errors import AudioError, SfsepError, UsageError
from .inference import ProgressCallback
from .pipeline import FileResult, ModelChoice, OutputOptions, Separator, Settings, plan_outputs, separate_file

Started = Callable[[Path], "ProgressCallback | None"]
"""Called as a file is handed to a worker; returns the chunk-progress callback for it (or None)."""
Finished = Callable[[FileResult], None]
"""Called in the caller's thread as each file's result is known (in completion order)."""


class FileEngine(Protocol):
    """Runs the separations of a run somewhere else than in this process (`--engine ray`:
    `sfsep.ray_engine.RayEngine`). The run's checks, its output plan and its results stay here;
    the engine only decides where `separate_one` runs for each file."""

    def load(self, model: ModelChoice) -> Separator:
        """The separator to ship to the engine's workers, loaded here."""

    def separate(self, separator: Separator, work: Sequence[tuple[Path, str]], output: OutputOptions,
                 settings: Settings) -> Iterator[FileResult]:
        """`separate_one` for each (path, track) of `work`, yielding results as they finish.
        KeyboardInterrupt stops the workers at their next chunk and reaches the caller."""


@dataclass
class RunReport:
    """The results of a run, in input order, and how to show them."""

    results: list[FileResult] = field(default_factory=list)
    model: str = ""
    root: Path | None = None  # batch: names are shown relative to this folder
    skip_existing: bool = False  # batch --skip-existing: skips of existing stems need no note

    def counts(self) -> dict[str, int]:
        return {status: sum(r.status == status for r in self.results) for status in ("done", "skipped", "failed")}

    @property
    def failed(self) -> int:
        return self.counts()["failed"]

    def name(self, result: FileResult) -> str:
        return str(result.path.relative_to(self.root)) if self.root is not None else str(result.path)

    def detail(self, result: FileResult) -> str:
        """One line about a result: the error, why it was skipped (empty for an expected skip),
        or the rate, resampler and time of a done file."""
        if result.status == "failed":
            return result.error
        if result.status == "skipped":
            return "" if self.skip_existing and not result.busy else "; ".join(result.notes)
        return f"{result.input_rate} Hz, {result.strategy}, {result.seconds:.1f} s: {', '.join(result.stems)}"

    def rows(self) -> list[tuple[str, str, str]]:
        """(name, status, detail) per file, sorted by name: the summary table of `batch`."""
        return sorted((self.name(r), r.status, self.detail(r)) for r in self.results)

    def table(self, title: str):
        """The rows as a rich Table, and the counts below it."""
        from rich.console import Group
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=escape(title))
        for column in ("file", "status", "details"):
            table.add_column(column)
        style = {"done": "green", "skipped": "yellow", "failed": "red"}
        for name, status, detail in self.rows():
            table.add_row(escape(name), f"[{style[status]}]{status}[/]", escape(detail))
        counts = self.counts()
        return Group(table, f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")


def _failed(path: Path, error: SfsepError) -> FileResult:
    return FileResult(Path(path), "failed", error=str(error))


def separate_one(path: Path, separator: Separator, output: OutputOptions, settings: Settings, track: str,
                 progress: ProgressCallback | None = None) -> FileResult:
    """One file of a run, wherever it runs (a worker thread here, a Ray worker): its result,
    "failed" with the message when the file fails for a reason of its own (an SfsepError). A
    UsageError (an option that cannot work with this model) is raised: it stops the run."""
    try:
        return separate_file(path, separator, output=output, settings=settings, progress=progress, track=track)
    except UsageError:
        raise
    except SfsepError as exc:
        return _failed(path, exc)


def separate_files(files: Sequence[str | os.PathLike], model: Separator | ModelChoice, output: OutputOptions,
                   settings: Settings | None = None, *, tracks: dict[Path, str] | None = None, jobs: int = 1,
                   strict: bool = True, stop: threading.Event | None = None, started: Started | None = None,
                   finished: Finished | None = None, engine: FileEngine | None = None) -> RunReport:
    """Separate each file into `output.out/<model>/...`; one FileResult per file, in input order.

    Before any model is loaded: the --filename template is checked for several inputs (a
    UsageError), and each input's header (an unreadable input fails alone; when none is
    readable, `model` is never loaded). `model` is a loaded Separator or a ModelChoice, loaded
    here. Two inputs that would write the same stems: with `strict` the run stops before any
    file is separated (AudioError); otherwise the later input fails alone. `tracks` gives each
    input's {track} (default: its name without extension). A file's error is its result, but a
    UsageError (an option that cannot work with this model) stops the run and reaches the
    caller. `jobs` > 1 runs files in worker threads; `stop`, once set (by a Ctrl-C handler),
    makes the workers stop at their next chunk and files not started are dropped;
    KeyboardInterrupt reaches the caller. `engine` runs the separations elsewhere (a Ray
    cluster; `started` is then never called): everything else is the same."""
    paths = [Path(path) for path in files]
    name = model.name  # an unknown model name is a usage error, before any input is read
    if isinstance(model, ModelChoice) and settings is not None:
        model.check(settings)  # so is a stem the model does not have, before its weights are loaded
    _check_jobs(jobs, engine)
    audio_io.check_template(output.filename, ext=output.format, several_tracks=len(paths) > 1 or tracks is not None)
    unreadable: dict[Path, FileResult] = {}
    for path in paths:  # a bad file is reported before any model is loaded or downloaded
        try:
            audio_io.check_input(path, downmix=output.downmix)
        except AudioError as exc:
            unreadable[path] = _failed(path, exc)
    for result in unreadable.values():  # reported at once, before the model is loaded (or fails to)
        if finished is not None:
            finished(result)
    if len(unreadable) == len(paths):  # nothing to separate: no model is loaded
        return RunReport(list(unreadable.values()), name)
    separator = model if isinstance(model, Separator) else model.load() if engine is None else engine.load(model)
    settings = settings or separator.settings
    output = replace(output, out=Path(output.out) / separator.spec.name)
    names = tracks or {path: path.stem for path in paths}
    refused = plan_outputs([(path, names[path]) for path in paths if path not in unreadable], separator,
                           output, settings).refused
    if refused and strict:  # two inputs with the same outputs: refused before any of them runs
        raise next(iter(refused.values()))
    results: dict[Path, FileResult] = dict(unreadable)
    readable = [path for path in paths if path not in unreadable]
    halted, usage = threading.Event(), []  # a usage error in one worker stops the others

    def stopping() -> bool:
        return halted.is_set() or (stop is not None and stop.is_set())

    def one(path: Path, update: ProgressCallback | None) -> FileResult:
        if stopping():  # Ctrl-C (or a usage error) came before this file started
            raise KeyboardInterrupt
        if path in refused:
            return _failed(path, refused[path])

        def checked(done: int, total: int) -> None:  # between chunks: a worker stops after Ctrl-C
            if stopping():
                raise KeyboardInterrupt
            if update is not None:
                update(done, total)

        try:
            return separate_one(path, separator, output, settings, names[path], progress=checked)
        except UsageError as exc:  # an option that cannot work (e.g. --chunk-seconds for this model) stops the run
            usage.append(exc)
            halted.set()
            raise

    def done(result: FileResult) -> None:
        results[result.path] = result
        if finished is not None:
            finished(result)

    if engine is not None:
        for path in readable:
            if path in refused:
                done(_failed(path, refused[path]))
        work = [(path, names[path]) for path in readable if path not in refused]
        for result in engine.separate(separator, work, output, settings):
            done(result)
    elif jobs == 1:  # in this thread, where Ctrl-C interrupts the running file at once
        for path in readable:
            done(one(path, started(path) if started else None))
    else:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
        pool = ThreadPoolExecutor(max_workers=jobs)
        try:
            futures = [pool.submit(one, path, started(path) if started else None) for path in readable]
            for future in as_completed(futures):
                done(future.result())
        except KeyboardInterrupt:
            if not usage:  # (a worker stopped by another's usage error: that error is the one to raise)
                raise
        finally:  # after Ctrl-C: files not started are dropped, the running ones stop at their next chunk
            pool.shutdown(wait=True, cancel_futures=True)
        if usage:
            raise usage[0]
    return RunReport([results[path] for path in paths], separator.name)


def _check_jobs(jobs: int, engine: FileEngine | None) -> None:
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: must be at least 1")
    if engine is not None and jobs != 1:
        raise UsageError(f"--jobs {jobs}: sets the local engine's threads; with --engine ray, --workers sets how "
                         f"many Ray workers separate files")


def audio_files(folder: Path, recursive: bool, skip: Iterable[Path] = ()) -> list[Path]:
    """The audio files (by extension) in `folder`, sorted, leaving out those below `skip`."""
    pattern = "**/*" if recursive else "*"
    skipped = [os.path.realpath(tree) for tree in skip]
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in audio_io.AUDIO_EXTENSIONS
                  and not any(Path(os.path.realpath(p)).is_relative_to(tree) for tree in skipped))


def output_tree(folder: Path, out: Path, model_name: str) -> list[Path]:
    """The output folders inside `folder` that `batch` must not take as inputs (a second `batch -R`
    would separate the first one's stems): the whole `out` when it lies inside the folder; when
    `out` is the folder itself, the folder this model writes to (out/<model>)."""
    source, target = os.path.realpath(folder), os.path.realpath(out)
    if target == source:
        return [Path(out) / model_name]
    return [Path(out)] if Path(target).is_relative_to(source) else []


def separate_folder(folder: str | os.PathLike, model: Separator | ModelChoice, output: OutputOptions,
                    settings: Settings | None = None, *, recursive: bool = False, skip_existing: bool = False,
                    jobs: int = 1, stop: threading.Event | None = None, started: Started | None = None,
                    finished: Finished | None = None, engine: FileEngine | None = None) -> RunReport:
    """Separate every audio file in `folder` (and its sub-folders with `recursive`, whose layout
    is kept: sub/song.wav is the track "sub/song"), never the run's own output folder. A failing
    file is reported in its result and the others go on; `skip_existing` makes skips of existing
    stems expected (no note). See `separate_files` for the rest."""
    folder = Path(folder)
    if not folder.exists():
        raise AudioError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise AudioError(f"{folder}: is a file, not a folder (use `sfsep separate` for files)")
    if skip_existing and output.overwrite:
        raise UsageError("--skip-existing and --overwrite contradict each other; pick one")
    _check_jobs(jobs, engine)
    name = model.name if isinstance(model, Separator) else model.spec().name
    files = audio_files(folder, recursive, skip=output_tree(folder, Path(output.out), name))
    if not files:
        raise AudioError(f"{folder}: no audio files found{'' if recursive else ' (add -R for sub-folders)'}")
    tracks = {path: str(path.relative_to(folder).with_suffix("")) for path in files}
    report = separate_files(files, model, output, settings, tracks=tracks, jobs=jobs, strict=False, stop=stop,
                            started=started, finished=finished, engine=engine)
    report.root, report.skip_existing, report.model = folder, skip_existing, name
    return report
