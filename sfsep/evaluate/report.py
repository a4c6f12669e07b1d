"""Results of `sfsep eval` as tables, files and a plot.

`summarize(run)` turns the per-track records of an `EvalRun` (sfsep.evaluate.runner) into
statistics over tracks for each row (test rate x resampler), target and metric: the median
over tracks of the per-track values (for BSSEval, each track's median over frames: museval's
"median of medians"), the mean and its standard error (sample std / sqrt(n)), the count of
tracks with a value (a track whose frames are all NaN has none and is left out, as museval's
pandas aggregation does).

Written files (`write_all`), in the run's folder:

    table.csv / table.md   rows rate x resampler, a column per target plus their mean; cells:
                           the headline metric's median over tracks (BSSEval SDR, else the
                           whole-signal SDR, else SI-SDR), in dB, like the study's Table 1
    scores.csv             every (rate, resampler, target, metric): median, mean, stderr, tracks
    summary.json           the run's settings, targets, tracks and the same statistics
    sdr_vs_rate.png        (with matplotlib, the `plot` extra) the headline metric versus the
                           test rate, one line per resampler, one panel per target

`rich_table(summary)` is the same table for the terminal.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from sfsep.audio import atomic_path, write_text_atomic
from sfsep.evaluate.bsseval import METRIC_NAMES, TrackAggregate
from sfsep.evaluate.runner import EvalRun, settings_summary

__all__ = [
    "Summary",
    "summarize",
    "aggregate_values",
    "table_rows",
    "rich_table",
    "markdown_table",
    "summary_document",
    "write_all",
    "plot_sdr_vs_rate",
    "HEADLINE_LABELS",
]

#: Human labels of the metric keys used in the summary.
HEADLINE_LABELS = {
    "bsseval.SDR": "BSSEval v4 SDR (median over tracks of the median over 1-s frames)",
    "sdr": "whole-signal SDR (median over tracks)",
    "si_sdr": "SI-SDR (median over tracks)",
}

_SHORT_LABELS = {"bsseval.SDR": "SDR", "sdr": "whole-signal SDR", "si_sdr": "SI-SDR"}


def aggregate_values(values: Sequence[float]) -> TrackAggregate:
    """Median, mean, standard error and count over the non-NaN values."""
    finite = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    count = int(finite.size)
    if count == 0:
        return TrackAggregate(math.nan, math.nan, math.nan, 0)
    stderr = float(finite.std(ddof=1) / math.sqrt(count)) if count > 1 else math.nan
    return TrackAggregate(float(np.median(finite)), float(finite.mean()), stderr, count)


@dataclass
class Summary:
    """Statistics over tracks. `stats[(resampler, rate)][target][metric]` is a TrackAggregate;
    metric keys are "bsseval.SDR", "bsseval.ISR", "bsseval.SIR", "bsseval.SAR", "sdr",
    "si_sdr" (those the run computed). `rows` lists (resampler, rate) in table order."""

    model: str
    subset: str
    targets: tuple[str, ...]
    metrics: tuple[str, ...]
    headline: str
    rows: list[tuple[str, int]]
    tracks: list[str]
    stats: dict[tuple[str, int], dict[str, dict[str, TrackAggregate]]]
    facts: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dataset: str | None = None
    """What the tracks are, for titles; None: MUSDB18-HQ and the subset."""

    @property
    def resamplers(self) -> list[str]:
        seen: list[str] = []
        for resampler, _ in self.rows:
            if resampler not in seen:
                seen.append(resampler)
        return seen

    def value(self, row: tuple[str, int], target: str, metric: str | None = None) -> float:
        metric = metric or self.headline
        aggregate = self.stats.get(row, {}).get(target, {}).get(metric)
        return math.nan if aggregate is None else aggregate.median


def _metric_keys(metrics: Sequence[str]) -> list[str]:
    keys: list[str] = []
    if "bsseval" in metrics:
        keys += [f"bsseval.{name}" for name in METRIC_NAMES]
    keys += [m for m in ("sdr", "si_sdr") if m in metrics]
    return keys


def _record_values(record: dict, target: str, key: str) -> float:
    scores = record.get("scores", {})
    if key.startswith("bsseval."):
        value = scores.get("bsseval", {}).get(target, {}).get(key.split(".", 1)[1])
    else:
        value = scores.get(key, {}).get(target)
    return math.nan if value is None else float(value)


def summarize(run: EvalRun) -> Summary:
    """Statistics over tracks for every row, target and metric of the run."""
    metrics = run.metrics
    keys = _metric_keys(metrics)
    headline = "bsseval.SDR" if "bsseval" in metrics else metrics[0]
    order = {name: index for index, name in enumerate(run.resamplers)}
    rows = sorted({(r.cell.resampler, r.cell.rate) for r in run.results},
                  key=lambda row: (row[1], order.get(row[0], -1)))
    targets = run.targets.targets
    stats: dict[tuple[str, int], dict[str, dict[str, TrackAggregate]]] = {}
    for row in rows:
        records = [r.record for r in run.results if (r.cell.resampler, r.cell.rate) == row]
        stats[row] = {
            target: {key: aggregate_values([_record_values(rec, target, key) for rec in records]) for key in keys}
            for target in targets
        }
    tracks: list[str] = []
    notes: list[str] = list(run.targets.notes) + list(run.notes)
    for result in run.results:
        cell = result.cell
        if cell.track.name not in tracks:
            tracks.append(cell.track.name)
        for note in result.record.get("notes", []):
            labelled = f"{cell.track.name} @ {cell.rate} Hz, {cell.resampler}: {note}"
            if note not in run.targets.notes and labelled not in notes:
                notes.append(labelled)
    return Summary(run.model, run.subset, targets, metrics, headline, rows, tracks, stats,
                   facts=settings_summary(run), notes=notes)


# ----------------------------------------------------------------------------------------
# Tables


def table_rows(summary: Summary, metric: str | None = None) -> list[list]:
    """[resampler, rate, value per target..., mean over targets] per row (floats, NaN kept)."""
    rows = []
    for row in summary.rows:
        values = [summary.value(row, target, metric) for target in summary.targets]
        finite = [v for v in values if not math.isnan(v)]
        mean = float(np.mean(finite)) if len(finite) == len(values) and finite else math.nan
        rows.append([row[0], row[1], *values, mean])
    return rows


def _header(summary: Summary) -> list[str]:
    return ["resampler", "rate", *summary.targets, "mean"]


def _cell(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _title(summary: Summary) -> str:
    dataset = summary.dataset or f"MUSDB18-HQ {summary.subset}"
    return (f"{summary.model} on {dataset} ({len(summary.tracks)} track"
            f"{'s' if len(summary.tracks) != 1 else ''}): {HEADLINE_LABELS.get(summary.headline, summary.headline)}"
            f", dB")


def markdown_table(summary: Summary) -> str:
    header = _header(summary)
    lines = [f"**{_title(summary)}**", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for row in table_rows(summary):
        lines.append("| " + " | ".join([row[0], f"{row[1]} Hz", *(_cell(v) for v in row[2:])]) + " |")
    lines.append("")
    lines.append("Rows: test rate x resampler (how the test-rate mixture is brought to the model's rate; "
                 "'none' where the test rate is the model's rate). mean: mean over the targets.")
    for note in summary.notes:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def rich_table(summary: Summary):
    """The table as a rich Table (for the terminal)."""
    from rich.table import Table

    table = Table(title=_title(summary))
    for index, name in enumerate(_header(summary)):
        table.add_column(name, justify="left" if index == 0 else "right")
    rows = table_rows(summary)
    for index, row in enumerate(rows):
        last_of_rate = index + 1 == len(rows) or rows[index + 1][1] != row[1]
        table.add_row(row[0], f"{row[1]} Hz", *(_cell(v) for v in row[2:]), end_section=last_of_rate)
    return table


# ----------------------------------------------------------------------------------------
# Files


def _json_number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def summary_document(summary: Summary) -> dict:
    results = []
    for row in summary.rows:
        for target in summary.targets:
            for metric, aggregate in summary.stats[row][target].items():
                results.append({
                    "resampler": row[0], "rate": row[1], "target": target, "metric": metric,
                    "median": _json_number(aggregate.median), "mean": _json_number(aggregate.mean),
                    "stderr": _json_number(aggregate.stderr), "tracks": aggregate.count,
                })
    return {
        "format": "sfsep-eval-summary/1",
        **summary.facts,
        "tracks": summary.tracks,
        "headline_metric": summary.headline,
        "table": {"columns": _header(summary),
                  "rows": [[r[0], r[1], *(_json_number(v) for v in r[2:])] for r in table_rows(summary)]},
        "results": results,
        "notes": summary.notes,
    }


def _write_text(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def _csv_text(rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(rows)
    return buffer.getvalue()


def write_all(summary: Summary, folder: str | os.PathLike, plot: bool = True) -> dict[str, Path]:
    """Write table.csv, table.md, scores.csv, summary.json and (if matplotlib is importable and
    `plot`) sdr_vs_rate.png into `folder`; returns name -> path of what was written."""
    folder = Path(folder)
    written: dict[str, Path] = {}
    table = [_header(summary)] + [[r[0], r[1], *("" if math.isnan(v) else f"{v:.4f}" for v in r[2:])]
                                  for r in table_rows(summary)]
    written["table.csv"] = folder / "table.csv"
    _write_text(written["table.csv"], _csv_text(table))
    written["table.md"] = folder / "table.md"
    _write_text(written["table.md"], markdown_table(summary))
    long_rows = [["resampler", "rate", "target", "metric", "median", "mean", "stderr", "tracks"]]
    for item in summary_document(summary)["results"]:
        long_rows.append([item["resampler"], item["rate"], item["target"], item["metric"],
                          *("" if item[k] is None else f"{item[k]:.4f}" for k in ("median", "mean", "stderr")),
                          item["tracks"]])
    written["scores.csv"] = folder / "scores.csv"
    _write_text(written["scores.csv"], _csv_text(long_rows))
    written["summary.json"] = folder / "summary.json"
    _write_text(written["summary.json"], json.dumps(summary_document(summary), indent=2) + "\n")
    if plot:
        path = plot_sdr_vs_rate(summary, folder / "sdr_vs_rate.png")
        if path is not None:
            written["sdr_vs_rate.png"] = path
    return written


def plot_sdr_vs_rate(summary: Summary, path: str | os.PathLike) -> Path | None:
    """The headline metric versus the test rate, a line per resampler, a panel per target.

    The model-rate cell ("none") belongs to every resampler's line (nothing is resampled
    there), so each line ends on it; a model that runs at any rate has only the "none" line.
    Returns None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path = Path(path)
    targets = list(summary.targets)
    lines = [name for name in summary.resamplers if name != "none"] or ["none"]
    shared = {rate for resampler, rate in summary.rows if resampler == "none"}
    columns = 2 if len(targets) == 4 else min(len(targets), 3)
    rows_count = -(-len(targets) // columns)
    figure, axes = plt.subplots(rows_count, columns, figsize=(4.2 * columns, 3.2 * rows_count), squeeze=False,
                                sharex=True)
    rates = sorted({rate for _, rate in summary.rows})
    for index, target in enumerate(targets):
        axis = axes[index // columns][index % columns]
        for name in lines:
            points = sorted(
                (rate, summary.value((resampler, rate), target))
                for resampler, rate in summary.rows
                if resampler == name or (resampler == "none" and rate in shared)
            )
            points = [(rate, value) for rate, value in points if not math.isnan(value)]
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        axis.set_title(target)
        axis.set_xscale("log")
        axis.set_xticks(rates)
        axis.set_xticklabels([f"{rate / 1000:g}k" for rate in rates], rotation=45)
        axis.minorticks_off()
        axis.ticklabel_format(axis="y", useOffset=False)
        axis.grid(True, alpha=0.3)
        if index % columns == 0:
            axis.set_ylabel(_SHORT_LABELS.get(summary.headline, summary.headline) + " (dB)")
        if index // columns == rows_count - 1:
            axis.set_xlabel("test sampling rate (Hz)")
    for index in range(len(targets), rows_count * columns):
        axes[index // columns][index % columns].set_visible(False)
    axes[0][0].legend(title="resampler", fontsize="small")
    figure.suptitle(f"{summary.model}: {HEADLINE_LABELS.get(summary.headline, summary.headline)}", fontsize="medium")
    figure.tight_layout()
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png", dpi=110)
    finally:
        plt.close(figure)
    return path


def closing_lines(summary: Summary, run, folder: Path, written: dict[str, Path]) -> list[str]:
    """What `sfsep eval` says after its table: the notes, what was computed or reused, the files
    written (the museval folder only when BSSEval was computed) and how to get the plot."""
    museval = f"; per-track museval JSON under {folder / 'museval'}" if "bsseval" in run.metrics else ""
    lines = [f"note: {note}" for note in summary.notes]
    lines.append(f"{run.computed} result(s) computed, {run.skipped} reused (--force recomputes) in {run.seconds:.1f} s"
                 f"{museval}")
    lines.append("wrote " + ", ".join(str(path) for path in written.values()))
    if "sdr_vs_rate.png" not in written:
        lines.append("(no plot: install the plot extra, pip install 'sfsep[plot]', for sdr_vs_rate.png)")
    return lines
