"""The `sfsep` command line: parses options, prints, sets the exit code. No signal processing.

`sfsep FILE...` is `sfsep separate FILE...`: the group below inserts the default sub-command
when the first argument is not one. Errors a user can cause (SfsepError) become one red line on
stderr and exit code 1 (2 for usage errors); a traceback only with --debug.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .errors import SfsepError, UsageError
from .registry import DEFAULT_MODEL

DEFAULT_COMMAND = "separate"


class DefaultCommandGroup(typer.core.TyperGroup):
    """A group where a first argument that is not a sub-command means `separate`."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [DEFAULT_COMMAND, *args]
        elif args and args[0].startswith("-") and args[0] not in ("--help", "-h", "--version", "--debug"):
            # `sfsep --model classic song.wav`: options of separate before the file
            if not any(a in self.commands for a in args if not a.startswith("-")):
                args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=DefaultCommandGroup,
    help="Separate music into stems, robustly across sampling rates.\n\n`sfsep FILE...` is short for `sfsep separate FILE...`.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)

_state = {"debug": False}

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


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sfsep {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


# --------------------------------------------------------------------------------------------
# Shared options

ModelOpt = typer.Option(None, "--model", "-n",
                        help=f"Model name or alias (`sfsep models` lists them). Default: {DEFAULT_MODEL} "
                             f"(needs its weights; `classic` runs offline without any).")
OutOpt = typer.Option(Path("separated"), "--out", "-o", help="Output folder.")
FilenameOpt = typer.Option("{track}/{stem}.{ext}", "--filename",
                           help="Output path below --out/<model>; fields {model} {track} {trackext} {stem} {ext} "
                                "{resampler}.")
FormatOpt = typer.Option("wav", "--format", help="wav | flac | mp3 | ogg | opus.")
BitsOpt = typer.Option(None, "--bits", help="wav and flac: 16 (default), 24 or 32 (32 = float, wav only).")
BitrateOpt = typer.Option(None, "--bitrate", help="mp3: constant bitrate in kbps (default: the most the rate allows, "
                                                  "320 at 32-48 kHz).")
QualityOpt = typer.Option(None, "--quality", help="ogg and opus: 0 to 10 (ogg: oggenc's -q, default 4; opus: "
                                                  "6 + 25*Q kbps per channel, default libopus' choice).")
ClipOpt = typer.Option("clamp", "--clip", help="clamp | rescale | none: what to do with samples beyond full scale.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace existing outputs (default: skip the file).")
DownmixOpt = typer.Option(False, "--downmix", help="Fold inputs with more than 2 channels to stereo.")
ResamplerOpt = typer.Option("auto", "--resampler", "-r",
                            help="auto | conventional | noisy | noise | trainable | none. auto: noisy below the model's "
                                 "rate, conventional above, none when equal. trainable: the kernel "
                                 "`sfsep train-kernel` trained for this model and rate.")
SigmaOpt = typer.Option(1e-3, "--sigma", help="Noisy-kernel noise standard deviation (default 1e-3, i.e. variance 1e-6).")
SnrOpt = typer.Option(20.0, "--snr", help="SNR in dB of the noise added by --resampler noise.")
SeedOpt = typer.Option(None, "--seed", help="Seed for the random resamplers, to reproduce a run.")
ChunkOpt = typer.Option(None, "--chunk-seconds", help="Chunk length in seconds (default: the model's).")
OverlapOpt = typer.Option(None, "--overlap", help="Chunk overlap as a fraction (default: the model's).")
BatchOpt = typer.Option(None, "--batch-size", help="Chunks per batch (default: the model's).")
DeviceOpt = typer.Option(os.environ.get("SFSEP_DEVICE", "auto"), "--device", "-d", help="auto | cpu | cuda | cuda:N | mps.")
PrecisionOpt = typer.Option("fp32", "--precision", help="fp32 | fp16 | bf16 (autocast; fp16 on CUDA only).")
JsonOpt = typer.Option(False, "--json", help="Print a JSON summary instead of text.")
ShiftsOpt = typer.Option(0, "--shifts", help="Average over N random time shifts of the input (demucs' option; "
                                            "N times slower). Use --seed to reproduce.")
GateOpt = typer.Option(None, "--gate-db",
                       help="Silence a stem in 50-ms windows where it is more than this many dB below the mixture "
                            "(e.g. -40); off by default.")
OfflineOpt = typer.Option(False, "--offline", help="Never use the network: weights must be cached (also SFSEP_OFFLINE=1).")
WeightsOpt = typer.Option(None, "--weights", help="Run a local checkpoint file instead of the model's published weights.")
StemsOpt = typer.Option(None, "--stems", help="Write only these stems, e.g. vocals,drums (default: all).")
TwoStemsOpt = typer.Option(None, "--two-stems", help="Write STEM and no_STEM (demucs' option), e.g. vocals.")
OtherMethodOpt = typer.Option(None, "--other-method",
                              help="With --two-stems, no_STEM is: add = the other stems summed (default), minus = "
                                   "the mixture minus STEM, none = not written.")
ConfigOpt = typer.Option(None, "--config",
                         help="An MSST-style YAML config for the checkpoint (replaces the model's architecture, stems "
                              "and chunking; the family is taken from --model or guessed from the config).")


def _model_and_config(model: Optional[str], config: Optional[Path], weights: Optional[Path]):
    """The spec to run and the --config still to apply (None when the spec already carries it)."""
    from .checkpoint import load_yaml_config
    from .registry import DEFAULT_MODEL, get_spec, spec_from_config

    if model is None and config is not None:
        spec = spec_from_config(load_yaml_config(config), name=config.stem, source=f"--config {config}")
        if weights is None:
            raise UsageError(f"--config {config}: also pass --weights PATH (or --model NAME of a published model)")
        return spec, None
    if model is None and weights is not None:
        raise UsageError(f"--weights {weights}: also pass --model NAME (a model of the checkpoint's family) "
                         f"or --config PATH (its MSST config)")
    return get_spec(model or DEFAULT_MODEL), config


def _load_separator(spec, model_given: bool, **options):
    """load_separator, saying so when the default model is what lacks its weights."""
    from .errors import WeightsError
    from .pipeline import load_separator

    try:
        return load_separator(spec, **options)
    except WeightsError as exc:
        if model_given:
            raise
        raise WeightsError(f"{exc} ({spec.name} is the default model; pass --model to choose another)") from exc


def _selection(stems: Optional[str], two_stems: Optional[str], other_method: Optional[str]) -> dict:
    """--stems a,b / --two-stems s / --other-method as Settings fields (checked by pipeline.plan_stems)."""
    if other_method is not None and two_stems is None:
        raise UsageError(f"--other-method {other_method}: only applies with --two-stems STEM")
    names = None if stems is None else tuple(name.strip() for name in stems.split(",") if name.strip())
    return {"stems": names, "two_stems": two_stems, "other_method": other_method or "add"}


def _check_stems(spec, config, weights, settings) -> None:
    """A stem the model lacks fails before its weights are loaded (with --weights or --config the
    checkpoint may name other stems: then it fails right after loading, before any file)."""
    from .pipeline import model_stem_names, plan_stems

    if config is None and weights is None:
        plan_stems(model_stem_names(spec), settings, spec.name)


def _settings(resampler, sigma, snr, seed, chunk_seconds, overlap, batch_size, device, precision, gate_db=None,
              shifts=0, **selection):
    from .pipeline import Settings
    from .resample import METHODS

    if resampler != "auto" and resampler not in METHODS:
        raise UsageError(f"--resampler {resampler}: use auto or one of {', '.join(METHODS)}")
    if sigma < 0:
        raise UsageError(f"--sigma {sigma}: must not be negative")
    if shifts < 0:
        raise UsageError(f"--shifts {shifts}: must not be negative")
    if chunk_seconds is not None and chunk_seconds <= 0:
        raise UsageError(f"--chunk-seconds {chunk_seconds}: must be positive")
    return Settings(resampler=resampler, sigma=sigma, snr_db=snr, seed=seed, chunk_seconds=chunk_seconds,
                    overlap=overlap, batch_size=batch_size, device=device, precision=precision, gate_db=gate_db,
                    shifts=shifts, **selection)


def _output(out, filename, fmt, bits, clip, overwrite, downmix, model_name, several_tracks=False, bitrate=None,
            quality=None):
    from .audio import CLIP_MODES, check_encoding, check_template
    from .pipeline import OutputOptions

    check_encoding(fmt, bits=bits, bitrate=bitrate, quality=quality)
    check_template(filename, ext=fmt, several_tracks=several_tracks)
    if clip not in CLIP_MODES:
        raise UsageError(f"--clip {clip}: use one of {', '.join(CLIP_MODES)}")
    return OutputOptions(out=Path(out) / model_name, filename=filename, format=fmt, bits=bits, clip=clip,
                         overwrite=overwrite, downmix=downmix, bitrate=bitrate, quality=quality)


@contextmanager
def _chunk_progress(console: Console, enabled: bool) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("chunks"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True, disable=not enabled,
    )
    with progress:
        yield progress


def _progress_callback(progress: Progress, label: str):
    task = progress.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return task, update


def _report_line(result) -> str:
    from .pipeline import FileResult

    assert isinstance(result, FileResult)
    if result.status == "skipped":
        return f"[yellow]{result.path}: skipped[/] ({'; '.join(result.notes)})"
    folder = os.path.commonpath([str(p.parent) for p in result.outputs]) if result.outputs else ""
    line = (f"{result.path}: {result.input_rate} Hz (bandwidth {result.bandwidth_hz / 1000:.1f} kHz) -> model at "
            f"{result.model_rate} Hz, resampler {result.strategy} ({result.reason}) -> {folder} "
            f"({', '.join(result.stems)})")
    for stem, count in result.clipped.items():
        line += f"\n  [yellow]{stem}: {count} samples were beyond full scale (handled by --clip)[/]"
    for note in result.notes:
        line += f"\n  note: {note}"
    return line


# --------------------------------------------------------------------------------------------
# Commands


@app.command()
def separate(
    files: List[Path] = typer.Argument(..., help="Audio files to separate.", show_default=False),
    model: Optional[str] = ModelOpt,
    out: Path = OutOpt,
    filename: str = FilenameOpt,
    fmt: str = FormatOpt,
    bits: Optional[int] = BitsOpt,
    bitrate: Optional[int] = BitrateOpt,
    quality: Optional[float] = QualityOpt,
    clip: str = ClipOpt,
    overwrite: bool = OverwriteOpt,
    downmix: bool = DownmixOpt,
    resampler: str = ResamplerOpt,
    sigma: float = SigmaOpt,
    snr: float = SnrOpt,
    seed: Optional[int] = SeedOpt,
    chunk_seconds: Optional[float] = ChunkOpt,
    overlap: Optional[float] = OverlapOpt,
    batch_size: Optional[int] = BatchOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    as_json: bool = JsonOpt,
    offline: bool = OfflineOpt,
    weights: Optional[Path] = WeightsOpt,
    config: Optional[Path] = ConfigOpt,
    gate_db: Optional[float] = GateOpt,
    shifts: int = ShiftsOpt,
    stems: Optional[str] = StemsOpt,
    two_stems: Optional[str] = TwoStemsOpt,
    other_method: Optional[str] = OtherMethodOpt,
) -> None:
    """Split audio files into stems, written at each file's own sampling rate."""
    from .pipeline import describe, plan_outputs, separate_file

    settings = _settings(resampler, sigma, snr, seed, chunk_seconds, overlap, batch_size, device, precision, gate_db,
                         shifts, **_selection(stems, two_stems, other_method))
    spec, config = _model_and_config(model, config, weights)
    _check_stems(spec, config, weights, settings)
    output = _output(out, filename, fmt, bits, clip, overwrite, downmix, spec.name, several_tracks=len(files) > 1,
                     bitrate=bitrate, quality=quality)
    from .audio import check_input

    for path in files:  # a bad file is reported before any model is loaded or downloaded
        check_input(path, downmix=downmix)
    separator = _load_separator(spec, model is not None or config is not None, device=settings.device,
                                weights=weights, offline=offline, config=config)
    refused = plan_outputs([(path, path.stem) for path in files], separator, output, settings).refused
    if refused:  # two inputs with the same outputs: refused before any of them runs
        raise next(iter(refused.values()))
    console, err = _stdout(), _stderr()
    summaries = []
    with _chunk_progress(err, enabled=not as_json) as progress:
        for path in files:
            task, update = _progress_callback(progress, path.name)
            result = separate_file(path, separator, output=output, settings=settings, progress=update)
            progress.remove_task(task)
            summaries.append(describe(result))
            if not as_json:
                (console if result.status == "done" else err).print(_report_line(result))
    if as_json:
        typer.echo(json.dumps(summaries, indent=2))


def _audio_files(folder: Path, recursive: bool, skip: List[Path] = ()) -> list[Path]:
    from .audio import AUDIO_EXTENSIONS

    pattern = "**/*" if recursive else "*"
    skipped = [os.path.realpath(tree) for tree in skip]
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                  and not any(Path(os.path.realpath(p)).is_relative_to(tree) for tree in skipped))


def _output_tree(folder: Path, out: Path, model_name: str) -> List[Path]:
    """The output folders inside `folder` that `batch` must not take as inputs (a second `batch -R`
    would separate the first one's stems): the whole --out when it lies inside the folder; when
    --out is the folder itself, the folder this model writes to (--out/<model>)."""
    source, target = os.path.realpath(folder), os.path.realpath(out)
    if target == source:
        return [Path(out) / model_name]
    return [Path(out)] if Path(target).is_relative_to(source) else []


@app.command()
def batch(
    folder: Path = typer.Argument(..., help="Folder of audio files.", show_default=False),
    recursive: bool = typer.Option(False, "--recursive", "-R", help="Include sub-folders (their layout is kept)."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip files whose stems exist, quietly."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Files processed in parallel (CPU)."),
    model: Optional[str] = ModelOpt,
    out: Path = OutOpt,
    filename: str = FilenameOpt,
    fmt: str = FormatOpt,
    bits: Optional[int] = BitsOpt,
    bitrate: Optional[int] = BitrateOpt,
    quality: Optional[float] = QualityOpt,
    clip: str = ClipOpt,
    overwrite: bool = OverwriteOpt,
    downmix: bool = DownmixOpt,
    resampler: str = ResamplerOpt,
    sigma: float = SigmaOpt,
    snr: float = SnrOpt,
    seed: Optional[int] = SeedOpt,
    chunk_seconds: Optional[float] = ChunkOpt,
    overlap: Optional[float] = OverlapOpt,
    batch_size: Optional[int] = BatchOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    offline: bool = OfflineOpt,
    weights: Optional[Path] = WeightsOpt,
    config: Optional[Path] = ConfigOpt,
    gate_db: Optional[float] = GateOpt,
    shifts: int = ShiftsOpt,
    stems: Optional[str] = StemsOpt,
    two_stems: Optional[str] = TwoStemsOpt,
    other_method: Optional[str] = OtherMethodOpt,
) -> None:
    """Separate every audio file in a folder; a failing file is reported and the batch goes on."""
    import torch

    from .errors import AudioError
    from .pipeline import plan_outputs, separate_file

    if not folder.exists():
        raise AudioError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise AudioError(f"{folder}: is a file, not a folder (use `sfsep separate` for files)")
    if skip_existing and overwrite:
        raise UsageError("--skip-existing and --overwrite contradict each other; pick one")
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: must be at least 1")
    settings = _settings(resampler, sigma, snr, seed, chunk_seconds, overlap, batch_size, device, precision, gate_db,
                         shifts, **_selection(stems, two_stems, other_method))
    spec, config = _model_and_config(model, config, weights)
    _check_stems(spec, config, weights, settings)
    output = _output(out, filename, fmt, bits, clip, overwrite, downmix, spec.name, several_tracks=True,
                     bitrate=bitrate, quality=quality)
    files = _audio_files(folder, recursive, skip=_output_tree(folder, out, spec.name))
    if not files:
        raise AudioError(f"{folder}: no audio files found{'' if recursive else ' (add -R for sub-folders)'}")
    separator = _load_separator(spec, model is not None or config is not None, device=settings.device,
                                weights=weights, offline=offline, config=config)
    # {track} is the path below the folder: sub/song.wav -> "sub/song", written below <out>/<model>/sub/
    tracks = {path: str(path.relative_to(folder).with_suffix("")) for path in files}
    refused = plan_outputs(tracks.items(), separator, output, settings).refused  # later inputs with taken outputs
    console, err = _stdout(), _stderr()
    if jobs > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    rows: list[tuple[str, str, str]] = []

    def one(path: Path, update) -> tuple[str, str, str]:
        if _interrupted.is_set():  # Ctrl-C came before this file started
            raise KeyboardInterrupt

        def checked(done: int, total: int) -> None:  # between chunks: a worker stops after Ctrl-C
            if _interrupted.is_set():
                raise KeyboardInterrupt
            update(done, total)

        relative = path.relative_to(folder)
        if path in refused:
            return str(relative), "failed", str(refused[path])
        try:
            result = separate_file(path, separator, output=output, settings=settings, progress=checked,
                                   track=tracks[path])
        except SfsepError as exc:
            return str(relative), "failed", str(exc)
        if result.status == "skipped":
            quiet = skip_existing and not result.busy
            return str(relative), "skipped", "" if quiet else "; ".join(result.notes)
        return str(relative), "done", (f"{result.input_rate} Hz, {result.strategy}, {result.seconds:.1f} s: "
                                       f"{', '.join(result.stems)}")

    def finished(row: tuple[str, str, str], task) -> None:
        progress.remove_task(task)
        progress.advance(overall)
        rows.append(row)
        if row[1] == "failed":
            err.print(f"[red]error:[/] {escape(row[2])}")
        elif row[1] == "skipped" and row[2]:
            err.print(f"[yellow]{row[0]}: skipped[/] ({row[2]})")

    with _chunk_progress(err, enabled=True) as progress:
        overall = progress.add_task(f"{len(files)} files", total=len(files))
        if jobs == 1:  # in this thread, where Ctrl-C interrupts the running file at once
            for path in files:
                task, update = _progress_callback(progress, path.name)
                finished(one(path, update), task)
        else:
            pool = ThreadPoolExecutor(max_workers=jobs)
            try:
                futures = {}
                for path in files:
                    task, update = _progress_callback(progress, path.name)
                    futures[pool.submit(one, path, update)] = task
                for future in as_completed(futures):
                    finished(future.result(), futures[future])
            finally:  # after Ctrl-C: files not started are dropped, the running ones stop at their next chunk
                pool.shutdown(wait=True, cancel_futures=True)
    rows.sort()
    table = Table(title=f"sfsep batch: {folder} ({spec.name})")
    for column in ("file", "status", "details"):
        table.add_column(column)
    style = {"done": "green", "skipped": "yellow", "failed": "red"}
    for name, status, detail in rows:
        table.add_row(name, f"[{style[status]}]{status}[/]", detail)
    console.print(table)
    counts = {s: sum(1 for r in rows if r[1] == s) for s in ("done", "skipped", "failed")}
    console.print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    if counts["failed"]:
        raise typer.Exit(1)


@app.command()
def info(
    files: List[Path] = typer.Argument(..., help="Audio files to inspect.", show_default=False),
    model: Optional[str] = ModelOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Rate, channels, duration, effective bandwidth, and the resampler auto would pick."""
    from . import audio as audio_io
    from .registry import DEFAULT_MODEL, get_spec
    from .resample import choose_strategy

    spec = get_spec(model or DEFAULT_MODEL)
    records = []
    for path in files:
        details = audio_io.inspect(path)
        audio, rate = audio_io.read(path, downmix=True, max_channels=max(2, details.channels))
        bandwidth = audio_io.effective_bandwidth(audio, rate)
        model_rate = spec.model_rate(rate)
        strategy, reason = choose_strategy(rate, model_rate)
        records.append({
            "file": str(path), "rate": rate, "channels": details.channels,
            "duration_s": round(details.duration, 3), "format": details.format, "subtype": details.subtype,
            "bandwidth_hz": round(bandwidth, 1), "nyquist_hz": rate / 2,
            "model": spec.name, "model_rate": model_rate, "resampler": strategy, "reason": reason,
        })
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    console = _stdout()
    for record in records:
        console.print(f"[bold]{record['file']}[/]")
        console.print(f"  rate        {record['rate']} Hz, {record['channels']} channel(s), "
                      f"{record['duration_s']:.2f} s, {record['format']} {record['subtype']}")
        console.print(f"  bandwidth   {record['bandwidth_hz'] / 1000:.2f} kHz effective "
                      f"(Nyquist {record['nyquist_hz'] / 1000:.2f} kHz)")
        if record["bandwidth_hz"] < 0.8 * record["nyquist_hz"]:
            console.print("              [yellow]little content near Nyquist: the file may have been upsampled "
                          "from a lower rate[/]")
        console.print(f"  with {record['model']}: model at {record['model_rate']} Hz, resampler "
                      f"{record['resampler']} ({record['reason']})")


def _model_row(spec) -> dict:
    """What `sfsep models` shows about one model (no network, no hashing)."""
    from . import hub
    from .models import is_available

    residual = spec.residual_stem
    cached, count = hub.cache_status(spec)
    known_sizes = [source.size for source in spec.weights]
    size = sum(known_sizes) if spec.weights and all(v is not None for v in known_sizes) else None
    estimate = None
    if size is None and spec.params:
        bytes_per_param = 2 if spec.half_precision else 4
        estimate = spec.params * bytes_per_param * max(1, len(spec.weights))
    return {
        "name": spec.name, "family": spec.family, "stems": list(spec.stems) + ([residual] if residual else []),
        "residual_stem": residual, "trained_rate": spec.trained_rate, "available": is_available(spec.family),
        "cached": None if not spec.weights else cached == count, "cached_files": cached, "files": count,
        "size_bytes": size, "size_estimate_bytes": estimate,
        "sources": [{"source": hub.source_label(w), "host": hub.source_host(w), "file": w.cache_name,
                     "sha256": w.sha256, "size": w.size, "checksum_source": w.checksum_source,
                     "mirrors": [hub.source_label(m) for m in w.mirrors],
                     "cache_path": hub.where_expected(w)} for w in spec.weights],
        "chunk_size": spec.chunk_size, "overlap": spec.overlap, "num_overlap": spec.num_overlap,
        "chunk_style": spec.chunk_style,
        "batch_size": spec.batch_size, "normalize": spec.normalize,
        "description": spec.description, "aliases": list(spec.aliases), "license": spec.license,
        "citation": spec.citation,
    }


@app.command()
def models(as_json: bool = JsonOpt) -> None:
    """List the models sfsep knows: stems, trained rate, weights size, cached or not, source."""
    from .hub import human_size
    from .registry import registry

    rows = [_model_row(spec) for spec in registry().values()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich import box

    table = Table(title="sfsep models", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for column in ("name", "family", "stems", "rate", "size", "cached", "source", "status"):
        table.add_column(column, overflow="fold", no_wrap=column == "name",
                         min_width={"family": 8, "stems": 14, "source": 8}.get(column))
    for row in rows:
        stems = ", ".join(row["stems"][:-1] + [f"({row['stems'][-1]})"] if row["residual_stem"] else row["stems"])
        if not row["files"]:
            size, cached, source = "-", "-", "built-in"
        else:
            size = (human_size(row["size_bytes"]) if row["size_bytes"] is not None
                    else f"~{human_size(row['size_estimate_bytes'])}" if row["size_estimate_bytes"] else "?")
            cached = ("[green]yes[/]" if row["cached"] else
                      f"{row['cached_files']}/{row['files']}" if row["cached_files"] else "no")
            source = ", ".join(sorted({item["host"].removeprefix("dl.").removesuffix(".com")
                                       for item in row["sources"]}))
        status = "[green]ready[/]" if row["available"] else "[yellow]not implemented yet[/]"
        table.add_row(row["name"], row["family"], stems,
                      "any" if row["trained_rate"] is None else str(row["trained_rate"]),
                      size, cached, source, status)
    console = _stdout()
    console.print(table)
    console.print("(stem) = the mixture minus the other stems. `sfsep models --json` has descriptions, "
                  "licenses and citations; `sfsep fetch NAME` downloads a model's weights.")


@app.command()
def fetch(
    names: Optional[List[str]] = typer.Argument(None, help="Models to download (names or aliases).",
                                                show_default=False),
    all_models: bool = typer.Option(False, "--all", help="Every model with published weights."),
    verify: bool = typer.Option(False, "--verify",
                                help="Re-hash cached files; alone: check the whole cache, with names: re-download "
                                     "files that fail."),
    check: bool = typer.Option(False, "--check",
                               help="Only ask each source and mirror whether it answers (HEAD); download nothing."),
) -> None:
    """Download and verify model weights into the cache (for offline use later)."""
    from . import hub
    from .errors import WeightsError
    from .registry import get_spec, registry

    if names and all_models:
        raise UsageError("give model names or --all, not both")
    if check and verify:
        raise UsageError("--check asks the hosts, --verify hashes the cache: give one of them")
    if not names and not all_models and not verify and not check:
        raise UsageError("name the models to fetch (`sfsep models` lists them), or pass --all, --verify or --check")
    console, err = _stdout(), _stderr()
    failures = 0
    if check:
        specs = [get_spec(name) for name in names] if names else list(registry().values())
        answering = asked = 0
        for spec in specs:
            for source in spec.weights:
                reaches = hub.probe(source)
                asked += len(reaches)
                answering += sum(reach.ok for reach in reaches)
                failures += not any(reach.ok for reach in reaches)
                for reach in reaches:
                    role = " (mirror)" if reach.mirror else ""
                    line = f"{spec.name}: {reach.label}{role} "
                    if reach.ok:
                        console.print(line + f"[green]answers[/] ({reach.detail})")
                    else:
                        err.print(line + f"[red]does not serve the file[/] ({reach.detail})")
        console.print(f"{answering} of {asked} source(s) answer; {failures} checkpoint(s) have no source that does")
        if failures:
            raise typer.Exit(1)
        return
    if verify and not names and not all_models:
        checked = 0
        for spec in registry().values():
            for source in spec.weights:
                for result in hub.verify_source(source):
                    checked += 1
                    if result.ok:
                        console.print(f"{spec.name}: {result.path} [green]ok[/] (sha256 {result.sha256[:16]}...)")
                    else:
                        failures += 1
                        err.print(f"[red]{spec.name}: {result.path} fails its check[/] ({result.problem}); "
                                  f"`sfsep fetch --verify {spec.name}` downloads it again")
        console.print(f"{checked} cached file(s) checked, {failures} failed ({hub.cache_dir()})")
        if failures:
            raise typer.Exit(1)
        return
    specs = list(registry().values()) if all_models else [get_spec(name) for name in names]
    for spec in specs:
        if not spec.weights:
            if not all_models:
                console.print(f"{spec.name}: built-in, no weights to fetch")
            continue
        for source in spec.weights:
            try:
                path = hub.ensure(source, progress=None, model=spec.name,
                                  log=lambda message: err.print(f"[yellow]{message}[/]"))
            except WeightsError as exc:
                failures += 1
                err.print(f"[red]error:[/] {exc}")
                continue
            console.print(f"{spec.name}: {source.cache_name} [green]ok[/] "
                          f"({hub.human_size(path.stat().st_size)}) {path}")
    if failures:
        raise typer.Exit(1)


@app.command()
def cache(action: str = typer.Argument(..., help="path: print the cache folder; clean: delete its contents.",
                                       show_default=False)) -> None:
    """Show or empty sfsep's weights cache ($SFSEP_CACHE, else $XDG_CACHE_HOME/sfsep, else ~/.cache/sfsep)."""
    from . import hub

    if action == "path":
        typer.echo(str(hub.cache_dir()))
        return
    if action == "clean":
        files, size = hub.clean_cache()
        _stdout().print(f"removed {files} file(s), {hub.human_size(size)}, from {hub.cache_dir()} "
                        f"(Hugging Face downloads stay in the Hugging Face cache; `hf cache` manages it)")
        return
    raise UsageError(f"sfsep cache {action}: use `sfsep cache path` or `sfsep cache clean`")


@app.command("eval")
def eval_command(
    musdb: Optional[Path] = typer.Option(None, "--musdb", help="MUSDB18-HQ folder (wav layout). Default: $MUSDB_PATH."),
    subset: str = typer.Option("test", "--subset", help="test | train | valid (musdb's 14-track validation split)."),
    tracks: Optional[int] = typer.Option(None, "--tracks", help="Evaluate only the first N tracks of the subset."),
    track: Optional[List[str]] = typer.Option(None, "--track", metavar="NAME",
                                              help="Evaluate this track (folder name); repeatable."),
    rates: str = typer.Option("8000,11025,16000,22050,32000,44100", "--rates",
                              help="Test sampling rates in Hz, comma-separated (each <= 44100)."),
    resamplers: str = typer.Option("conventional,noisy", "--resamplers",
                                   help="How each test-rate mixture is brought to the model's rate, comma-separated; "
                                        "'all' = conventional,noisy,noise (+ trainable where a kernel is trained). "
                                        "At the model's own rate nothing is resampled: that row is 'none'."),
    metrics: str = typer.Option("bsseval,sdr,si_sdr", "--metrics",
                                help="bsseval (museval's framewise v4), sdr (whole-signal), si_sdr; comma-separated."),
    model: Optional[str] = typer.Option(None, "--model", "-n",
                                        help="Model to evaluate (`sfsep models` lists them). Default: the default "
                                             "model of `separate`; classic and nmf need no weights."),
    out: Path = typer.Option(Path("eval"), "--out", "-o", help="Results go to OUT/<model>/."),
    force: bool = typer.Option(False, "--force", help="Recompute results that are already stored."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random resamplers (noisy, noise); each result's draw "
                                               "depends only on it, the track, the rate and the resampler."),
    sigma: float = SigmaOpt,
    snr: float = SnrOpt,
    gate_db: Optional[float] = GateOpt,
    chunk_seconds: Optional[float] = ChunkOpt,
    overlap: Optional[float] = OverlapOpt,
    batch_size: Optional[int] = BatchOpt,
    shifts: int = ShiftsOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    offline: bool = OfflineOpt,
    weights: Optional[Path] = WeightsOpt,
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Score a model on MUSDB18-HQ at several sampling rates and resamplers (BSSEval v4, SDR, SI-SDR)."""
    from .evaluate.musdb import list_tracks
    from .evaluate.report import rich_table, summarize, summary_document, write_all
    from .evaluate.runner import evaluate, parse_metrics, parse_rates, parse_resamplers

    rate_list, resampler_list = parse_rates(rates), parse_resamplers(resamplers)
    metric_list = parse_metrics(metrics)
    settings = _settings("auto", sigma, snr, seed, chunk_seconds, overlap, batch_size, device, precision, gate_db,
                         shifts)
    selected = list_tracks(musdb, subset, tracks=tracks, track=track)  # dataset errors before any model load
    spec, config = _model_and_config(model, config, weights)
    separator = _load_separator(spec, model is not None or config is not None, device=settings.device,
                                weights=weights, offline=offline, config=config)
    model_id = separator.spec.name + (f" (weights {weights})" if weights else "") + (
        f" (config {config})" if config else "")
    folder = out / separator.spec.name
    err = _stderr()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=as_json) as progress:
        task = progress.add_task("eval", total=None, unit="results")
        chunks = progress.add_task("separating", total=None, unit="chunks", visible=False)

        def update(event) -> None:
            from rich.markup import escape

            label = f"{event.cell.track.name} @ {event.cell.rate} Hz, {event.cell.resampler}"
            progress.update(task, completed=event.done, total=event.total,
                            description=escape(("reused " if event.status == "skipped" else "") + label))
            if event.status == "started":
                progress.reset(chunks, total=None, visible=True)
            else:
                progress.update(chunks, visible=False)

        def update_chunks(done: int, total: int) -> None:
            progress.update(chunks, completed=done, total=total)

        run = evaluate(separator, selected, folder, rates=rate_list, resamplers=resampler_list,
                       metrics=metric_list, settings=settings, seed=seed, force=force, model_id=model_id,
                       progress=update, chunk_progress=update_chunks)
    summary = summarize(run)
    written = write_all(summary, folder)
    if as_json:
        typer.echo(json.dumps(summary_document(summary), indent=2))
        return
    console = _stdout()
    console.print(rich_table(summary))
    for note in summary.notes:
        console.print(f"note: {note}")
    console.print(f"{run.computed} result(s) computed, {run.skipped} reused (--force recomputes) in "
                  f"{run.seconds:.1f} s; per-track museval JSON under {folder / 'museval'}")
    console.print("wrote " + ", ".join(str(path) for path in written.values()))
    if "sdr_vs_rate.png" not in written:
        console.print("(no plot: install the plot extra, pip install 'sfsep[plot]', for sdr_vs_rate.png)")



# --------------------------------------------------------------------------------------------
# Trainable kernel and sampling-frequency diagnostics


@app.command("train-kernel")
def train_kernel_command(
    model: str = typer.Option(..., "--model", "-n", help="The separator to train the kernel for (it stays frozen).",
                              show_default=False),
    rate: int = typer.Option(..., "--rate", help="Input rate in Hz the kernel upsamples from (e.g. 8000).",
                             show_default=False),
    musdb: Optional[Path] = typer.Option(None, "--musdb", help="MUSDB18-HQ root (default: $MUSDB_PATH)."),
    epochs: int = typer.Option(100, "--epochs", help="Most epochs."),
    patience: int = typer.Option(10, "--patience", help="Stop after this many epochs without a better validation loss."),
    batch_size: int = typer.Option(4, "--batch-size", help="Segments per batch."),
    steps_per_epoch: int = typer.Option(32, "--steps-per-epoch", help="Random training batches per epoch."),
    valid_segments: int = typer.Option(2, "--valid-segments", help="Fixed segments per validation track."),
    segment_seconds: Optional[float] = typer.Option(None, "--segment-seconds",
                                                    help="Segment length (default: the model's chunk)."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    lr_decay: float = typer.Option(0.98, "--lr-decay", help="Learning-rate factor applied every --decay-every epochs."),
    decay_every: int = typer.Option(2, "--decay-every", help="Epochs between learning-rate decays."),
    clip_norm: float = typer.Option(5.0, "--clip-norm", help="Gradient clipping norm."),
    fit_steps: int = typer.Option(3000, "--fit-steps", help="Steps fitting the kernel to the windowed sinc first."),
    seed: int = typer.Option(0, "--seed", help="Seed for the initial fit and the random segments."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="Where to save (default: <cache>/kernels/<model>/<rate>.pt, which "
                                            "--resampler trainable reads)."),
    device: str = DeviceOpt,
    offline: bool = OfflineOpt,
    weights: Optional[Path] = WeightsOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Train the resampling kernel for a model and input rate on MUSDB18-HQ (the model stays frozen)."""
    from .training import TrainSettings, train_kernel_for_model

    settings = TrainSettings(rate=rate, segment_seconds=segment_seconds, batch_size=batch_size, epochs=epochs,
                             patience=patience, learning_rate=lr, lr_decay=lr_decay, decay_every=decay_every,
                             clip_norm=clip_norm, steps_per_epoch=steps_per_epoch, valid_segments=valid_segments,
                             fit_steps=fit_steps, seed=seed)
    settings.check()
    spec, config = _model_and_config(model, config, weights)
    separator = _load_separator(spec, True, device=device, weights=weights, offline=offline, config=config)
    err = _stderr()
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True)
    with bar:
        task = bar.add_task("fitting the kernel to the windowed sinc", total=None)

        def update(event) -> None:
            total = event.epochs * event.steps
            if event.phase == "step":
                bar.update(task, total=total, completed=(event.epoch - 1) * event.steps + event.step,
                           description=f"epoch {event.epoch}/{event.epochs} loss {event.train_loss:.3e} "
                                       f"(best valid {event.best_valid_loss:.3e})")
            elif event.phase == "valid":
                bar.update(task, total=total, completed=event.epoch * event.steps)
                err.print(f"epoch {event.epoch}: validation loss {event.valid_loss:.4e}")

        path, result = train_kernel_for_model(separator, musdb, settings, output=out, progress=update)
    console = _stdout()
    console.print(f"kernel for {spec.name} at {rate} Hz saved to {path}")
    console.print(f"  initial fit to the windowed sinc: max error {result.fit['max_abs']:.2e}, "
                  f"rms {result.fit['rms']:.2e}")
    console.print(f"  validation loss {result.valid_curve[0]:.4e} before training, "
                  f"{result.valid_curve[result.best_epoch]:.4e} at best epoch {result.best_epoch} "
                  f"of {len(result.train_curve)}{' (stopped early)' if result.stopped_early else ''}")
    if out is not None:
        from .resample.trainable import kernel_path

        console.print(f"  (saved outside the cache: copy it to {kernel_path(spec.name, rate)} for "
                      f"--resampler trainable)")


diagnose_app = typer.Typer(help="Sampling-frequency diagnostics on your own files (no reference stems needed).",
                           no_args_is_help=True, rich_markup_mode=None,
                           context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(diagnose_app, name="diagnose")


def _rates_option(text: str) -> list[int]:
    try:
        rates = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UsageError(f"--rates {text}: give whole numbers of Hz separated by commas (e.g. 8000,16000)")
    if not rates:
        raise UsageError("--rates: give at least one rate (e.g. 8000,16000)")
    return rates


def _diagnose_separator(model, weights, config, device, offline):
    spec, config = _model_and_config(model, config, weights)
    return _load_separator(spec, model is not None or config is not None, device=device, weights=weights,
                           offline=offline, config=config)


@diagnose_app.command("consistency")
def diagnose_consistency(
    files: List[Path] = typer.Argument(..., help="Audio files.", show_default=False),
    model: Optional[str] = ModelOpt,
    rates: str = typer.Option("8000,16000", "--rates", help="Low rates to test, comma-separated."),
    resamplers: str = typer.Option("conventional,noisy", "--resamplers",
                                   help="Resamplers to compare: some of conventional, noisy, noise, trainable."),
    sigma: float = SigmaOpt,
    snr: float = SnrOpt,
    seed: int = typer.Option(0, "--seed", help="Seed for the random resamplers."),
    device: str = DeviceOpt,
    offline: bool = OfflineOpt,
    weights: Optional[Path] = WeightsOpt,
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """How far the model's output at low rates departs from its own full-band output (dB, higher is closer).

    A proxy without references: the file is separated at the model's rate, and separately brought
    down to each rate, separated with each resampler and compared below rate/2 (see the README).
    """
    from . import audio as audio_io
    from .diagnose import consistency, summarize_consistency
    from .resample import METHODS

    rate_list = _rates_option(rates)
    names = [item.strip() for item in resamplers.split(",") if item.strip()]
    for name in names:
        if name not in METHODS or name == "none":
            raise UsageError(f"--resamplers {name}: use some of conventional, noisy, noise, trainable")
    settings = _settings("auto", sigma, snr, seed, None, None, None, device, "fp32")
    for path in files:
        audio_io.check_input(path)
    separator = _diagnose_separator(model, weights, config, device, offline)
    rows = []
    for path in files:
        audio, file_rate = audio_io.read(path)
        rows += consistency(separator, audio, file_rate, rate_list, names, settings=settings, name=str(path))
    summary = summarize_consistency(rows)
    if as_json:
        typer.echo(json.dumps({"rows": [row.__dict__ for row in rows],
                               "summary": [{"rate": r, "resampler": m, **v} for (r, m), v in summary.items()]},
                              indent=2))
        return
    stems = [key for key in next(iter(summary.values())) if key != "mean"]
    table = Table(title=f"sfsep diagnose consistency: {separator.name}, {len(files)} file(s) "
                        f"(SDR-style dB vs the model's full-band output, below rate/2; higher is closer)")
    for column in ["rate", "resampler", *stems, "mean"]:
        table.add_column(column, justify="left" if column == "resampler" else "right")
    for rate in sorted({r for r, _ in summary}):
        best = max((m for r, m in summary if r == rate), key=lambda m: summary[(rate, m)]["mean"])
        for (r, method), values in summary.items():
            if r != rate:
                continue
            mark = " *" if method == best and len(names) > 1 else ""
            table.add_row(str(rate), method + mark, *[f"{values[s]:.2f}" for s in stems], f"{values['mean']:.2f}")
    console = _stdout()
    console.print(table)
    console.print("* closest to the full-band output at that rate. This is a proxy (no references): it measures "
                  "consistency with the model's own full-band output, not separation quality.")


@diagnose_app.command("lee")
def diagnose_lee(
    files: List[Path] = typer.Argument(..., help="Audio files.", show_default=False),
    model: Optional[str] = ModelOpt,
    rates: str = typer.Option("8000,16000", "--rates", help="Rates whose band above rate/2 is removed."),
    device: str = DeviceOpt,
    offline: bool = OfflineOpt,
    weights: Optional[Path] = WeightsOpt,
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Our local equivariance error for rate changes (0 = output below rate/2 ignores the band above)."""
    from . import audio as audio_io
    from .diagnose import local_equivariance_error

    rate_list = _rates_option(rates)
    for path in files:
        audio_io.check_input(path)
    separator = _diagnose_separator(model, weights, config, device, offline)
    loaded = [audio_io.read(path) for path in files]
    results = local_equivariance_error(separator, loaded, rate_list)
    if as_json:
        typer.echo(json.dumps([result.__dict__ for result in results], indent=2))
        return
    stems = list(results[0].per_stem) if results else []
    table = Table(title=f"sfsep diagnose lee: {separator.name}, {len(files)} file(s) (sfsep's own LEE definition)")
    for column in ["rate", "LEE", *stems]:
        table.add_column(column, justify="right")
    for result in results:
        table.add_row(str(result.rate), f"{result.lee:.4f}", *[f"{result.per_stem[s]:.4f}" for s in stems])
    console = _stdout()
    console.print(table)
    console.print("LEE(r) = ||S(model(x_r)) - S(model(x))|| / ||S(model(x))||, S the magnitude STFT of the stems "
                  "below r/2, x_r the input with its band above r/2 removed; mean over files (see the README).")


@diagnose_app.command("spectrum")
def diagnose_spectrum(
    file: Path = typer.Argument(..., help="Audio file.", show_default=False),
    rate: int = typer.Option(..., "--rate", help="Input rate to simulate (the file is brought down to it).",
                             show_default=False),
    model: Optional[str] = typer.Option(None, "--model", "-n",
                                        help="Model whose rate is the target (and whose trained kernel is shown)."),
    target_rate: Optional[int] = typer.Option(None, "--target-rate", help="Upsample to this rate instead."),
    sigma: float = SigmaOpt,
    snr: float = SnrOpt,
    seed: int = typer.Option(0, "--seed", help="Seed for the random resamplers."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of kernels and spectrograms here "
                                                             "(needs matplotlib: sfsep[plot])."),
    as_json: bool = JsonOpt,
) -> None:
    """Energy each resampler puts above the input's Nyquist frequency: kernels and the resampled file."""
    from . import audio as audio_io
    from .diagnose import plot_spectrum, spectrum_report
    from .errors import ResampleError
    from .registry import DEFAULT_MODEL, get_spec
    from .resample.trainable import kernel_path, load_trained_kernel

    spec = get_spec(model or DEFAULT_MODEL)
    target = target_rate or spec.trained_rate
    if target is None:
        raise UsageError(f"--model {spec.name} runs at any rate; pass --target-rate")
    audio, file_rate = audio_io.read(file)
    trained = None
    if kernel_path(spec.name, rate).is_file() and target == spec.trained_rate:
        try:
            trained = load_trained_kernel(spec.name, rate)
        except ResampleError as exc:
            _stderr().print(f"[yellow]{exc}[/]")
    report = spectrum_report(audio, file_rate, rate, target, sigma=sigma, snr_db=snr, seed=seed,
                             trained_kernel=trained)
    written = plot_spectrum(report, plot, title=f"{file.name}: {rate} Hz -> {target} Hz") if plot else None
    if as_json:
        typer.echo(json.dumps({"rate": rate, "target_rate": target, "strategies": report.rows(),
                               "plot": str(written) if written else None}, indent=2))
        return
    table = Table(title=f"sfsep diagnose spectrum: {file.name}, {rate} Hz -> {target} Hz "
                        f"(energy above {rate / 2000:g} kHz, dB of the total)")
    stopband = f"above {1.25 * rate / 2000:g} kHz"
    for column in ("resampler", "kernel", f"kernel {stopband}", "resampled file", f"file {stopband}"):
        table.add_column(column, justify="left" if column == "resampler" else "right")
    for row in report.rows():
        if row["kernel_above_db"] is None:
            kernel_texts = ["as conv.", "as conv."]
        else:
            kernel_texts = [f"{row['kernel_above_db']:.1f}", f"{row['kernel_stopband_db']:.1f}"]
        table.add_row(row["strategy"], *kernel_texts, f"{row['signal_above_db']:.1f}",
                      f"{row['signal_stopband_db']:.1f}")
    console = _stdout()
    console.print(table)
    if trained is None:
        console.print(f"no trained kernel for {spec.name} at {rate} Hz (`sfsep train-kernel` makes one)")
    if written:
        console.print(f"plot written to {written}")


# --------------------------------------------------------------------------------------------
# Entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app and maps errors to messages and exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    _interrupted.clear()
    try:
        previous_handler = signal.signal(signal.SIGINT, _on_interrupt)
    except ValueError:  # called from a thread other than the main one: keep Python's handler
        previous_handler = None
    code: object = None
    try:
        code = app(args=args, prog_name="sfsep", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C inside a command into exit code 130, silently
            raise KeyboardInterrupt
    except SfsepError as exc:
        if debug:
            _stderr().print_exception()
        _stderr().print(f"[red]error:[/] {escape(str(exc))}")
        code = exc.exit_code
    except KeyboardInterrupt:
        _stderr().print("[red]interrupted[/]: no output was left half-written")
        code = 130
    except OSError as exc:  # what the system refused and nothing caught sooner: a full disk, a long name...
        if debug:
            _stderr().print_exception()
        from .errors import describe_os_error

        _stderr().print(f"[red]error:[/] {escape(describe_os_error(exc))}")
        code = 1
    except Exception as exc:  # click's own exceptions (typer may vendor click: match by class name)
        kinds = {cls.__name__ for cls in type(exc).__mro__}
        if "Exit" in kinds:
            code = getattr(exc, "exit_code", 0)
        elif "Abort" in kinds:
            _stderr().print("[red]aborted[/]")
            code = 130
        elif "ClickException" in kinds:
            exc.show()
            code = exc.exit_code
        else:
            raise
    finally:
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
