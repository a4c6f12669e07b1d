"""What the command line prints: -q/-v, JSON lines, several files with a bad one, `models`,
exit codes for usage errors, hints that name an extra, and nothing stray on a piped stderr."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SFSEP_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def _stems(out: Path, track: str) -> list[str]:
    folder = out / "classic" / track
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_quiet_prints_nothing_on_success_and_still_reports_errors(run_cli, wav_file, tmp_path):
    song = wav_file("song.wav")
    quiet = run_cli("-q", song, "-n", "classic", "--out", tmp_path / "o")
    assert quiet.code == 0 and quiet.out == "" and quiet.err == "", quiet
    assert _stems(tmp_path / "o", "song") == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    skipped = run_cli("separate", song, "-n", "classic", "--out", tmp_path / "o", "--quiet")  # -q after the command
    assert skipped.code == 0 and skipped.out == "" and skipped.err == "", skipped
    batch = run_cli("-q", "batch", tmp_path, "-n", "classic", "--out", tmp_path / "b")
    assert batch.code == 0 and batch.out == "" and batch.err == "", batch
    missing = run_cli("-q", tmp_path / "missing.wav", "-n", "classic")
    assert missing.code == 1 and missing.out == "" and missing.err.startswith("error: ") and "missing.wav" in missing.err
    assert run_cli("-q", "-v", song).code == 2


def test_verbose_logs_what_the_library_does(run_cli, wav_file, tmp_path):
    song = wav_file("song.wav", rate=16000)
    plain = run_cli(song, "-n", "classic", "--out", tmp_path / "a")
    verbose = run_cli("-v", song, "-n", "classic", "--out", tmp_path / "b")
    assert plain.code == verbose.code == 0, verbose
    assert "chunks of" not in plain.err
    assert "16000 Hz -> classic at 16000 Hz with resampler none" in verbose.err and "chunks of" in verbose.err


def test_batch_json_writes_one_object_per_file_with_the_fields_of_separate(run_cli, wav_file, tmp_path):
    wav_file("music/a.wav")
    wav_file("music/b.wav", rate=16000)
    (tmp_path / "music" / "broken.wav").write_text("not audio")
    result = run_cli("batch", tmp_path / "music", "-n", "classic", "--out", tmp_path / "o", "--json")
    assert result.code == 1, result
    lines = [json.loads(line) for line in result.out.splitlines()]  # JSON lines: nothing else on stdout
    by_file = {Path(line["file"]).name: line for line in lines}
    assert set(by_file) == {"a.wav", "b.wav", "broken.wav"}
    assert by_file["b.wav"]["status"] == "done" and by_file["b.wav"]["input_rate"] == 16000
    assert by_file["broken.wav"]["status"] == "failed" and "broken.wav" in by_file["broken.wav"]["error"]
    single = json.loads(run_cli("separate", tmp_path / "music" / "a.wav", "-n", "classic", "--out", tmp_path / "s",
                                "--json").out)
    assert set(single[0]) == set(by_file["a.wav"])


def test_separate_goes_on_past_a_bad_file_and_exits_1_at_the_end(run_cli, wav_file, tmp_path):
    first, last = wav_file("a.wav"), wav_file("b.wav", rate=11025)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio at all" * 40)
    out = tmp_path / "out"
    result = run_cli(first, bad, last, "-n", "classic", "--out", out)
    assert result.code == 1, result
    assert _stems(out, "a") == _stems(out, "b") == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.wav" in errors[0], result.err
    assert "a.wav" in result.out and "b.wav" in result.out
    # a usage error still stops everything before any work
    again = run_cli(first, bad, last, "-n", "classic", "--out", tmp_path / "none", "--bits", "12")
    assert again.code == 2 and not (tmp_path / "none").exists(), again
    unknown = run_cli(first, "-n", "htdemcus", "--out", tmp_path / "none")
    assert unknown.code == 2 and "did you mean 'htdemucs'" in unknown.err and not (tmp_path / "none").exists()


@pytest.mark.parametrize("args", [["info", "{song}", "-n", "scnett"], ["fetch", "scnett"],
                                  ["diagnose", "lee", "{song}", "-n", "scnett"], ["eval", "-n", "scnett", "--musdb",
                                                                                  "{musdb}"]])
def test_an_unknown_model_name_is_a_usage_error_everywhere(run_cli, wav_file, tmp_path, args):
    song = wav_file("song.wav")
    (tmp_path / "musdb" / "test").mkdir(parents=True)
    result = run_cli(*[arg.format(song=song, musdb=tmp_path / "musdb") for arg in args])
    assert result.code == 2 and "did you mean 'scnet'" in result.err, result


def test_models_shows_aliases_and_which_weights_are_cached(run_cli, tmp_path, monkeypatch):
    from sfsep import hub
    from sfsep.registry import get_spec

    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))
    for source in get_spec("scnet").weights:
        target = hub.expected_path(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"cached")
    result = run_cli("models")
    assert result.code == 0, result
    lines = result.out.splitlines()
    row = {line.split()[0]: line.split() for line in lines if line.strip() and not line.strip().startswith("=")}
    assert "yes" in row["scnet"] and "no" in row["scnet_large"]
    below = lines[lines.index(next(line for line in lines if line.strip().startswith("htdemucs "))) + 1]
    assert below.split()[:2] == ["=", "demucs"]


def test_a_piped_run_leaves_stderr_empty(tmp_path):
    """With stdout and stderr piped (no terminal), a successful run writes nothing to stderr (a
    transient progress bar used to leave a newline there)."""
    script = Path(sys.executable).with_name("sfsep")
    demo = ROOT / "examples" / "demo_8k.wav"
    done = subprocess.run([str(script), str(demo), "-n", "classic", "--out", str(tmp_path)], capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert done.returncode == 0 and done.stderr == "", repr(done.stderr)
    assert "demo_8k" in done.stdout


def test_hints_that_name_an_extra_keep_its_brackets(run_cli, wav_file, tmp_path, monkeypatch):
    """rich took `[plot]` for markup and printed "pip install 'sfsep'"."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
    song = wav_file("song.wav", rate=8000, seconds=0.5)
    result = run_cli("diagnose", "spectrum", song, "--rate", "4000", "-n", "classic", "--target-rate", "8000",
                     "--plot", tmp_path / "p.png")
    assert result.code == 2 and "pip install 'sfsep[plot]'" in result.err, result


def test_eval_names_the_plot_extra_and_only_the_folders_it_writes(run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    folder = tmp_path / "musdb" / "test" / "Alpha - One"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    stems = {name: 0.1 * rng.standard_normal((22050, 2)).astype(np.float32)
             for name in ("vocals", "drums", "bass", "other")}
    stems["mixture"] = sum(stems.values())
    for name, data in stems.items():
        sf.write(folder / f"{name}.wav", data, 44100, subtype="FLOAT")
    out = tmp_path / "eval"
    result = run_cli("eval", "--musdb", tmp_path / "musdb", "-n", "classic", "--rates", "8000", "--metrics", "sdr",
                     "--out", out)
    assert result.code == 0, result
    assert "museval" not in result.out and not (out / "classic" / "museval").exists()
    assert "pip install 'sfsep[plot]'" in result.out


def test_train_kernel_offline_error_does_not_suggest_the_classic_model(run_cli, tmp_path, monkeypatch):
    """Its offline error suggested --model classic, which has no kernel to train."""
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))
    offline = run_cli("train-kernel", "--model", "scnet", "--rate", "8000", "--offline", "--musdb", tmp_path)
    assert offline.code == 1 and "not cached" in offline.err, offline
    assert "--model classic" not in offline.err and "sfsep fetch scnet" in offline.err
    classic = run_cli("train-kernel", "--model", "classic", "--rate", "8000", "--musdb", tmp_path)
    assert classic.code == 2 and "any input rate" in classic.err


def test_train_kernel_validation_split_error_names_no_missing_option(run_cli, tmp_path, shared):
    """Its validation-split error said "use --subset train or test", an option it does not have."""
    import torch
    import yaml

    data = torch.load(shared / "parity" / "scnet_tiny.pt", weights_only=True)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data["config"], sort_keys=False))
    torch.save({"state_dict": data["state_dict"]}, tmp_path / "tiny.ckpt")
    track = tmp_path / "musdb" / "train" / "A - One"  # no track of musdb's validation split
    track.mkdir(parents=True)
    for name in ("mixture", "vocals", "drums", "bass", "other"):
        sf.write(track / f"{name}.wav", np.zeros((44100, 2), np.float32), 44100)
    result = run_cli("train-kernel", "--model", "scnet", "--weights", tmp_path / "tiny.ckpt", "--config",
                     tmp_path / "tiny.yaml", "--rate", "8000", "--musdb", tmp_path / "musdb")
    assert result.code == 1 and "validation tracks" in result.err, result
    assert "--subset" not in result.err and "train-kernel" in result.err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_usage_error_met_in_a_file_stops_the_batch_with_exit_2(run_cli, wav_file, tmp_path, shared, jobs):
    """An option that cannot work with the model (--chunk-seconds 1e9 asks for petabytes) is a
    usage error for every file: it stops the batch (exit 2), never a failure per file."""
    import torch
    import yaml

    data = torch.load(shared / "parity" / "scnet_tiny.pt", weights_only=True)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data["config"], sort_keys=False))
    torch.save({"state_dict": data["state_dict"]}, tmp_path / "tiny.ckpt")
    for name in ("a", "b", "c"):
        wav_file(f"music/{name}.wav", rate=44100, seconds=0.3)
    result = run_cli("batch", tmp_path / "music", "--model", "scnet", "--weights", tmp_path / "tiny.ckpt", "--config",
                     tmp_path / "tiny.yaml", "--chunk-seconds", "1e9", "--out", tmp_path / "o", "--jobs", jobs)
    assert result.code == 2 and "--chunk-seconds" in result.err and "interrupted" not in result.err, result
    assert not (tmp_path / "o").exists()
