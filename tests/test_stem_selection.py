"""Stem selection: --stems, --two-stems with --other-method, and the {resampler} template field.

Through the real entry point (files read back) and through `separate_file` / `separate` with small
real models: the classic separator (any rate), the tiny SCNet parity fixture (8 kHz input, upsampled
to 44.1 kHz, so the stems come back through the down-resampler) and the tiny BSRNN fixture (a
vocals model whose `other` is the residual stem).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import tone_mix
from parity import load_fixture
from sfsep.models import build_model
from sfsep.pipeline import OutputOptions, Separator, Settings, separate, separate_file
from sfsep.registry import get_spec

FLOAT_TOLERANCE = 1e-6
"""--bits 32 stores float32 as is: vocals + (mixture - vocals) misses the mixture only by float32
rounding of the subtraction (|x| < 1: under 1.2e-7 per sample)."""

PCM16_TOLERANCE = 2.0 / 32768
"""--bits 16: each of the two stems is rounded to the nearest 16-bit step (half a step, 1/65536, each),
and libsndfile may scale float by 32767 on writing and 1/32768 on reading (x * 3.05e-5, under half a
step for these quiet signals): under two steps in all."""


def _read(path: Path) -> np.ndarray:
    data, _ = sf.read(path, dtype="float64", always_2d=True)
    return data


def _files_below(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _one_line_usage_error(result, *fragments: str) -> str:
    assert result.code == 2, result
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _tiny_scnet(shared: Path, folder: Path) -> tuple[str, ...]:
    """The tiny SCNet parity fixture (stems drums, vocals; 44.1 kHz) as a user's checkpoint + config."""
    import yaml

    data = torch.load(shared / "parity" / "scnet_tiny.pt", weights_only=True)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(data["config"], sort_keys=False))
    torch.save({"state_dict": data["state_dict"]}, folder / "tiny.ckpt")
    return ("--model", "scnet", "--weights", folder / "tiny.ckpt", "--config", folder / "tiny.yaml")


def _tiny_bsrnn() -> Separator:
    """The tiny BSRNN parity fixture: predicts vocals; `other` is the residual stem (mixture - vocals)."""
    fixture = load_fixture("bsrnn_tiny")
    config = dict(fixture["config"], _audio_params={"win_size": 1408 / 44100, "hop_size": 300 / 44100,
                                                    "batch_size": 3})
    spec = replace(get_spec("bsrnn"), config=config)
    module = build_model(spec.family, spec.config_copy())
    module.load_state_dict(fixture["state_dict"], strict=True)
    return Separator(spec, device="cpu", modules=[module])


# --------------------------------------------------------------------------------------------
# --two-stems ... --other-method minus: the two stems add up to the mixture


def test_two_stems_minus_sums_to_the_mixture_after_resampling(run_cli, wav_file, tmp_path, shared):
    """8 kHz in, the model at 44.1 kHz: vocals come back through the down-resampler, and no_vocals
    is the mixture as read minus them, aligned sample by sample (read back from the files)."""
    model = _tiny_scnet(shared, tmp_path)
    song = wav_file("phone.wav", rate=8000, seconds=0.4, subtype="FLOAT")
    out = tmp_path / "out"
    result = run_cli(song, *model, "--two-stems", "vocals", "--other-method", "minus", "--bits", "32",
                     "--out", out, "--seed", "1", "--json")
    assert result.code == 0, result
    summary = json.loads(result.out)[0]
    assert summary["resampler"] == "noisy" and summary["model_rate"] == 44100
    assert summary["stems"] == ["vocals", "no_vocals"]
    assert _files_below(out) == ["scnet/phone/no_vocals.wav", "scnet/phone/vocals.wav"]
    assert any("mixture minus 'vocals'" in note for note in summary["notes"])
    mixture = _read(song)
    vocals, rest = _read(out / "scnet/phone/vocals.wav"), _read(out / "scnet/phone/no_vocals.wav")
    assert vocals.shape == rest.shape == mixture.shape
    assert np.abs(vocals).max() > 1e-3 and np.abs(rest).max() > 1e-3  # neither side is empty
    assert np.abs(vocals + rest - mixture).max() <= FLOAT_TOLERANCE


@pytest.mark.parametrize("channels", [1, 2])
def test_two_stems_minus_sums_to_the_mixture_in_16_bit(run_cli, wav_file, tmp_path, channels):
    song = wav_file("song.wav", rate=11025, seconds=0.5, channels=channels)
    out = tmp_path / "out"
    result = run_cli("batch", song.parent, "-n", "classic", "--two-stems", "drums", "--other-method", "minus",
                     "--out", out)
    assert result.code == 0, result
    assert _files_below(out) == ["classic/song/drums.wav", "classic/song/no_drums.wav"]
    assert "drums, no_drums" in result.out
    mixture = _read(song)
    total = _read(out / "classic/song/drums.wav") + _read(out / "classic/song/no_drums.wav")
    assert total.shape == mixture.shape == (5512, channels)
    assert np.abs(total - mixture).max() <= PCM16_TOLERANCE


def test_a_residual_models_stems_are_selected_after_the_residual(tmp_path):
    """BSRNN predicts vocals; `other` is mixture - vocals at the model rate. Every selection gives
    the stems of the full run: `--stems other` still computes the residual, add sums it, minus
    subtracts vocals from the mixture at the input rate."""
    separator = _tiny_bsrnn()
    rate, length = 8000, 1601
    mix = torch.from_numpy(tone_mix(rate, length / rate, seed=3).T.copy())
    path = tmp_path / "in.wav"
    sf.write(path, mix.T.numpy(), rate, subtype="FLOAT")
    output = OutputOptions(out=tmp_path / "out", bits=32, clip="none", overwrite=True)

    def run(**selection):
        settings = Settings(resampler="conventional", **selection)
        result = separate_file(path, separator, output=output, settings=settings, block_frames=700)
        stems = {name: torch.from_numpy(_read(target).T.copy()) for name, target in zip(result.stems, result.outputs)}
        return result, stems

    result, full = run()
    assert result.stems == ["vocals", "other"] and "'other' is the mixture minus vocals" in result.notes[0]
    result, only = run(stems=["other"])
    assert result.stems == ["other"] and torch.equal(only["other"], full["other"])
    result, added = run(two_stems="vocals")  # add is the default, as in demucs
    assert result.stems == ["vocals", "no_vocals"]
    assert torch.equal(added["vocals"], full["vocals"]) and torch.equal(added["no_vocals"], full["other"])
    result, minus = run(two_stems="vocals", other_method="minus")
    assert (minus["vocals"] + minus["no_vocals"] - mix.double()).abs().max() <= FLOAT_TOLERANCE
    result, alone = run(stems=["vocals"])
    assert result.stems == ["vocals"] and torch.equal(alone["vocals"], full["vocals"])
    assert result.notes == []  # the residual's note only when the residual is returned


def test_two_stems_add_is_the_sum_of_the_other_stems():
    mix = torch.from_numpy(tone_mix(8000, 0.4, seed=1).T.copy())
    full = separate(mix, 8000, "classic").stems
    two = separate(mix, 8000, "classic", settings=Settings(two_stems="bass", other_method="add"))
    assert list(two.stems) == ["bass", "no_bass"]
    assert torch.equal(two.stems["bass"], full["bass"])
    expected = full["vocals"] + full["drums"] + full["other"]
    assert (two.stems["no_bass"] - expected).abs().max() <= 1e-6
    assert "'no_bass' is the sum of vocals, drums, other" in two.notes


# --------------------------------------------------------------------------------------------
# --stems


def test_stems_writes_only_those_and_equal_to_a_full_run(run_cli, wav_file, tmp_path):
    song = wav_file("song.wav", rate=8000, seconds=0.5)
    full, some = tmp_path / "full", tmp_path / "some"
    assert run_cli(song, "-n", "classic", "--out", full).code == 0
    result = run_cli(song, "-n", "classic", "--stems", "drums, vocals", "--out", some, "--json")
    assert result.code == 0, result
    summary = json.loads(result.out)[0]
    assert summary["stems"] == ["vocals", "drums"]  # the model's order
    assert [Path(p).name for p in summary["outputs"]] == ["vocals.wav", "drums.wav"]
    assert _files_below(some) == ["classic/song/drums.wav", "classic/song/vocals.wav"]
    for stem in ("vocals", "drums"):
        assert np.array_equal(_read(some / f"classic/song/{stem}.wav"), _read(full / f"classic/song/{stem}.wav"))


def test_batch_stems_writes_only_those(run_cli, wav_file, tmp_path):
    wav_file("music/a.wav", rate=8000, seconds=0.3)
    wav_file("music/b.wav", rate=16000, seconds=0.3)
    out = tmp_path / "out"
    result = run_cli("batch", tmp_path / "music", "-n", "classic", "--stems", "bass", "--out", out)
    assert result.code == 0, result
    assert _files_below(out) == ["classic/a/bass.wav", "classic/b/bass.wav"]
    assert "2 done, 0 skipped, 0 failed" in result.out


# --------------------------------------------------------------------------------------------
# Usage errors, before any work


@pytest.mark.parametrize("command", ["separate", "batch"])
@pytest.mark.parametrize("option", [("--stems", "vocals,guitar"), ("--two-stems", "guitar")])
def test_a_stem_the_model_lacks_is_a_usage_error_before_its_weights_load(run_cli, wav_file, tmp_path, monkeypatch,
                                                                         command, option):
    """htdemucs with an empty cache, offline: loading its weights would fail with exit 1; the
    selection is refused first, with the model's stems listed."""
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "empty-cache"))
    song = wav_file("music/song.wav")
    target = song if command == "separate" else song.parent
    out = tmp_path / "out"
    result = run_cli(command, target, "-n", "htdemucs", "--offline", *option, "--out", out)
    _one_line_usage_error(result, f"{option[0]} {option[1]}", "'guitar'", "drums, bass, other, vocals")
    assert not out.exists() and not (tmp_path / "empty-cache").exists()


def test_a_stem_a_users_config_lacks_is_a_usage_error_before_any_file(run_cli, wav_file, tmp_path, shared):
    """With --config the stems are the config's, known once it is loaded: refused then, before any file."""
    model = _tiny_scnet(shared, tmp_path)
    song = wav_file("song.wav")
    out = tmp_path / "out"
    result = run_cli(song, *model, "--stems", "bass", "--out", out)
    _one_line_usage_error(result, "--stems bass", "'scnet'", "drums, vocals")
    assert not out.exists()


@pytest.mark.parametrize("options, fragments", [
    (("--stems", "vocals", "--two-stems", "drums"), ("--stems", "--two-stems")),
    (("--other-method", "minus"), ("--other-method minus", "--two-stems")),
    (("--two-stems", "vocals", "--other-method", "subtract"), ("--other-method subtract", "add, minus, none")),
    (("--stems", " , "), ("--stems", "vocals, drums, bass, other")),
])
@pytest.mark.parametrize("command", ["separate", "batch"])
def test_contradictory_or_empty_selections_are_usage_errors(run_cli, wav_file, tmp_path, options, fragments, command):
    song = wav_file("music/song.wav")
    out = tmp_path / "out"
    result = run_cli(command, song if command == "separate" else song.parent, "-n", "classic", *options,
                     "--out", out)
    _one_line_usage_error(result, *fragments)
    assert not out.exists()


def test_the_library_refuses_a_stem_the_model_lacks():
    from sfsep.errors import UsageError

    mix = torch.zeros(2, 800)
    with pytest.raises(UsageError, match="its stems are vocals, drums, bass, other"):
        separate(mix, 8000, "classic", settings=Settings(two_stems="piano"))
    with pytest.raises(UsageError, match="exclude each other"):
        separate(mix, 8000, "classic", settings=Settings(stems=["vocals"], two_stems="vocals"))


# --------------------------------------------------------------------------------------------
# {resampler} in --filename


def test_runs_with_different_resamplers_sit_side_by_side(run_cli, wav_file, tmp_path, shared):
    """{resampler} is the resampler used, not the one asked for: auto at 8 kHz for a 44.1 kHz model is noisy."""
    model = _tiny_scnet(shared, tmp_path)
    song = wav_file("phone.wav", rate=8000, seconds=0.2)
    out = tmp_path / "out"
    for resampler in ("conventional", "auto"):
        result = run_cli(song, *model, "--resampler", resampler, "--seed", "2", "--out", out, "--stems", "vocals",
                         "--filename", "{track}/{resampler}/{stem}.{ext}")
        assert result.code == 0, result
    assert _files_below(out) == ["scnet/phone/conventional/vocals.wav", "scnet/phone/noisy/vocals.wav"]
    conventional, noisy = (_read(out / f"scnet/phone/{name}/vocals.wav") for name in ("conventional", "noisy"))
    assert not np.array_equal(conventional, noisy)


def test_batch_names_each_file_by_its_own_resampler(run_cli, wav_file, tmp_path):
    """classic runs at any rate: every file's resampler is `none`; a file that is not audio is
    reported in its row and the others are written."""
    wav_file("music/a.wav", rate=8000, seconds=0.2)
    wav_file("music/b.wav", rate=22050, seconds=0.2)
    (tmp_path / "music" / "c.wav").write_bytes(b"not audio at all")
    out = tmp_path / "out"
    result = run_cli("batch", tmp_path / "music", "-n", "classic", "--out", out, "--two-stems", "vocals",
                     "--filename", "{resampler}-{track}-{stem}.{ext}")
    assert result.code == 1, result
    assert _files_below(out) == ["classic/none-a-no_vocals.wav", "classic/none-a-vocals.wav",
                                 "classic/none-b-no_vocals.wav", "classic/none-b-vocals.wav"]
    assert "c.wav" in result.err and "2 done, 0 skipped, 1 failed" in result.out
