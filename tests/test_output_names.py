"""Output names, through the real entry point: a --filename template must tell every stem (and in
`batch` every input) apart, track names are data and never template fields, two inputs of one
run never share outputs, and `batch -R` does not take its own output tree as input."""

from pathlib import Path

import pytest
import soundfile as sf

from conftest import files_below, one_line_error, tone_mix


def _error_lines(result) -> list[str]:
    return [line for line in result.err.strip().splitlines() if line.startswith("error: ")]


def _one_line_error(result, code, *fragments):
    return one_line_error(result, *fragments, code=code)


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
    assert sorted(p.name for p in files_below(out)) == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]


def _two_songs_with_one_name(folder: Path) -> tuple[Path, Path]:
    """song.flac and song.wav with different content: the same track name, "song"."""
    folder.mkdir(parents=True, exist_ok=True)
    flac, wav = folder / "song.flac", folder / "song.wav"
    sf.write(flac, tone_mix(8000, 0.5, seed=1), 8000)
    sf.write(wav, 0.5 * tone_mix(8000, 0.5, seed=2)[::-1].copy(), 8000)
    return flac, wav


@pytest.mark.parametrize("overwrite", [False, True])
def test_batch_two_inputs_with_the_same_outputs_is_a_collision(run_cli, tmp_path, overwrite):
    music = tmp_path / "music"
    flac, wav = _two_songs_with_one_name(music)
    reference = tmp_path / "reference"
    assert run_cli("separate", flac, "--model", "classic", "--out", reference).code == 0
    out = tmp_path / "out"
    extra = ["--overwrite"] if overwrite else []
    result = run_cli("batch", music, "--model", "classic", "--out", out, *extra)
    assert result.code == 1, result
    errors = _error_lines(result)
    assert len(errors) == 1, result.err
    assert "song.wav" in errors[0] and "song.flac" in errors[0] and "collision" in errors[0], errors
    assert "1 done, 0 skipped, 1 failed" in result.out, result.out
    # the first input (song.flac, in name order) keeps its stems
    for stem in ("vocals", "drums", "bass", "other"):
        written = out / "classic" / "song" / f"{stem}.wav"
        assert written.read_bytes() == (reference / "classic" / "song" / f"{stem}.wav").read_bytes(), stem
    # and a rerun is the same collision, not a skip or a replacement of the first one's stems
    again = run_cli("batch", music, "--model", "classic", "--out", out, "--overwrite")
    assert again.code == 1 and "collision" in again.err, again
    assert (out / "classic" / "song" / "vocals.wav").read_bytes() == \
        (reference / "classic" / "song" / "vocals.wav").read_bytes()


def test_batch_trackext_tells_the_two_inputs_apart(run_cli, tmp_path):
    music = tmp_path / "music"
    _two_songs_with_one_name(music)
    out = tmp_path / "out"
    result = run_cli("batch", music, "--model", "classic", "--out", out, "--filename",
                     "{track}.{trackext}/{stem}.{ext}")
    assert result.code == 0, result
    assert (out / "classic" / "song.flac" / "vocals.wav").exists()
    assert (out / "classic" / "song.wav" / "vocals.wav").exists()


def test_separate_two_inputs_with_the_same_outputs_is_refused(run_cli, tmp_path):
    first, second = tmp_path / "one" / "song.wav", tmp_path / "two" / "song.wav"
    for index, path in enumerate((first, second)):
        path.parent.mkdir()
        sf.write(path, tone_mix(8000, 0.5, seed=index), 8000)
    out = tmp_path / "out"
    result = run_cli("separate", first, second, "--model", "classic", "--out", out)
    line = _one_line_error(result, 1, "collision", str(first), str(second))
    assert "{trackext}" in line or "rename" in line
    assert files_below(out) == []


def test_an_output_that_would_replace_the_input_is_refused(run_cli, tmp_path):
    out = tmp_path / "out"
    song = out / "classic" / "vocals.wav"  # a file named like a stem, in the folder its stems go to
    song.parent.mkdir(parents=True)
    sf.write(song, tone_mix(8000, 0.5), 8000)
    before = song.read_bytes()
    result = run_cli(song, "--model", "classic", "--out", out, "--filename", "{stem}.{ext}", "--overwrite")
    _one_line_error(result, 1, "collision", str(song))
    assert song.read_bytes() == before
    assert files_below(out) == [song]


# --------------------------------------------------------------------------------------------
# Item 2: braces in track names are data


def test_batch_track_names_with_braces_are_data(run_cli, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    names = ["{stem}.wav", "x{0}y.wav", "{track}}.wav", "{.wav"]
    for index, name in enumerate(names):
        sf.write(music / name, tone_mix(8000, 0.5, seed=index), 8000)
    out = tmp_path / "out"
    result = run_cli("batch", music, "--model", "classic", "--out", out)
    assert result.code == 0, result
    assert f"{len(names)} done, 0 skipped, 0 failed" in result.out
    expected = sorted(out / "classic" / Path(name).stem / f"{stem}.wav" for name in names
                      for stem in ("vocals", "drums", "bass", "other"))
    assert files_below(out) == expected


def test_separate_track_name_with_braces_and_a_custom_template(run_cli, tmp_path):
    song = tmp_path / "x{0}y{stem}.wav"
    sf.write(song, tone_mix(8000, 0.5), 8000)
    out = tmp_path / "out"
    result = run_cli(song, "--model", "classic", "--out", out, "--filename", "{track}-{stem}.{ext}")
    assert result.code == 0, result
    assert (out / "classic" / "x{0}y{stem}-vocals.wav").exists()


# --------------------------------------------------------------------------------------------
# Item 7: batch -R never takes its own output tree as input


def test_batch_recursive_skips_the_output_folder_inside_the_input(run_cli, tmp_path):
    music = tmp_path / "music"
    (music / "sub").mkdir(parents=True)
    sf.write(music / "a.wav", tone_mix(8000, 0.5, seed=1), 8000)
    sf.write(music / "sub" / "b.wav", tone_mix(8000, 0.5, seed=2), 8000)
    out = music / "stems"
    first = run_cli("batch", music, "-R", "--model", "classic", "--out", out)
    assert first.code == 0 and "2 done, 0 skipped, 0 failed" in first.out, first
    again = run_cli("batch", music, "-R", "--model", "nmf", "--out", out)
    assert again.code == 0 and "2 done, 0 skipped, 0 failed" in again.out, again
    third = run_cli("batch", music, "-R", "--model", "classic", "--out", out)
    assert third.code == 0 and "0 done, 2 skipped, 0 failed" in third.out, third
    assert not (out / "classic" / "stems").exists() and not (out / "nmf" / "stems").exists()


def test_batch_recursive_with_the_input_folder_as_output(run_cli, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    sf.write(music / "a.wav", tone_mix(8000, 0.5), 8000)
    assert run_cli("batch", music, "-R", "--model", "classic", "--out", music).code == 0
    again = run_cli("batch", music, "-R", "--model", "classic", "--out", music)
    assert again.code == 0 and "0 done, 1 skipped, 0 failed" in again.out, again
    assert not (music / "classic" / "classic").exists()


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
