"""The `sfsep` command line: parses options, makes one library call, prints, sets the exit code.

`sfsep FILE...` is `sfsep separate FILE...`. Options shared by several commands are declared
once in `sfsep.flags`, as groups (`ModelFlags`, `RunFlags`, `OutputFlags`, ...) that `@command`
expands into each command's options and hands back as one object. Errors a user can cause (SfsepError)
become one red line on stderr and exit code 1 (2 for usage errors); a traceback only with
--debug. -q prints nothing on success (errors still go to stderr), -v adds the library's debug
log; messages go through the standard `logging` module ("sfsep" logger) to stderr.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, List, Optional

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from typer import Argument as Arg, Option as Opt

from . import __version__
from .errors import SfsepError, UsageError, describe_os_error
from .flags import (EngineFlags, Files, Json, Model, ModelFlags, Musdb, OutputFlags, RunFlags, Seed, Sigma, Snr,
                    TrainFlags, TuneFlags, command)
from .registry import DEFAULT_MODEL

DEFAULT_COMMAND = "separate"
GLOBAL_FLAGS = ("--debug", "-q", "--quiet", "-v", "--verbose")
log = logging.getLogger("sfsep")


class DefaultCommandGroup(typer.core.TyperGroup):
    """A group where a first argument that is not a sub-command means `separate`; the global
    flags (-q, -v, --debug) are accepted anywhere on the line."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
        rest = [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]
        if rest and rest[0] not in self.commands and rest[0] not in ("--help", "-h", "--version"):
            # `sfsep song.wav`, or `sfsep --model classic song.wav`: options of separate first
            if not rest[0].startswith("-") or not any(a in self.commands for a in rest if not a.startswith("-")):
                rest = [DEFAULT_COMMAND, *rest]
        return super().parse_args(ctx, flags + rest)


_TYPER = dict(no_args_is_help=True, rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})
app = typer.Typer(cls=DefaultCommandGroup, add_completion=False, **_TYPER,
                  help="Separate music into stems, robustly across sampling rates.\n\n"
                       "`sfsep FILE...` is short for `sfsep separate FILE...`.")
diagnose_app = typer.Typer(help="Sampling-frequency diagnostics on your own files (no reference stems needed).",
                           **_TYPER)
app.add_typer(diagnose_app, name="diagnose")

_state: dict = {"quiet": False, "stored": None}
"""-q; and after Ctrl-C in a run that stores results as it goes, how many it stored (main prints it)."""
_interrupted = threading.Event()
"""Set by the first Ctrl-C of a run (`_on_interrupt`): `batch`'s workers stop at their next chunk."""


def _on_interrupt(signum, frame) -> None:
    """SIGINT: the first one raises KeyboardInterrupt in the main thread, as Python's own handler
    does (what is running unwinds and removes its staged files), and tells the workers of `batch`
    to stop; later ones are ignored, so that they cannot cut that cleanup short."""
    if _interrupted.is_set():
        return
    _interrupted.set()
    raise KeyboardInterrupt


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _say(*lines) -> None:
    """Print to stdout unless -q (strings are rich markup; escape what they quote)."""
    if not _state["quiet"]:
        console = _console()
        for line in lines:
            console.print(line)


def _echo_json(document) -> None:
    typer.echo(json.dumps(document, indent=2))


def _bars() -> bool | None:
    """Download progress bars: never with -q, else when stderr is a terminal (None)."""
    return False if _state["quiet"] else None


class _ConsoleHandler(logging.Handler):
    """The "sfsep" log on stderr through rich, one line per record (never wrapped, so an error
    stays one line): errors red with "error:", warnings yellow, debug dim."""

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else logging.getLevelName(record.levelno).lower()
        form = {"error": "[red]error:[/] {}", "warning": "[yellow]{}[/]", "debug": "[dim]{}[/]"}.get(level, "{}")
        _console(True).print(form.format(escape(record.getMessage())))


@contextmanager
def _progress(enabled: bool, unit: str = "chunks") -> Iterator[Progress]:
    """Progress bars on stderr, only when it is a terminal (piped, a transient bar leaves a
    stray newline behind) and not with -q."""
    err = _console(True)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True,
                  disable=not (enabled and err.is_terminal and not _state["quiet"])) as bar:
        yield bar


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sfsep {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on success (errors still go to stderr)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also log what the library does (debug)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    if quiet and verbose:
        raise UsageError("-q and -v contradict each other; pick one")
    _state["quiet"] = quiet
    log.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO)


# --------------------------------------------------------------------------------------------
# Separation


def _run_files(run, names, *, json_lines: bool = False, lines: bool = True, overall: bool = False):
    """`run(stop=, started=, finished=)` with a progress bar per running file (and one counting the
    files of a batch), saying how each file fared as it ends: errors and unexpected skips on
    stderr, done files on stdout (`lines`, not in a batch, which ends with a table), or a JSON line.
    After Ctrl-C, main says how many files were separated and stored."""
    from .pipeline import describe

    separated = []
    with _progress(enabled=lines) as bar:
        tasks, files = {}, bar.add_task("files", total=None) if overall else None

        def started(path: Path):
            task = tasks[path] = bar.add_task(escape(path.name), total=None)
            return lambda done, total: bar.update(task, completed=done, total=total)

        def finished(result) -> None:
            if result.path in tasks:  # (a file found unreadable beforehand never started)
                bar.remove_task(tasks.pop(result.path))
            if files is not None:
                bar.advance(files)
            if result.status == "done":
                separated.append(result.path)
            detail = names.detail(result)
            if json_lines:
                typer.echo(json.dumps(describe(result)))
            if result.status == "failed":
                log.error(detail)
            elif result.status == "skipped" and detail:
                log.warning(f"{names.name(result)}: skipped ({detail})")
            elif result.status == "done" and lines and names.root is None:
                _say(*map(escape, result.summary()))

        try:
            return run(stop=_interrupted, started=started, finished=finished)
        except KeyboardInterrupt:
            _state["stored"] = f"{len(separated)} file(s) separated and stored before it"
            raise


@contextmanager
def _workers_now(engine, start: bool, most: int | None = None) -> Iterator:
    """--engine ray (`engine` not None) and `start`: the workers start now, so that their start
    (new processes importing torch) runs while this process imports torch, checks the run and
    loads the model; they end with the block. Otherwise the engine as it is (a Ray run then
    starts its workers when its first task is ready)."""
    if engine is None or not start:
        yield engine
        return
    with engine.keep_workers(most=most) as kept:
        yield kept


@command(app)
def separate(files: Files, model: ModelFlags, run: RunFlags, output: OutputFlags, as_json: Json = False) -> None:
    """Split audio files into stems, written at each file's own sampling rate; a file that fails
    is reported and the others go on (exit code 1 at the end)."""
    from .pipeline import describe
    from .runs import RunReport, separate_files

    settings, options = run.settings(model.device), output.options()
    report = _run_files(lambda **hooks: separate_files(files, model.choice(_bars()), options, settings, **hooks),
                        RunReport(), lines=not as_json)
    if as_json:
        _echo_json([describe(result) for result in report.results])
    if report.failed:
        if len(files) > 1:
            _console(True).print(f"{report.failed} of {len(files)} files failed")
        raise typer.Exit(1)


@command(app)
def batch(
    folder: Annotated[Path, Arg(help="Folder of audio files.", show_default=False)],
    model: ModelFlags, run: RunFlags, output: OutputFlags, cluster: EngineFlags,
    recursive: Annotated[bool, Opt("--recursive", "-R", help="Include sub-folders (their layout is kept).")] = False,
    skip_existing: Annotated[bool, Opt("--skip-existing", help="Skip files whose stems exist, quietly.")] = False,
    jobs: Annotated[int, Opt("--jobs", "-j", help="Files processed in parallel (CPU).")] = 1,
    as_json: Annotated[bool, Opt("--json", help="Print a JSON object per file (JSON lines), as `separate --json` "
                                                "does.")] = False,
) -> None:
    """Separate every audio file in a folder; a failing file is reported and the batch goes on.

    With --engine ray the files are separated on a Ray cluster: the folder and --out must be at
    the same path on every node (a shared file system), since each worker reads its inputs and
    publishes its stems there."""
    engine = cluster.choice(model.device)
    # (a run whose folder or options are refused at once starts no worker: those errors come first)
    files = sum(1 for path in folder.glob("**/*" if recursive else "*") if path.is_file()) \
        if engine is not None and folder.is_dir() else 0
    early = files > 0 and jobs == 1 and not (skip_existing and output.overwrite)
    with _workers_now(engine, early, most=files) as engine:
        from .runs import RunReport, separate_folder

        settings, options = run.settings(model.device), output.options()
        report = _run_files(lambda **hooks: separate_folder(folder, model.choice(_bars()), options, settings,
                                                            recursive=recursive, skip_existing=skip_existing,
                                                            jobs=jobs, engine=engine, **hooks),
                            RunReport(root=folder, skip_existing=skip_existing), json_lines=as_json,
                            lines=not as_json, overall=True)
    if not as_json:
        _say(report.table(f"sfsep batch: {folder} ({report.model})"))
    if report.failed:
        raise typer.Exit(1)


@command(app)
def info(files: Files, model: Model = None, as_json: Json = False) -> None:
    """Rate, channels, duration, effective bandwidth, and the resampler auto would pick."""
    from .pipeline import describe_input

    records = [describe_input(path, model or DEFAULT_MODEL) for path in files]
    if as_json:
        return _echo_json(records)
    for r in records:
        _say(f"[bold]{escape(r['file'])}[/]", f"  rate        {r['rate']} Hz, {r['channels']} channel(s), "
             f"{r['duration_s']:.2f} s, {r['format']} {r['subtype']}", f"  bandwidth   {r['bandwidth_hz'] / 1000:.2f} "
             f"kHz effective (Nyquist {r['nyquist_hz'] / 1000:.2f} kHz)", *(["              [yellow]little content "
             "near Nyquist: the file may have been upsampled from a lower rate[/]"] if r["bandwidth_hz"] < 0.8 *
             r["nyquist_hz"] else []), f"  with {r['model']}: model at {r['model_rate']} Hz, resampler "
             f"{r['resampler']} ({escape(r['reason'])})")


@command(app)
def models(as_json: Json = False) -> None:
    """List the models sfsep knows: aliases, stems, trained rate, weights size, cached or not, source."""
    from . import catalog

    rows = catalog.model_rows()
    if as_json:
        return _echo_json(rows)
    _say(catalog.table(rows), "(stem) = the mixture minus the other stems; = an alias. `sfsep models --json` has "
                              "descriptions, licenses and citations; `sfsep fetch NAME` downloads a model's weights.")


@command(app)
def fetch(
    names: Annotated[Optional[List[str]], Arg(help="Models to download (names or aliases).", show_default=False)] = None,
    all_models: Annotated[bool, Opt("--all", help="Every model with published weights.")] = False,
    verify: Annotated[bool, Opt("--verify", help="Re-hash cached files; alone: check the whole cache, with names: "
                                                 "re-download files that fail.")] = False,
    check: Annotated[bool, Opt("--check", help="Only ask each source and mirror whether it answers (HEAD).")] = False,
) -> None:
    """Download and verify model weights into the cache (for offline use later)."""
    from . import catalog
    from .registry import get_spec, registry

    if names and all_models:
        raise UsageError("give model names or --all, not both")
    if check and verify:
        raise UsageError("--check asks the hosts, --verify hashes the cache: give one of them")
    if not names and not all_models and not verify and not check:
        raise UsageError("name the models to fetch (`sfsep models` lists them), or pass --all, --verify or --check")
    specs = [get_spec(name) for name in names] if names else list(registry().values())
    if check:
        outcomes = catalog.check_sources(specs)
    elif verify and not names and not all_models:
        outcomes = catalog.verify_cache(specs)
    else:
        outcomes = catalog.fetch_weights(specs, every=all_models, progress=False if _state["quiet"] else None)
    failed = False
    for level, text in outcomes:
        failed = failed or level in ("error", "failed")
        _say(escape(text)) if level in ("ok", "failed") else getattr(log, level)(text)
    if failed:
        raise typer.Exit(1)


@command(app)
def cache(action: Annotated[str, Arg(help="path: print the cache folder; clean: delete its contents.",
                                     show_default=False)]) -> None:
    """Show or empty sfsep's weights cache ($SFSEP_CACHE, else $XDG_CACHE_HOME/sfsep, else ~/.cache/sfsep)."""
    from . import hub

    if action == "path":
        return typer.echo(str(hub.cache_dir()))
    if action != "clean":
        raise UsageError(f"sfsep cache {action}: use `sfsep cache path` or `sfsep cache clean`")
    files, size = hub.clean_cache()
    _say(escape(f"removed {files} file(s), {hub.human_size(size)}, from {hub.cache_dir()} (Hugging Face downloads "
                f"stay in the Hugging Face cache; `hf cache` manages it)"))


# --------------------------------------------------------------------------------------------
# Evaluation, trainable kernel, diagnostics


@command(app, "eval")
def eval_command(
    model: ModelFlags, tune: TuneFlags, cluster: EngineFlags, musdb: Musdb = None,
    subset: Annotated[str, Opt("--subset", help="test | train | valid (musdb's 14-track validation split).")] = "test",
    tracks: Annotated[Optional[int], Opt("--tracks", help="Evaluate only the first N tracks of the subset.")] = None,
    track: Annotated[Optional[List[str]], Opt("--track", metavar="NAME", help="Evaluate this track (folder name); "
                                                                              "repeatable.")] = None,
    rates: Annotated[str, Opt("--rates", help="Test sampling rates in Hz, comma-separated (each <= 44100).")
                     ] = "8000,11025,16000,22050,32000,44100",
    resamplers: Annotated[str, Opt("--resamplers", help="How each test-rate mixture reaches the model's rate, "
                                   "comma-separated; 'all' = conventional,noisy,noise (+ trainable where a kernel is "
                                   "trained). At the model's own rate the row is 'none'.")] = "conventional,noisy",
    metrics: Annotated[str, Opt("--metrics", help="bsseval (museval's framewise v4), sdr (whole-signal), si_sdr; "
                                                  "comma-separated.")] = "bsseval,sdr,si_sdr",
    out: Annotated[Path, Opt("--out", "-o", help="Results go to OUT/<model>/.")] = Path("eval"),
    force: Annotated[bool, Opt("--force", help="Recompute results that are already stored.")] = False,
    seed: Annotated[int, Opt("--seed", help="Seed of the random resamplers; each result's draw depends only on it, "
                                            "the track, the rate and the resampler.")] = 0,
    as_json: Json = False,
) -> None:
    """Score a model on MUSDB18-HQ at several sampling rates and resamplers (BSSEval v4, SDR, SI-SDR).

    With --engine ray each result (track, rate, resampler) is one task on a Ray cluster: the
    MUSDB folder must be at the same path on every node; results are stored here as they
    arrive, in the same store as the local engine's."""
    engine = cluster.choice(model.device)
    with _workers_now(engine, musdb is None or Path(musdb).is_dir()) as engine, \
            _progress(enabled=not as_json, unit="{task.fields[unit]}") as bar:
        from .evaluate.report import closing_lines, rich_table, summarize, summary_document, write_all
        from .evaluate.runner import evaluate_model

        task = bar.add_task("eval", total=None, unit="results")
        chunks = bar.add_task("separating", total=None, unit="chunks", visible=False)
        tally = {"computed": 0, "stored": 0, "total": 0}

        def update(event) -> None:
            label = f"{'reused ' if event.status == 'skipped' else ''}{event.cell.track.name} @ {event.cell.rate} Hz"
            bar.update(task, completed=event.done, total=event.total,
                       description=escape(f"{label}, {event.cell.resampler}"))
            bar.update(chunks, visible=event.status == "started", completed=0, total=None)
            tally.update(total=event.total, stored=event.done)
            tally["computed"] += event.status == "done"

        try:
            run, folder = evaluate_model(model.choice(_bars()), musdb, out, subset=subset, tracks=tracks, track=track,
                                         rates=rates, resamplers=resamplers, metrics=metrics, seed=seed, force=force,
                                         settings=tune.settings(model.device, seed=seed), progress=update,
                                         chunk_progress=lambda done, total: bar.update(chunks, completed=done,
                                                                                       total=total), engine=engine)
        except KeyboardInterrupt:
            _state["stored"] = (f"{tally['computed']} result(s) computed and stored before it, {tally['stored']} of "
                                f"{tally['total']} now stored; a rerun resumes from them")
            raise
    summary = summarize(run)
    written = write_all(summary, folder)
    if as_json:
        return _echo_json(summary_document(summary))
    _say(rich_table(summary), *map(escape, closing_lines(summary, run, folder, written)))


@command(app, "train-kernel")
def train_kernel_command(
    model: ModelFlags, train: TrainFlags,
    musdb: Musdb = None,
    generated: Annotated[Optional[int], Opt("--generated", help="Train on this many clips of sfsep's generated "
                                                                "music (the demo model's data) instead of MUSDB18-HQ.",
                                            show_default=False)] = None,
    out: Annotated[Optional[Path], Opt("--out", "-o", help="Where to save (default: <cache>/kernels/<model>/<rate>.pt, "
                                                           "which --resampler trainable reads).")] = None,
) -> None:
    """Train the resampling kernel for a model (--model, required) and input rate on MUSDB18-HQ or on
    generated music (--generated N) (the model stays frozen)."""
    from .resample.trainable import kernel_path
    from .training import TrainSettings, train_kernel_for_model

    if model.model is None:
        raise UsageError("train-kernel: pass --model NAME, the separator to train the kernel for (it stays frozen)")
    settings = TrainSettings(**vars(train))
    settings.check()
    with _progress(enabled=True, unit="steps") as bar:
        task = bar.add_task("fitting the kernel to the windowed sinc", total=None)

        def update(event) -> None:
            if event.phase == "step":
                bar.update(task, total=event.epochs * event.steps, completed=(event.epoch - 1) * event.steps +
                           event.step, description=f"epoch {event.epoch}/{event.epochs} loss {event.train_loss:.3e} "
                                                   f"(best valid {event.best_valid_loss:.3e})")

        path, result = train_kernel_for_model(model.choice(_bars()), musdb, settings, output=out, progress=update,
                                              generated_clips=generated)
    name = model.choice(_bars()).name
    _say(escape(f"kernel for {name} at {train.rate} Hz saved to {path}"), *[f"  {line}" for line in result.summary()])
    if out is not None:
        _say(escape(f"  (saved outside the cache: copy it to {kernel_path(name, train.rate)} for --resampler "
                    f"trainable)"))


@command(diagnose_app, "consistency")
def diagnose_consistency(
    files: Files, model: ModelFlags, sigma: Sigma = 1e-3, snr: Snr = 20.0, seed: Seed = 0,
    rates: Annotated[str, Opt("--rates", help="Low rates to test, comma-separated.")] = "8000,16000",
    resamplers: Annotated[str, Opt("--resamplers", help="Resamplers to compare: some of conventional, noisy, noise, "
                                                        "trainable.")] = "conventional,noisy",
    as_json: Json = False,
) -> None:
    """How far the model's output at low rates departs from its own full-band output (dB, higher is closer).

    A proxy without references: the file is separated at the model's rate, and separately brought
    down to each rate, separated with each resampler and compared below rate/2 (see the README).
    """
    from .diagnose.commands import consistency_table, run_consistency

    rows, summary, name = run_consistency(files, model.choice(_bars()), rates, resamplers, sigma=sigma, snr_db=snr,
                                          seed=seed)
    if as_json:
        return _echo_json({"rows": [row.__dict__ for row in rows],
                           "summary": [{"rate": r, "resampler": m, **v} for (r, m), v in summary.items()]})
    _say(consistency_table(summary, name, len(files)),
         "* closest to the full-band output at that rate. This is a proxy (no references): it measures consistency "
         "with the model's own full-band output, not separation quality.")


@command(diagnose_app, "lee")
def diagnose_lee(
    files: Files, model: ModelFlags, as_json: Json = False,
    rates: Annotated[str, Opt("--rates", help="Rates whose band above rate/2 is removed.")] = "8000,16000",
) -> None:
    """Our local equivariance error for rate changes (0 = output below rate/2 ignores the band above)."""
    from .diagnose.commands import lee_table, run_lee

    results, name = run_lee(files, model.choice(_bars()), rates)
    if as_json:
        return _echo_json([result.__dict__ for result in results])
    _say(lee_table(results, name, len(files)),
         "LEE(r) = ||S(model(x_r)) - S(model(x))|| / ||S(model(x))||, S the magnitude STFT of the stems below r/2, "
         "x_r the input with its band above r/2 removed; mean over files (see the README).")


@command(diagnose_app, "spectrum")
def diagnose_spectrum(
    file: Annotated[Path, Arg(help="Audio file.", show_default=False)],
    rate: Annotated[int, Opt("--rate", help="Input rate to simulate (the file is brought down to it).",
                             show_default=False)],
    model: Annotated[Optional[str], Opt("--model", "-n", help="Model whose rate is the target (and whose trained "
                                                              "kernel is shown).")] = None,
    target_rate: Annotated[Optional[int], Opt("--target-rate", help="Upsample to this rate instead.")] = None,
    sigma: Sigma = 1e-3, snr: Snr = 20.0, seed: Seed = 0,
    plot: Annotated[Optional[Path], Opt("--plot", help="Write a PNG of kernels and spectrograms here (needs "
                                                       "matplotlib: sfsep[plot]).")] = None,
    as_json: Json = False,
) -> None:
    """Energy each resampler puts above the input's Nyquist frequency: kernels and the resampled file."""
    from .diagnose.commands import run_spectrum, spectrum_table

    name = model or DEFAULT_MODEL
    report, target, trained, written = run_spectrum(file, rate, name, target_rate=target_rate, sigma=sigma,
                                                    snr_db=snr, seed=seed, plot=plot)
    if as_json:
        return _echo_json({"rate": rate, "target_rate": target, "strategies": report.rows(),
                           "plot": str(written) if written else None})
    _say(spectrum_table(report, file, rate, target))
    if not trained:
        _say(escape(f"no trained kernel for {name} at {rate} Hz (`sfsep train-kernel` makes one)"))
    if written:
        _say(escape(f"plot written to {written}"))


# --------------------------------------------------------------------------------------------
# Entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app and maps errors to messages and exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    _interrupted.clear()
    _state.update(quiet=False, stored=None)
    log.addHandler(handler := _ConsoleHandler())
    log.setLevel(logging.INFO)
    log.propagate = False  # the library's messages are shown once, by this handler
    try:
        previous_handler = signal.signal(signal.SIGINT, _on_interrupt)
    except ValueError:  # called from a thread other than the main one: keep Python's handler
        previous_handler = None
    code: object = None
    try:
        code = app(args=args, prog_name="sfsep", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C inside a command into exit code 130, silently
            raise KeyboardInterrupt
    except (SfsepError, OSError) as exc:  # OSError: what the system refused that nothing caught sooner
        if debug:
            _console(True).print_exception()
        log.error(str(exc) if isinstance(exc, SfsepError) else describe_os_error(exc))
        code = exc.exit_code if isinstance(exc, SfsepError) else 1
    except KeyboardInterrupt:
        stored = f"{escape(_state['stored'])}; " if _state["stored"] else ""
        _console(True).print(f"[red]interrupted[/]: {stored}no output was left half-written")
        code = 130
    except Exception as exc:  # click's own exceptions (typer may vendor click: match by class name)
        kinds = {cls.__name__ for cls in type(exc).__mro__}
        if "ClickException" in kinds:
            exc.show()
        elif "Abort" in kinds:
            _console(True).print("[red]aborted[/]")
        elif "Exit" not in kinds:
            raise
        code = getattr(exc, "exit_code", 0) if "Abort" not in kinds else 130
    finally:
        log.removeHandler(handler)
        if previous_handler is not None:
            if code == 130 and argv is None:
                # The console script is exiting after a Ctrl-C: a further one must not land in
                # Python's shutdown (torch's exit hooks) and print a traceback after "interrupted".
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            else:
                signal.signal(signal.SIGINT, previous_handler)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
