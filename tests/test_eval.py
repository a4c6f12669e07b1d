"""`sfsep eval`: the evaluation loop (sfsep/evaluate/runner.py), its report (report.py) and the
command, on a tiny MUSDB18-HQ-shaped folder written by the tests (synthetic mono stems, 2.5 s,
44.1 kHz; mono keeps BSSEval's 512-tap filter solve small)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sfsep.errors import ModelError, UsageError
from sfsep.evaluate import runner as eval_runner
from sfsep.evaluate.bsseval import TrackScores
from sfsep.evaluate.musdb import list_tracks
from sfsep.evaluate.report import summarize, table_rows, write_all
from sfsep.evaluate.runner import (
    Cell,
    cell_seed,
    evaluate,
    musdb_targets,
    parse_metrics,
    parse_rates,
    parse_resamplers,
    plan_cells,
)
from sfsep.models import build_model
from sfsep.pipeline import Separator, Settings
from sfsep.registry import ModelSpec
from sfsep.resample import METHODS

RATE = 44100
TRACKS = ("Alpha - First", "Beta - Second")
SECONDS = 2.5


def _stems(seed: int, seconds: float = SECONDS) -> dict[str, np.ndarray]:
    """Four non-silent synthetic sources: a vibrato voice, noise bursts, a bass tone, a chord."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    vocals = 0.2 * np.sin(2 * np.pi * (330 + 20 * np.sin(2 * np.pi * 5 * t)) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * t))
    drums = 0.3 * rng.standard_normal(t.size) * np.exp(-(t % 0.5) * 30)
    bass = 0.3 * np.sin(2 * np.pi * (55 + 5 * seed) * t)
    other = 0.1 * sum(np.sin(2 * np.pi * f * t) for f in (440, 554, 659))
    return {"vocals": vocals, "drums": drums, "bass": bass, "other": other}


def make_musdb(root: Path, names=TRACKS, subset_folder: str = "test") -> Path:
    for index, name in enumerate(names):
        folder = root / subset_folder / name
        folder.mkdir(parents=True, exist_ok=True)
        stems = _stems(index)
        stems["mixture"] = sum(stems.values())
        for stem, data in stems.items():
            sf.write(folder / f"{stem}.wav", data.astype(np.float32)[:, None], RATE, subtype="FLOAT")
    return root


@pytest.fixture
def musdb_root(tmp_path) -> Path:
    return make_musdb(tmp_path / "musdb")


def _pinned_separator(stems=("vocals", "drums", "bass", "other"), residual=None, module=None) -> Separator:
    """The classical separator pinned to 44.1 kHz: a stand-in for a neural model, so that the
    resamplers really change what the model sees."""
    spec = ModelSpec(name="pinned", family="classic", stems=tuple(stems), trained_rate=RATE, chunk_size=RATE,
                     overlap=0.25, chunk_style="fade", residual_stem=residual)
    module = module or build_model("classic", {"sample_rate": RATE})
    return Separator(spec, device="cpu", modules=[module])


class _FirstStems(torch.nn.Module):
    """A model that keeps the first `count` stems of the classical separator (a vocals-only model)."""

    def __init__(self, count: int, silence: int | None = None):
        super().__init__()
        self.inner = build_model("classic", {"sample_rate": RATE})
        self.count, self.silence = count, silence

    def forward(self, mix):
        stems = self.inner(mix)[:, : self.count].clone()
        if self.silence is not None:
            stems[:, self.silence] = 0
        return stems


class _CountingSeparate:
    """Wraps the runner's `separate` to count the separations a run performs."""

    def __init__(self, monkeypatch):
        self.calls = 0
        self._real = eval_runner.separate
        monkeypatch.setattr(eval_runner, "separate", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._real(*args, **kwargs)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns
            for p in sorted(folder.rglob("*.json")) if "records" in p.parts or "museval" in p.parts}


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as stream:
        return list(csv.reader(stream))


# ----------------------------------------------------------------------------------------
# End to end through the command


def test_cli_end_to_end_writes_table_json_plot_and_resumes(run_cli, musdb_root, tmp_path, monkeypatch):
    out = tmp_path / "results"
    counter = _CountingSeparate(monkeypatch)
    args = ["eval", "--musdb", musdb_root, "--model", "classic", "--rates", "8000,16000",
            "--resamplers", "conventional,noisy", "--out", out]
    result = run_cli(*args)
    assert result.code == 0, result
    # classic runs at any rate: the two resamplers collapse into one "none" cell per rate
    assert counter.calls == 2 * 2
    assert "4 result(s) computed, 0 reused" in result.out
    assert "8000 Hz" in result.out and "vocals" in result.out and "runs at any rate" in result.out

    folder = out / "classic"
    table = _read_csv(folder / "table.csv")
    assert table[0] == ["resampler", "rate", "vocals", "drums", "bass", "other", "mean"]
    assert [row[:2] for row in table[1:]] == [["none", "8000"], ["none", "16000"]]
    markdown = (folder / "table.md").read_text()
    assert "| resampler | rate | vocals | drums | bass | other | mean |" in markdown
    assert (folder / "sdr_vs_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["tracks"] == list(TRACKS) and summary["headline_metric"] == "bsseval.SDR"
    assert summary["rates"] == [8000, 16000] and summary["cells_computed"] == 4

    # one museval TrackStore JSON per track per (resampler, rate), frames of 1 s at that rate
    for rate in (8000, 16000):
        medians = {target: [] for target in ("vocals", "drums", "bass", "other")}
        for name in TRACKS:
            path = folder / "museval" / f"none-{rate}" / "test" / f"{name}.json"
            document = json.loads(path.read_text())  # bare NaN is accepted by json
            assert document["museval_version"].startswith("0.4.1")
            assert [t["name"] for t in document["targets"]] == list(medians)
            for target in document["targets"]:
                frames = target["frames"]
                assert len(frames) == int(SECONDS)  # the trailing half window is dropped
                assert frames[1]["time"] == 1.0 and frames[0]["duration"] == 1.0
                assert set(frames[0]["metrics"]) == {"SDR", "SIR", "SAR", "ISR"}
            for target, values in TrackScores.load(path).frame_medians().items():
                medians[target].append(values["SDR"])
        # the table's cell is the median over tracks of the per-track frame medians
        row = next(r for r in table[1:] if r[1] == str(rate))
        for column, target in enumerate(medians, start=2):
            assert float(row[column]) == pytest.approx(float(np.median(medians[target])), abs=1e-4)

    # rerun: nothing is recomputed, no result file is touched
    before = _mtimes(folder)
    assert len(before) == 2 * 4  # records + museval files for 4 cells
    counter.calls = 0
    result = run_cli(*args)
    assert result.code == 0, result
    assert counter.calls == 0 and "0 result(s) computed, 4 reused" in result.out
    assert _mtimes(folder) == before
    assert _read_csv(folder / "table.csv") == table

    # --force recomputes every cell and rewrites its files
    result = run_cli(*args, "--force")
    assert result.code == 0, result
    assert counter.calls == 4
    after = _mtimes(folder)
    assert all(after[key] > before[key] for key in before)

    # a changed setting makes the stored results stale: they are recomputed, not reused
    counter.calls = 0
    result = run_cli(*args, "--gate-db", "-40", "--metrics", "sdr,si_sdr")
    assert result.code == 0, result
    assert counter.calls == 4
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["headline_metric"] == "sdr" and summary["settings"]["gate_db"] == -40


def test_cli_results_are_keyed_by_the_data_they_come_from(run_cli, tmp_path, monkeypatch):
    """Issue 13 item 6: `--musdb A` then `--musdb B` into the same --out reported "1 reused" and
    printed A's score for B. A record is reused only for the same dataset folder and the same
    file contents (and model, weights, settings, sfsep version)."""
    first = make_musdb(tmp_path / "A", names=TRACKS[:1])
    second = tmp_path / "B" / "test" / TRACKS[0]
    second.mkdir(parents=True)
    for index, stem in enumerate(("vocals", "drums", "bass", "other", "mixture")):
        data, rate = sf.read(first / "test" / TRACKS[0] / f"{stem}.wav", dtype="float32")
        sf.write(second / f"{stem}.wav", 0.5 * data, rate, subtype="FLOAT")  # same track, other level
    out = tmp_path / "results"
    counter = _CountingSeparate(monkeypatch)
    common = ["--model", "classic", "--rates", "16000", "--metrics", "sdr", "--out", out, "--json"]

    def sdr(result) -> float:
        assert result.code == 0, result
        results = json.loads(result.out)["results"]
        return next(r["median"] for r in results if r["target"] == "vocals" and r["metric"] == "sdr")

    score_a = sdr(run_cli("eval", "--musdb", tmp_path / "A", *common))
    assert counter.calls == 1
    score_b = sdr(run_cli("eval", "--musdb", tmp_path / "B", *common))
    assert counter.calls == 2, "dataset B's results were taken from dataset A's records"
    # Same folder, same contents, files touched: reused without separating again.
    for path in second.iterdir():
        path.touch()
    assert sdr(run_cli("eval", "--musdb", tmp_path / "B", *common)) == score_b
    assert counter.calls == 2
    # Same folder, same sizes, other contents: recomputed.
    data, rate = sf.read(second / "vocals.wav", dtype="float32")
    sf.write(second / "vocals.wav", 0.9 * data, rate, subtype="FLOAT")
    sdr(run_cli("eval", "--musdb", tmp_path / "B", *common))
    assert counter.calls == 3
    assert score_a == sdr(run_cli("eval", "--musdb", tmp_path / "A", *common, "--force"))


def test_records_are_keyed_by_the_weights_and_the_sfsep_version(musdb_root, tmp_path, monkeypatch):
    """Other weights under the same model name (same spec, same model_id) are not reused, and
    neither are records written by another sfsep version."""
    tracks = list_tracks(musdb_root, "test", track=[TRACKS[0]])
    folder = tmp_path / "weights"
    options = dict(rates=(16000,), resamplers=("conventional",), metrics=("sdr",))

    class Scaled(torch.nn.Module):
        def __init__(self, gain: float):
            super().__init__()
            self.inner = build_model("classic", {"sample_rate": RATE})
            self.gain = torch.nn.Parameter(torch.tensor(gain))

        def forward(self, mix):
            return self.inner(mix) * self.gain

    first = evaluate(_pinned_separator(module=Scaled(1.0)), tracks, folder, **options)
    assert [r.status for r in first.results] == ["done"]
    same = evaluate(_pinned_separator(module=Scaled(1.0)), tracks, folder, **options)
    assert [r.status for r in same.results] == ["skipped"]
    other = evaluate(_pinned_separator(module=Scaled(0.5)), tracks, folder, **options)
    assert [r.status for r in other.results] == ["done"]
    monkeypatch.setattr(eval_runner, "__version__", "0.0.0-other")
    newer = evaluate(_pinned_separator(module=Scaled(0.5)), tracks, folder, **options)
    assert [r.status for r in newer.results] == ["done"]


@pytest.mark.parametrize("damage,fragment", [
    ("missing", "is missing bass.wav"),
    ("rate", "is at 22050 Hz"),
    ("length", "has 22050 samples but mixture.wav has"),
    ("layout", "is not a MUSDB18-HQ folder"),
])
def test_cli_broken_folder_is_one_clear_line(run_cli, tmp_path, damage, fragment):
    root = make_musdb(tmp_path / "musdb", names=TRACKS[:1])
    track = root / "test" / TRACKS[0]
    if damage == "missing":
        (track / "bass.wav").unlink()
    elif damage == "rate":
        sf.write(track / "drums.wav", np.zeros((1000, 1), np.float32), 22050)
    elif damage == "length":
        sf.write(track / "other.wav", np.full((22050, 1), 0.1, np.float32), RATE)
    else:
        (root / "test").rename(root / "tests")
    out = tmp_path / "results"
    result = run_cli("eval", "--musdb", root, "--model", "classic", "--rates", "8000", "--out", out)
    assert result.code == 1, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.err
    assert "Traceback" not in result.err and not out.exists()


def test_cli_usage_errors(run_cli, musdb_root, tmp_path):
    result = run_cli("eval", "--musdb", musdb_root, "--model", "classic", "--resamplers", "linear",
                     "--out", tmp_path / "o")
    assert result.code == 2 and "--resamplers: unknown resampler 'linear'" in result.err
    result = run_cli("eval", "--musdb", musdb_root, "--model", "classic", "--rates", "48000",
                     "--out", tmp_path / "o")
    assert result.code == 2 and "48000 Hz is out of range" in result.err
    result = run_cli("eval", "--musdb", musdb_root, "--model", "classic", "--track", "Alpha - Frist",
                     "--out", tmp_path / "o")
    assert result.code == 1 and "Did you mean" in result.err and "Alpha - First" in result.err


# ----------------------------------------------------------------------------------------
# The runner with a fixed-rate model: the resamplers matter


def test_fixed_rate_model_compares_resamplers(musdb_root, tmp_path):
    separator = _pinned_separator()
    tracks = list_tracks(musdb_root, "test", tracks=1)
    folder = tmp_path / "pinned"
    run = evaluate(separator, tracks, folder, rates=(8000, 44100), resamplers=("conventional", "noisy"),
                   metrics=("bsseval", "sdr"), seed=0)
    cells = [(r.cell.resampler, r.cell.rate) for r in run.results]
    assert cells == [("conventional", 8000), ("noisy", 8000), ("none", 44100)]  # deduped at 44.1 kHz
    records = {(r.cell.resampler, r.cell.rate): r.record for r in run.results}
    assert records[("conventional", 8000)]["strategy"] == "conventional"
    assert records[("noisy", 8000)]["strategy"] == "noisy"
    assert records[("none", 44100)]["strategy"] == "none"
    assert all(rec["model_rate"] == RATE for rec in records.values())
    # the noisy draw is seeded per cell, from (seed, track, rate, resampler) only
    assert records[("noisy", 8000)]["seed_used"] == cell_seed(0, Cell(tracks[0], 8000, "noisy"))
    assert records[("conventional", 8000)]["seed_used"] is None
    conventional = records[("conventional", 8000)]["scores"]["sdr"]
    noisy = records[("noisy", 8000)]["scores"]["sdr"]
    for target in conventional:  # the noisy kernel changes the result, slightly
        assert noisy[target] != conventional[target]
        assert abs(noisy[target] - conventional[target]) < 3.0

    summary = summarize(run)
    assert summary.rows == [("conventional", 8000), ("noisy", 8000), ("none", 44100)]
    rows = table_rows(summary)
    assert [row[:2] for row in rows] == [["conventional", 8000], ["noisy", 8000], ["none", 44100]]
    assert all(not math.isnan(v) for row in rows for v in row[2:])
    written = write_all(summary, folder)
    assert written["sdr_vs_rate.png"].stat().st_size > 1000

    # resuming with another kernel-noise level redoes only the noisy cell
    resumed = evaluate(separator, tracks, folder, rates=(8000, 44100), resamplers=("conventional", "noisy"),
                       metrics=("sdr",), seed=0, settings=Settings(sigma=2e-3))
    assert [(r.cell.resampler, r.status) for r in resumed.results] == [
        ("conventional", "skipped"), ("noisy", "done"), ("none", "skipped")]
    assert resumed.results[1].record["settings"]["sigma"] == 2e-3

    # the seed reproduces the noisy draw; another seed changes it
    again = evaluate(separator, tracks, tmp_path / "again", rates=(8000,), resamplers=("noisy",),
                     metrics=("sdr",), seed=0)
    other = evaluate(separator, tracks, tmp_path / "other", rates=(8000,), resamplers=("noisy",),
                     metrics=("sdr",), seed=1)
    assert again.results[0].record["scores"]["sdr"] == noisy
    assert other.results[0].record["scores"]["sdr"] != noisy


def test_trainable_rows_only_where_a_kernel_is_trained_and_redone_when_it_changes(musdb_root, tmp_path,
                                                                                 monkeypatch):
    from sfsep.resample.trainable import initial_kernel, kernel_path, save_kernel

    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))
    kernel, _ = initial_kernel(fit_steps=5)  # its quality does not matter here
    path = save_kernel(kernel, kernel_path("pinned", 8000))
    separator = _pinned_separator()
    tracks = list_tracks(musdb_root, "test", tracks=1)
    folder = tmp_path / "trainable"
    options = dict(rates=(8000, 16000), resamplers=parse_resamplers("all"), metrics=("sdr",))
    run = evaluate(separator, tracks, folder, **options)
    cells = [(r.cell.resampler, r.cell.rate) for r in run.results]
    assert cells == [("conventional", 8000), ("noisy", 8000), ("noise", 8000), ("trainable", 8000),
                     ("conventional", 16000), ("noisy", 16000), ("noise", 16000)]
    trainable = run.results[3].record
    assert trainable["strategy"] == "trainable" and trainable["kernel"]["path"] == str(path)
    assert trainable["scores"]["sdr"] != run.results[0].record["scores"]["sdr"]
    assert any("no kernel trained for pinned at 16000 Hz" in note for note in run.notes)

    with torch.no_grad():  # "retrained": the stored trainable result is stale, the others are not
        next(kernel.parameters()).add_(1e-3)
    save_kernel(kernel, path)
    again = evaluate(separator, tracks, folder, **options)
    assert [r.status for r in again.results] == ["skipped"] * 3 + ["done"] + ["skipped"] * 3


def test_an_interrupted_run_resumes_where_it_stopped(musdb_root, tmp_path):
    separator = _pinned_separator()
    tracks = list_tracks(musdb_root, "test")
    folder = tmp_path / "interrupted"
    options = dict(rates=(8000, 16000), resamplers=("conventional",), metrics=("sdr",))
    started = []

    def stop_at_third(event):
        if event.status == "started":
            started.append(event.cell)
            if len(started) == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(separator, tracks, folder, progress=stop_at_third, **options)
    assert len(list((folder / "records").rglob("*.json"))) == 2  # each result was stored as it finished
    assert not list(folder.rglob("*.part"))
    run = evaluate(separator, tracks, folder, **options)
    assert [r.status for r in run.results] == ["skipped", "skipped", "done", "done"]


def test_vocals_model_is_scored_on_vocals_and_accompaniment(musdb_root, tmp_path):
    separator = _pinned_separator(stems=("vocals",), residual="other", module=_FirstStems(1))
    tracks = list_tracks(musdb_root, "test", tracks=1)
    run = evaluate(separator, tracks, tmp_path / "vocals", rates=(RATE,), metrics=("sdr", "si_sdr"))
    record = run.results[0].record
    assert set(record["scores"]["sdr"]) == {"vocals", "accompaniment"}
    assert any("accompaniment" in note and "not against MUSDB's 'other'" in note for note in record["notes"])
    # the residual (mixture - vocals) is compared with drums + bass + other: check one number by hand
    track = tracks[0]
    mixture, sources = track.mixture(), track.sources()
    from sfsep.pipeline import separate

    vocals = separate(mixture, RATE, separator, "none").stems["vocals"]
    reference = sources["drums"] + sources["bass"] + sources["other"]
    estimate = mixture - vocals
    expected = 10 * math.log10((reference.double().square().sum() + 1e-8)
                               / ((reference - estimate).double().square().sum() + 1e-8))
    assert record["scores"]["sdr"]["accompaniment"] == pytest.approx(expected, abs=1e-3)


def test_silent_estimate_gives_nan_frames_not_a_crash(musdb_root, tmp_path):
    separator = _pinned_separator(module=_FirstStems(4, silence=2))  # bass always zero
    tracks = list_tracks(musdb_root, "test", tracks=1)
    folder = tmp_path / "silent"
    run = evaluate(separator, tracks, folder, rates=(RATE,), metrics=("bsseval",))
    stored = TrackScores.load(folder / "museval" / f"none-{RATE}" / "test" / f"{TRACKS[0]}.json")
    assert all(math.isnan(v) for metrics in stored.targets.values() for v in metrics["SDR"])
    assert len(stored.targets["bass"]["SDR"]) == int(SECONDS)
    assert any("all frames NaN" in note for note in run.results[0].record["notes"])
    summary = summarize(run)
    assert math.isnan(summary.value(("none", RATE), "bass"))
    assert "| - |" in (write_all(summary, folder, plot=False) and (folder / "table.md").read_text())


# ----------------------------------------------------------------------------------------
# Options and targets


def test_parse_options():
    assert parse_rates(None) == (8000, 11025, 16000, 22050, 32000, 44100)
    assert parse_rates("16000, 8000,16000") == (8000, 16000)
    with pytest.raises(UsageError, match="out of range"):
        parse_rates("96000")
    with pytest.raises(UsageError, match="not a whole number"):
        parse_rates("8k")
    assert parse_resamplers("noisy,conventional,noisy") == ("noisy", "conventional")
    expected_all = ("conventional", "noisy", "noise") + (("trainable",) if "trainable" in METHODS else ())
    assert parse_resamplers("all") == expected_all
    with pytest.raises(UsageError, match="'none' is used by itself"):
        parse_resamplers("none")
    assert parse_metrics("si-sdr,bsseval") == ("bsseval", "si_sdr")
    with pytest.raises(UsageError, match="unknown metric"):
        parse_metrics("pesq")


def test_plan_dedupes_at_the_trained_rate_and_skips_untrained_kernels(musdb_root):
    track = list_tracks(musdb_root, "test", tracks=1)[0]
    cells = plan_cells([track], (8000, 16000, 44100), ("conventional", "trainable"), 44100,
                       kernel_exists=lambda rate: rate == 16000)
    assert [(c.resampler, c.rate) for c in cells] == [
        ("conventional", 8000), ("conventional", 16000), ("trainable", 16000), ("none", 44100)]
    cells = plan_cells([track], (8000, 44100), ("conventional", "noisy"), None)
    assert [(c.resampler, c.rate) for c in cells] == [("none", 8000), ("none", 44100)]
    assert isinstance(cells[0], Cell) and cells[0].config_name == "none-8000"
    seeds = {cell_seed(0, Cell(track, rate, name)) for rate in (8000, 16000) for name in ("noisy", "noise")}
    assert len(seeds) == 4 and cell_seed(0, Cell(track, 8000, "noisy")) == cell_seed(0, Cell(track, 8000, "noisy"))
    assert cell_seed(1, Cell(track, 8000, "noisy")) != cell_seed(0, Cell(track, 8000, "noisy"))


def test_target_mapping():
    four = musdb_targets(("drums", "bass", "other", "vocals"))
    assert four.targets == ("vocals", "drums", "bass", "other") and not four.notes
    six = musdb_targets(("drums", "bass", "other", "vocals", "guitar", "piano"), model="six")
    assert six.estimates["other"] == ("other", "guitar", "piano") and six.notes
    residual = musdb_targets(("vocals",), "other", model="voc")
    assert residual.targets == ("vocals", "accompaniment")
    assert residual.estimates["accompaniment"] == ("other",)
    assert residual.references["accompaniment"] == ("drums", "bass", "other")
    two = musdb_targets(("vocals", "instrumental"))
    assert two.estimates["accompaniment"] == ("instrumental",)
    partial = musdb_targets(("vocals", "drums", "guitar"), model="p")
    assert partial.targets == ("vocals", "drums") and "guitar" in partial.notes[0]
    with pytest.raises(ModelError, match="none of which is a MUSDB source"):
        musdb_targets(("speech", "noise"), model="denoiser")
