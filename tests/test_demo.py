"""The demo model (issue 16): sfsep.demo's generator, the packaged weights (registry entry `demo`,
no download) and the commands that run it: separate (auto picks the noisy kernel at 8 kHz), eval,
diagnose, train-kernel --generated. Nothing here trains the separator; the regression test
recomputes the SDRs `python -m sfsep.demo.train --record` stored in sfsep/demo/validation.json."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import one_line_error
from sfsep import hub
from sfsep.demo.generate import RATE, STEMS, generate_clip, write_musdb_folder
from sfsep.errors import ModelError, WeightsError
from sfsep.registry import get_spec, spec_from_table
from test_eval import make_musdb

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "demo_8k.wav"
NOISY_REPORT = "resampler noisy (input is 8000 Hz, below the model's 44100 Hz"


def _recorded() -> dict:
    return json.loads(resources.files("sfsep").joinpath("demo", "validation.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# The generator


def test_clips_are_a_function_of_seed_split_and_index():
    first = generate_clip(3, "train", 5, seconds=1.0)
    assert first.shape == (len(STEMS), 2, RATE) and first.dtype == np.float32
    assert np.array_equal(first, generate_clip(3, "train", 5, seconds=1.0))
    assert not np.allclose(first, generate_clip(3, "valid", 5, seconds=1.0))  # the splits never share a clip
    assert not np.allclose(first, generate_clip(4, "train", 5, seconds=1.0))
    assert not np.allclose(first, generate_clip(3, "train", 6, seconds=1.0))
    mixture = first.sum(0)
    assert 0.3 < np.abs(mixture).max() < 1.0  # below full scale, not near silence
    with pytest.raises(ValueError, match="split"):
        generate_clip(0, "test", 0)


def test_stems_have_content_above_4_khz():
    """What an 8 kHz input loses: every clip's drums, vocals and other reach above 4 kHz."""
    frequencies = np.fft.rfftfreq(2 * RATE, 1 / RATE)
    for index in range(3):
        clip = generate_clip(0, "valid", index, seconds=2.0)
        for name, stem in zip(STEMS, clip):
            power = np.abs(np.fft.rfft(stem.mean(0))) ** 2
            high = power[frequencies > 4000].sum() / power.sum()
            assert np.isfinite(high)
            if name in ("drums", "vocals", "other"):
                assert high > 1e-4, (index, name, high)  # at most 40 dB below the stem


# --------------------------------------------------------------------------------------------
# The packaged model


def test_demo_is_packaged_small_and_half_precision():
    spec = get_spec("demo")
    assert spec.trained_rate == 44100 and spec.stems == ("vocals",) and spec.residual_stem == "other"
    (source,) = spec.weights
    assert hub.is_packaged(source) and hub.source_host(source) == "package"
    path = hub.ensure(source, offline=True, model="demo")  # no network, no cache
    assert path == hub.packaged_path(source) and path.stat().st_size < 4_000_000
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        tensors = [handle.get_tensor(key) for key in handle.keys()]
    assert {tensor.dtype for tensor in tensors} == {torch.float16}
    assert sum(tensor.numel() for tensor in tensors) <= 2_000_000


def test_packaged_weights_reproduce_the_recorded_validation_sdr(tmp_path):
    from sfsep.demo.train import RECORD_CELLS, scores_for_record

    recorded = _recorded()
    scores = scores_for_record(None, tmp_path, seed=recorded["seed"])
    assert scores["clips"] == recorded["clips"] and scores["seconds"] == recorded["seconds"]
    assert set(scores["sdr"]) == {f"{resampler}-{rate}" for resampler, rate in RECORD_CELLS}
    for row, values in recorded["sdr"].items():
        for stem, value in values.items():
            assert scores["sdr"][row][stem] == pytest.approx(value, abs=0.05), (row, stem)


def test_packaged_file_that_fails_its_check_is_one_error(monkeypatch, tmp_path):
    (source,) = get_spec("demo").weights
    damaged = tmp_path / "demo.safetensors"
    damaged.write_bytes(hub.packaged_path(source).read_bytes()[:-10])
    monkeypatch.setattr(hub, "packaged_path", lambda _source: damaged)
    with pytest.raises(WeightsError, match="shipped with sfsep, fail their check .*reinstall sfsep"):
        hub.ensure(source, model="demo")
    monkeypatch.setattr(hub, "packaged_path", lambda _source: tmp_path / "gone.safetensors")
    with pytest.raises(WeightsError, match="shipped with sfsep, are missing"):
        hub.ensure(source, model="demo")


@pytest.mark.parametrize("entry, fragment", [
    ({"packaged": "demo/x.safetensors"}, "full sha256"),
    ({"packaged": "demo/x.safetensors", "sha256": "ab12cd34"}, "full sha256"),
    ({"packaged": "/abs/x.safetensors", "sha256": "0" * 64}, "relative path inside the sfsep package"),
    ({"packaged": "../x.safetensors", "sha256": "0" * 64}, "relative path inside the sfsep package"),
    ({"packaged": "demo/x.safetensors", "sha256": "0" * 64, "url": "https://example.org/x"}, "drop url"),
])
def test_registry_checks_packaged_entries(entry, fragment):
    table = {"family": "bs_roformer", "stems": ["vocals"], "trained_rate": 44100, "weights": [entry]}
    with pytest.raises(ModelError, match=fragment):
        spec_from_table("mine", table)


# --------------------------------------------------------------------------------------------
# The commands, through the real entry point


def test_readme_command_picks_the_noisy_kernel_at_8_khz(run_cli, tmp_path):
    result = run_cli(EXAMPLE, "--model", "demo", "--out", tmp_path / "separated")
    assert result.code == 0, result
    assert NOISY_REPORT in " ".join(result.out.split()), result.out
    for stem in ("vocals", "other"):
        data, rate = sf.read(tmp_path / "separated" / "demo" / "demo_8k" / f"{stem}.wav")
        assert rate == 8000 and np.abs(data).max() > 1e-3


def test_auto_picks_noisy_for_generated_clips_at_8_khz(run_cli, tmp_path):
    from sfsep.resample import resample

    clip = torch.from_numpy(generate_clip(0, "valid", 0, seconds=2.0).sum(0))
    low = resample(clip, RATE, 8000).numpy().T
    path = tmp_path / "clip_8k.wav"
    sf.write(path, low, 8000, subtype="FLOAT")
    result = run_cli(path, "--model", "demo", "--resampler", "auto", "--seed", "1", "--json", "--out", tmp_path / "o")
    assert result.code == 0, result
    (document,) = json.loads(result.out)
    assert document["resampler"] == "noisy" and document["model_rate"] == 44100 and document["input_rate"] == 8000


def test_eval_runs_the_demo_like_any_model(run_cli, tmp_path):
    root = make_musdb(tmp_path / "musdb")
    out = tmp_path / "results"
    result = run_cli("eval", "--musdb", root, "--model", "demo", "--rates", "8000,44100",
                     "--resamplers", "conventional,noisy", "--metrics", "sdr", "--out", out)
    assert result.code == 0, result
    summary = json.loads((out / "demo" / "summary.json").read_text())
    assert summary["cells_computed"] == 2 * 3
    assert summary["table"]["columns"] == ["resampler", "rate", "vocals", "accompaniment", "mean"]
    rows = [(row[0], row[1]) for row in summary["table"]["rows"]]
    assert rows == [("conventional", 8000), ("noisy", 8000), ("none", 44100)]
    assert all(isinstance(value, float) for row in summary["table"]["rows"] for value in row[2:])


def test_eval_on_generated_clips_scores_the_demo_above_noise(tmp_path):
    """The demo model separates its own validation music: positive SDR for both targets at 44.1 kHz."""
    from sfsep.demo.train import demo_separator, evaluate_on_clips

    root = write_musdb_folder(tmp_path / "musdb", 0, "valid", 1, 2.0)
    summary = evaluate_on_clips(demo_separator(), root, tmp_path / "eval", rates=(44100,), resamplers=("noisy",))
    assert summary.rows == [("none", 44100)]
    assert summary.targets == ("vocals", "accompaniment")
    assert all(summary.value(("none", 44100), target) > 0 for target in summary.targets)
    from sfsep.evaluate.report import markdown_table

    title = markdown_table(summary).splitlines()[0]
    assert "generated clips (musdb)" in title and "MUSDB18-HQ" not in title, title


@pytest.mark.parametrize("command", ["consistency", "lee"])
def test_diagnose_runs_with_the_demo(run_cli, wav_file, command):
    path = wav_file("song.wav", rate=44100, seconds=2.0)
    result = run_cli("diagnose", command, path, "--model", "demo", "--rates", "8000")
    assert result.code == 0, result
    assert "8000" in result.out


def test_train_kernel_on_generated_clips_and_the_trainable_resampler_uses_it(run_cli, wav_file, tmp_path,
                                                                              monkeypatch):
    from sfsep.resample.trainable import kernel_path

    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))
    result = run_cli("train-kernel", "--model", "demo", "--generated", "2", "--rate", "8000", "--epochs", "1",
                     "--steps-per-epoch", "1", "--valid-segments", "1", "--fit-steps", "20")
    assert result.code == 0, result
    path = kernel_path("demo", 8000)
    assert path.is_file() and path.is_relative_to(tmp_path / "cache") and "kernel for demo at 8000 Hz saved" in result.out
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["stems"] == ["vocals"] and checkpoint["input_rate"] == 8000  # not the residual
    song = wav_file("song.wav", rate=8000, seconds=1.0)
    result = run_cli(song, "--model", "demo", "--resampler", "trainable", "--json", "--out", tmp_path / "out")
    assert result.code == 0, result
    assert json.loads(result.out)[0]["resampler"] == "trainable"


def test_train_kernel_takes_one_data_source(run_cli, tmp_path):
    result = run_cli("train-kernel", "--model", "demo", "--generated", "2", "--musdb", tmp_path, "--rate", "8000")
    one_line_error(result, "--generated and --musdb")
    result = run_cli("train-kernel", "--model", "demo", "--generated", "0", "--rate", "8000")
    one_line_error(result, "--generated 0")
