"""The command line, through its real entry point: commands, outputs and every bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import files_below, one_line_error


def test_separate_writes_stems_at_input_rate(run_cli, wav_file, tmp_path):
    song = wav_file("song.wav", rate=8000, seconds=1.0)
    out = tmp_path / "out"
    result = run_cli("separate", song, "--model", "classic", "--out", out)
    assert result.code == 0, result
    stems = sorted(p.name for p in (out / "classic" / "song").iterdir())
    assert stems == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    for stem in stems:
        info = sf.info(out / "classic" / "song" / stem)
        assert info.samplerate == 8000 and info.channels == 2 and info.frames == 8000
        assert info.subtype == "PCM_16"
    assert "8000 Hz" in result.out and "resampler none" in result.out


def test_default_command_and_subcommands_resolve(run_cli, wav_file, tmp_path):
    song = wav_file("song.wav")
    result = run_cli(song, "-n", "classic", "--out", tmp_path / "o")  # no sub-command: separate
    assert result.code == 0, result
    assert (tmp_path / "o" / "classic" / "song" / "vocals.wav").exists()
    result = run_cli("--model", "nmf", song, "--out", tmp_path / "o")  # options first
    assert result.code == 0, result
    assert (tmp_path / "o" / "nmf" / "song" / "bass.wav").exists()
    assert run_cli("models").code == 0
    assert run_cli("--help").code == 0
    helped = run_cli("separate", "--help")
    assert helped.code == 0 and "--resampler" in helped.out


def test_flac_24_bit_custom_filename_mono(run_cli, wav_file, tmp_path):
    song = wav_file("voice.wav", rate=16000, channels=1)
    out = tmp_path / "stems"
    result = run_cli("separate", song, "-n", "classic", "--out", out, "--format", "flac", "--bits", "24",
                     "--filename", "{track}-{stem}.{ext}")
    assert result.code == 0, result
    info = sf.info(out / "classic" / "voice-vocals.flac")
    assert info.subtype == "PCM_24" and info.channels == 1 and info.samplerate == 16000


def test_existing_output_is_skipped_with_a_note_then_overwritten(run_cli, wav_file, tmp_path):
    song = wav_file("song.wav")
    out = tmp_path / "o"
    assert run_cli(song, "--model", "classic", "--out", out).code == 0
    target = out / "classic" / "song" / "vocals.wav"
    before = target.stat().st_mtime_ns
    again = run_cli(song, "--model", "classic", "--out", out)
    assert again.code == 0 and "skipped" in again.err and "--overwrite" in again.err
    assert target.stat().st_mtime_ns == before
    assert run_cli(song, "--model", "classic", "--out", out, "--overwrite").code == 0
    assert target.stat().st_mtime_ns != before


@pytest.mark.parametrize("rate", [4000, 192000])
def test_extreme_rates_work(run_cli, wav_file, tmp_path, rate):
    song = wav_file(f"r{rate}.wav", rate=rate, seconds=0.5)
    result = run_cli(song, "--model", "classic", "--out", tmp_path / "o")
    assert result.code == 0, result
    assert sf.info(tmp_path / "o" / "classic" / f"r{rate}" / "drums.wav").samplerate == rate


def test_bad_inputs_give_one_line_errors_and_write_nothing(run_cli, wav_file, tmp_path):
    out = tmp_path / "out"
    one_line_error(run_cli(tmp_path / "missing.wav", "--out", out), "missing.wav", "no such file")
    folder = tmp_path / "folder"
    folder.mkdir()
    one_line_error(run_cli("separate", folder, "--out", out), "folder", "is a folder")
    text = tmp_path / "readme.wav"
    text.write_text("plain text, not audio\n" * 30)
    one_line_error(run_cli(text, "--out", out), "readme.wav", "not an audio file")
    whole = wav_file("whole.wav", rate=44100)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:30000])
    one_line_error(run_cli(cut, "--out", out), "cut.wav", "truncated")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    one_line_error(run_cli(empty, "--out", out), "empty.wav", "empty")
    data = np.zeros((4000, 2), np.float32)
    data[100, 1] = np.nan
    nan_file = wav_file("nan.wav", data=data, subtype="FLOAT")
    one_line_error(run_cli(nan_file, "-n", "classic", "--out", out), "nan.wav", "NaN")  # found when decoding
    six = wav_file("six.wav", channels=6)
    one_line_error(run_cli(six, "--out", out), "six.wav", "--downmix")
    one_line_error(run_cli(whole, "--out", out, "--model", "nope"), "unknown model 'nope'", "classic", "nmf")
    assert files_below(out) == []
    assert run_cli(six, "--model", "classic", "--out", out, "--downmix").code == 0
    assert sf.info(out / "classic" / "six" / "vocals.wav").channels == 2


def test_unwritable_output_folder(run_cli, wav_file, tmp_path):
    song = wav_file("song.wav")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    one_line_error(run_cli(song, "--model", "classic", "--out", blocker / "sub"), "cannot be written")


def test_usage_errors_exit_2(run_cli, wav_file, tmp_path):
    song = wav_file("song.wav")
    result = run_cli(song, "--out", tmp_path, "--format", "flac", "--bits", "32")
    one_line_error(result, "--bits 32")
    assert result.code == 2
    assert run_cli(song, "--resampler", "cubic", "--out", tmp_path).code == 2
    assert run_cli("separate", "--no-such-flag", song).code == 2
    assert files_below(tmp_path) == [song]


def test_batch_reports_failures_and_keeps_going(run_cli, wav_file, tmp_path):
    music = tmp_path / "music"
    wav_file("music/a.wav", rate=8000, seconds=0.5)
    wav_file("music/sub/b.wav", rate=16000, seconds=0.5)
    (music / "broken.wav").write_text("not audio")
    (music / "notes.txt").write_text("ignored: not an audio extension")
    out = tmp_path / "out"
    result = run_cli("batch", music, "-R", "--model", "classic", "--out", out, "--jobs", "2")
    assert result.code == 1, result
    assert "broken.wav" in result.err
    assert "2 done, 0 skipped, 1 failed" in result.out
    assert (out / "classic" / "a" / "vocals.wav").exists()
    assert sf.info(out / "classic" / "sub" / "b" / "vocals.wav").samplerate == 16000
    (music / "broken.wav").unlink()
    again = run_cli("batch", music, "-R", "--model", "classic", "--out", out, "--skip-existing", "--resampler", "noisy")
    assert again.code == 0, again
    assert "0 done, 2 skipped, 0 failed" in again.out


def test_batch_without_recursion_and_bad_folder(run_cli, wav_file, tmp_path):
    wav_file("music/sub/b.wav")
    one_line_error(run_cli("batch", tmp_path / "music", "-n", "classic", "--out", tmp_path / "o"), "no audio files", "-R")
    one_line_error(run_cli("batch", tmp_path / "nothing"), "no such folder")


def test_info_reports_rate_bandwidth_and_strategy(run_cli, wav_file, tmp_path):
    song = wav_file("song.wav", rate=22050)
    result = run_cli("info", song, "--json")
    assert result.code == 0, result
    record = json.loads(result.out)[0]
    assert record["rate"] == 22050 and record["channels"] == 2 and record["duration_s"] == 1.0
    assert 0 < record["bandwidth_hz"] <= 11025
    # the default model (htdemucs) is trained at 44.1 kHz: a 22.05 kHz input is upsampled noisily
    assert record["model"] == "htdemucs" and record["model_rate"] == 44100 and record["resampler"] == "noisy"
    classic = json.loads(run_cli("info", song, "--model", "classic", "--json").out)[0]
    assert classic["resampler"] == "none"  # classic runs at any rate
    text = run_cli("info", song)
    assert "bandwidth" in text.out and "22050 Hz" in text.out


def test_models_lists_classical(run_cli):
    result = run_cli("models", "--json")
    names = {row["name"] for row in json.loads(result.out)}
    assert {"classic", "nmf"} <= names


def test_console_script_and_readme_demo(tmp_path):
    """The installed `sfsep` script runs the bundled demo offline (the README's main command)."""
    demo = Path(__file__).resolve().parents[1] / "examples" / "demo_8k.wav"
    script = Path(sys.executable).with_name("sfsep")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SFSEP_OFFLINE": "1"}
    done = subprocess.run([str(script), str(demo), "--model", "classic", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sf.info(tmp_path / "classic" / "demo_8k" / "vocals.wav").samplerate == 8000
    bad = subprocess.run([str(script), str(tmp_path / "none.wav")], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error:") and "Traceback" not in bad.stderr


def test_gate_db_option_silences_quiet_stem_windows(run_cli, wav_file, tmp_path):
    song = wav_file("song.wav", rate=8000, seconds=1.0)
    plain = run_cli(song, "-n", "classic", "--out", tmp_path / "plain")
    gated = run_cli(song, "-n", "classic", "--out", tmp_path / "gated", "--gate-db", "0")  # 0 dB: only stems louder than the mix
    assert plain.code == 0 and gated.code == 0, gated
    zeros_plain = (sf.read(tmp_path / "plain" / "classic" / "song" / "bass.wav")[0] == 0).mean()
    zeros_gated = (sf.read(tmp_path / "gated" / "classic" / "song" / "bass.wav")[0] == 0).mean()
    assert zeros_gated > zeros_plain + 0.5


def test_default_model_is_htdemucs_and_its_missing_weights_suggest_classic(run_cli, wav_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))
    song = wav_file("song.wav")
    result = run_cli(song, "--offline", "--out", tmp_path / "o")
    one_line_error(result, "htdemucs", "not cached", "sfsep fetch htdemucs", "--model classic", "default model")
    assert not (tmp_path / "o").exists()


def test_bad_file_reported_before_any_model_is_loaded(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))
    # htdemucs has no weights here: the missing file must be what the user hears about
    one_line_error(run_cli(tmp_path / "gone.wav", "--offline"), "gone.wav", "no such file")


def test_shifts_option_validation(run_cli, wav_file, tmp_path):
    song = wav_file("song.wav")
    assert run_cli(song, "-n", "classic", "--shifts", "-1", "--out", tmp_path).code == 2


def _tiny_scnet(shared, tmp_path):
    """The tiny SCNet parity fixture as a user's checkpoint + MSST YAML config."""
    import torch
    import yaml

    data = torch.load(shared / "parity" / "scnet_tiny.pt", weights_only=True)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data["config"], sort_keys=False))
    torch.save({"state_dict": data["state_dict"]}, tmp_path / "tiny.ckpt")
    return tmp_path / "tiny.ckpt", tmp_path / "tiny.yaml"


def test_neural_model_end_to_end_at_8k_with_noisy_kernel(run_cli, wav_file, tmp_path, shared):
    """A real architecture (tiny SCNet weights) through the whole flow: 8 kHz in, noisy-kernel
    up to 44.1 kHz, chunked inference, stems back at 8 kHz."""
    ckpt, config = _tiny_scnet(shared, tmp_path)
    song = wav_file("phone.wav", rate=8000, seconds=0.5)
    out = tmp_path / "out"
    result = run_cli(song, "--model", "scnet", "--weights", ckpt, "--config", config, "--out", out, "--seed", "1")
    assert result.code == 0, result
    assert "resampler noisy" in result.out and "model at 44100 Hz" in result.out
    stems = sorted(p.name for p in (out / "scnet" / "phone").iterdir())
    assert stems == ["drums.wav", "vocals.wav"]
    info = sf.info(out / "scnet" / "phone" / "vocals.wav")
    assert info.samplerate == 8000 and info.frames == 4000
    one_line_error(run_cli(song, "--model", "scnet", "--weights", ckpt, "--config", config, "--out",
                            tmp_path / "none", "--resampler", "none"), "--resampler none", "8000 Hz", "44100 Hz")
    assert not (tmp_path / "none").exists()
