"""Output names, through the real entry point: a --filename template must tell every stem (and in
`batch` every input) apart, track names are data and never template fields, two inputs of one
run never share outputs, and `batch -R` does not take its own output tree as input."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import tone_mix


def _error_lines(result) -> list[str]:
    return [line for line in result.err.strip().splitlines() if line.startswith("error: ")]


def _one_line_error(result, code, *fragments):
    assert result.code == code, result
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _files_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --------------------------------------------------------------------------------------------
# Item 1: templates that cannot tell stems (or inputs) apart are refused before any work


@pytest.mark.parametrize("template", ["{track}.{ext}", "{trackext}.{ext}", "{model}/{track}.{ext}"])
def test_separate_refuses_a_template_without_stem(run_cli, wav_file, tmp_path, template):
    song = wav_file("song.wav")
    out = tmp_path / "out"
    result = run_cli("separate", song, "--model", "classic", "--out", out, "--filename", template)
    line = _one_line_error(result, 2, "--filename", "{stem}")
    assert template in line
    assert not out.exists()  # refused before any work: not even the output folder


def test_template_is_checked_before_the_model_is_loaded(run_cli, wav_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "empty-cache"))
    song = wav_file("song.wav")
    result = run_cli("separate", song, "--model", "htdemucs", "--offline", "--out", tmp_path / "out",
                     "--filename", "{track}.{ext}")
    _one_line_error(result, 2, "{stem}")


def test_batch_refuses_a_template_without_track(run_cli, wav_file, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    sf.write(music / "a.wav", tone_mix(8000, 0.5, seed=1), 8000)
    sf.write(music / "b.wav", tone_mix(8000, 0.5, seed=2), 8000)
    out = tmp_path / "out"
    result = run_cli("batch", music, "--model", "classic", "--out", out, "--filename", "{stem}.{ext}", "--overwrite")
    _one_line_error(result, 2, "--filename", "{track}")
    assert not out.exists()


def test_separate_of_several_files_refuses_a_template_without_track(run_cli, wav_file, tmp_path):
    first, second = wav_file("a.wav"), wav_file("b.wav")
    out = tmp_path / "out"
    result = run_cli("separate", first, second, "--model", "classic", "--out", out, "--filename", "{stem}.{ext}")
    _one_line_error(result, 2, "{track}")
    assert not out.exists()
    # one file needs no {track}
    single = run_cli("separate", first, "--model", "classic", "--out", out, "--filename", "{stem}.{ext}")
    assert single.code == 0, single
    assert sorted(p.name for p in _files_below(out)) == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]


# --------------------------------------------------------------------------------------------
# Item 13 (one part): a template without an extension


@pytest.mark.parametrize("template", ["{stem}", "{track}/{stem}", "{track}/{stem}/", "{stem}.{ext}.part"])
def test_template_without_the_extension_names_it(run_cli, wav_file, tmp_path, template):
    song = wav_file("song.wav")
    result = run_cli(song, "--model", "classic", "--out", tmp_path / "out", "--filename", template)
    line = _one_line_error(result, 2, "{ext}", "extension")
    assert "--format :" not in line and "sfsep writes" not in line


def test_template_extension_must_match_the_format(run_cli, wav_file, tmp_path):
    song = wav_file("song.wav")
    result = run_cli(song, "--model", "classic", "--out", tmp_path / "out", "--format", "flac",
                     "--filename", "{track}/{stem}.wav")
    _one_line_error(result, 2, ".wav", "flac", "{ext}")
    fine = run_cli(song, "--model", "classic", "--out", tmp_path / "out", "--filename", "{track}/{stem}.WAV")
    assert fine.code == 0, fine
