"""The `sfsep diagnose` commands as library calls on files: each checks its options and inputs
before any model is loaded, runs the measure, and has a table (a rich renderable) to show it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from .. import audio as audio_io
from ..errors import ResampleError, UsageError
from ..evaluate.runner import parse_rates
from ..pipeline import ModelChoice, Settings
from ..resample import METHODS
from .consistency import ConsistencyRow, consistency, summarize_consistency
from .lee import LeeResult, local_equivariance_error
from .spectrum import SpectrumReport, plot_spectrum, spectrum_report

log = logging.getLogger(__name__)


def parse_resamplers(text: str) -> list[str]:
    """'conventional,noisy' -> the resamplers to compare (any but none)."""
    names = [item.strip() for item in text.split(",") if item.strip()]
    for name in names:
        if name not in METHODS or name == "none":
            raise UsageError(f"--resamplers {name}: use some of conventional, noisy, noise, trainable")
    return names


def run_consistency(files: Sequence[Path], model: ModelChoice, rates: str | Sequence[int], resamplers: str, *,
                    sigma: float = 1e-3, snr_db: float = 20.0, seed: int = 0
                    ) -> tuple[list[ConsistencyRow], dict[tuple[int, str], dict[str, float]], str]:
    """`sfsep diagnose consistency`: (rows per file, rate and resampler; their summary; the model's name)."""
    rates = parse_rates(rates, maximum=None, default=None)
    names = parse_resamplers(resamplers)
    settings = Settings(sigma=sigma, snr_db=snr_db, seed=seed, device=model.device)
    for path in files:
        audio_io.check_input(path)
    separator = model.load()
    rows: list[ConsistencyRow] = []
    for path in files:
        audio, file_rate = audio_io.read(path)
        rows += consistency(separator, audio, file_rate, list(rates), names, settings=settings, name=str(path))
    return rows, summarize_consistency(rows), separator.name


def consistency_table(summary: dict[tuple[int, str], dict[str, float]], name: str, files: int):
    """The consistency summary as a table: a row per rate and resampler, the best one per rate starred."""
    from rich.markup import escape
    from rich.table import Table

    stems = [key for key in next(iter(summary.values())) if key != "mean"]
    table = Table(title=escape(f"sfsep diagnose consistency: {name}, {files} file(s) (SDR-style dB vs the model's "
                               f"full-band output, below rate/2; higher is closer)"))
    for column in ["rate", "resampler", *stems, "mean"]:
        table.add_column(column, justify="left" if column == "resampler" else "right")
    several = len({method for _, method in summary}) > 1
    for rate in sorted({r for r, _ in summary}):
        best = max((m for r, m in summary if r == rate), key=lambda m: summary[(rate, m)]["mean"])
        for (r, method), values in summary.items():
            if r == rate:
                mark = " *" if method == best and several else ""
                table.add_row(str(rate), method + mark, *[f"{values[s]:.2f}" for s in stems], f"{values['mean']:.2f}")
    return table


def run_lee(files: Sequence[Path], model: ModelChoice, rates: str | Sequence[int]) -> tuple[list[LeeResult], str]:
    """`sfsep diagnose lee`: the LEE per rate (mean over files), and the model's name."""
    rates = parse_rates(rates, maximum=None, default=None)
    for path in files:
        audio_io.check_input(path)
    separator = model.load()
    return local_equivariance_error(separator, [audio_io.read(path) for path in files], list(rates)), separator.name


def lee_table(results: Sequence[LeeResult], name: str, files: int):
    from rich.markup import escape
    from rich.table import Table

    stems = list(results[0].per_stem) if results else []
    table = Table(title=escape(f"sfsep diagnose lee: {name}, {files} file(s) (sfsep's own LEE definition)"))
    for column in ["rate", "LEE", *stems]:
        table.add_column(column, justify="right")
    for result in results:
        table.add_row(str(result.rate), f"{result.lee:.4f}", *[f"{result.per_stem[s]:.4f}" for s in stems])
    return table


def run_spectrum(file: Path, rate: int, model: str, *, target_rate: int | None = None, sigma: float = 1e-3,
                 snr_db: float = 20.0, seed: int = 0, plot: Path | None = None
                 ) -> tuple[SpectrumReport, int, bool, Path | None]:
    """`sfsep diagnose spectrum`: (the report, the target rate, whether a trained kernel was
    shown, the PNG written with `plot`)."""
    from ..registry import get_spec
    from ..resample.trainable import kernel_path, load_trained_kernel

    spec = get_spec(model)
    target = target_rate or spec.trained_rate
    if target is None:
        raise UsageError(f"--model {spec.name} runs at any rate; pass --target-rate")
    audio, file_rate = audio_io.read(file)
    trained = None
    if kernel_path(spec.name, rate).is_file() and target == spec.trained_rate:
        try:
            trained = load_trained_kernel(spec.name, rate)
        except ResampleError as exc:
            log.warning(str(exc))
    report = spectrum_report(audio, file_rate, rate, target, sigma=sigma, snr_db=snr_db, seed=seed,
                             trained_kernel=trained)
    written = plot_spectrum(report, plot, title=f"{file.name}: {rate} Hz -> {target} Hz") if plot else None
    return report, target, trained is not None, written


def spectrum_table(report: SpectrumReport, file: Path, rate: int, target: int):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"sfsep diagnose spectrum: {file.name}, {rate} Hz -> {target} Hz (energy above "
                               f"{rate / 2000:g} kHz, dB of the total)"))
    stopband = f"above {1.25 * rate / 2000:g} kHz"
    for column in ("resampler", "kernel", f"kernel {stopband}", "resampled file", f"file {stopband}"):
        table.add_column(column, justify="left" if column == "resampler" else "right")
    for row in report.rows():
        kernel = (["as conv.", "as conv."] if row["kernel_above_db"] is None
                  else [f"{row['kernel_above_db']:.1f}", f"{row['kernel_stopband_db']:.1f}"])
        table.add_row(row["strategy"], *kernel, f"{row['signal_above_db']:.1f}", f"{row['signal_stopband_db']:.1f}")
    return table
