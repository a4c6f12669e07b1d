"""Outputs through the real entry point: a stem set is replaced all or nothing, Ctrl-C stops a
batch at once and leaves nothing half-done, two runs never write the same track at once, and
published files get the permissions the umask gives (issue 13, items 3, 4, 5 and 8)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import interrupt_once_staged, tone_mix

STEMS = ("vocals", "drums", "bass", "other")
ENV = {**os.environ, "SFSEP_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def _previous_set(folder: Path, rate: int = 8000) -> dict[str, bytes]:
    """Stems of an 'earlier run' that differ from anything sfsep would write now."""
    folder.mkdir(parents=True, exist_ok=True)
    contents = {}
    for index, name in enumerate(STEMS):
        sf.write(folder / f"{name}.wav", np.full((50 + index, 2), 0.125 * (index + 1), dtype=np.float32), rate)
        contents[name] = (folder / f"{name}.wav").read_bytes()
    return contents


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _one_line_error(result, *fragments) -> None:
    assert result.code == 1, result
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ----------------------------------------------------------------------------------------
# Item 3: replacing a stem set is all or nothing


def test_overwrite_onto_a_folder_keeps_the_previous_set(run_cli, wav_file, tmp_path):
    """`other.wav` is a folder: --overwrite fails with one line and replaces none of the others."""
    song = wav_file("song.wav")
    out = tmp_path / "out"
    folder = out / "classic" / "song"
    before = _previous_set(folder)
    del before["other"]
    (folder / "other.wav").unlink()
    (folder / "other.wav" / "inside").mkdir(parents=True)
    result = run_cli(song, "--model", "classic", "--out", out, "--overwrite")
    _one_line_error(result, "other.wav")
    assert {name: (folder / f"{name}.wav").read_bytes() for name in before} == before
    assert (folder / "other.wav" / "inside").is_dir()
    assert _hidden(folder) == []


def test_a_rename_failing_midway_restores_the_previous_set(run_cli, wav_file, tmp_path, monkeypatch):
    """The third of four renames fails (after the pre-checks passed): the two stems already
    moved into place are rolled back to the previous ones, no backup or .part is left."""
    song = wav_file("song.wav")
    out = tmp_path / "out"
    folder = out / "classic" / "song"
    before = _previous_set(folder)
    real_replace = os.replace
    moved = []

    def replace(source, target):
        source, target = str(source), str(target)
        if ".part." in source and Path(target).parent == folder:
            if len(moved) == 2:
                raise OSError(errno.EIO, "Input/output error")
            moved.append(target)
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    result = run_cli(song, "--model", "classic", "--out", out, "--overwrite")
    _one_line_error(result, "could not be written")
    assert len(moved) == 2
    assert {name: (folder / f"{name}.wav").read_bytes() for name in before} == before
    assert _hidden(folder) == []
    monkeypatch.setattr(os, "replace", real_replace)
    assert run_cli(song, "--model", "classic", "--out", out, "--overwrite").code == 0
    assert all((folder / f"{name}.wav").read_bytes() != before[name] for name in STEMS)
    assert _hidden(folder) == []


# ----------------------------------------------------------------------------------------
# Item 4: Ctrl-C stops a batch promptly


def _sets(out: Path, names) -> dict[str, int]:
    """How many stems each track folder holds (0 or 4 are the only whole states)."""
    return {name: len(list((out / "classic" / name).glob("*.wav"))) if (out / "classic" / name).is_dir() else 0
            for name in names}


@pytest.mark.parametrize("jobs", [1, 2])
def test_one_ctrl_c_stops_a_batch_at_once(tmp_path, jobs):
    rate = 8000
    music = tmp_path / "music"
    music.mkdir()
    names = [f"track{index}" for index in range(6)]
    for index, name in enumerate(names):
        sf.write(music / f"{name}.wav", tone_mix(rate, 30.0, 2, seed=index), rate)
    out = tmp_path / "out"
    script = Path(sys.executable).with_name("sfsep")
    process = subprocess.Popen([str(script), "batch", str(music), "--model", "classic", "--out", str(out),
                                "--jobs", str(jobs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=ENV)
    err, stopped = interrupt_once_staged(process, out)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert not list(out.rglob("*.part*")), list(out.rglob("*"))
    counts = _sets(out, names)
    assert set(counts.values()) <= {0, 4}, counts  # no partial stem set
    assert sum(1 for count in counts.values() if count) <= jobs, counts  # the batch did not go on
    # the files still running stop at their next chunk (classic: one per file, ~1-2 s here)
    assert stopped < 15, stopped


def test_repeated_ctrl_c_still_cleans_up(tmp_path):
    """Three SIGINTs in a row: still exit 130, no .part file, no partial set."""
    rate = 8000
    music = tmp_path / "music"
    music.mkdir()
    for index in range(4):
        sf.write(music / f"t{index}.wav", tone_mix(rate, 30.0, 2, seed=index), rate)
    out = tmp_path / "out"
    script = Path(sys.executable).with_name("sfsep")
    process = subprocess.Popen([str(script), "batch", str(music), "--model", "classic", "--out", str(out),
                                "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 300
    while (not list(out.glob("classic/*/.*.part.*")) and time.monotonic() < deadline
           and process.poll() is None):
        time.sleep(0.02)
    assert process.poll() is None, "the batch ended before its first stems were staged"
    for _ in range(3):
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
    try:
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert not list(out.rglob("*.part*")), list(out.rglob("*"))
    assert set(_sets(out, [f"t{index}" for index in range(4)]).values()) <= {0, 4}


# ----------------------------------------------------------------------------------------
# Item 5: two runs on the same output at once

# Runs `sfsep` through its entry point with one change: before publishing its stems, the run
# waits until the file named by SFSEP_TEST_GATE exists, so a second run can be started while the
# first one is certainly in the middle of the track.
_GATED_RUN = """
import os, sys, time
from pathlib import Path
import sfsep.audio
publish = sfsep.audio.StagedStems.publish
def gated(self):
    Path(os.environ["SFSEP_TEST_STAGED"]).touch()
    while not os.path.exists(os.environ["SFSEP_TEST_GATE"]):
        time.sleep(0.02)
    return publish(self)
sfsep.audio.StagedStems.publish = gated
from sfsep.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_second_batch_skips_the_track_another_run_is_writing(tmp_path, overwrite):
    rate = 8000
    music = tmp_path / "music"
    music.mkdir()
    sf.write(music / "song.wav", tone_mix(rate, 2.0, 2), rate)
    out = tmp_path / "out"
    args = ["batch", str(music), "--model", "classic", "--out", str(out)] + (["--overwrite"] if overwrite else [])
    staged, gate = tmp_path / "staged", tmp_path / "gate"
    env = {**ENV, "SFSEP_TEST_STAGED": str(staged), "SFSEP_TEST_GATE": str(gate)}
    first = subprocess.Popen([sys.executable, "-c", _GATED_RUN, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not staged.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert first.poll() is None, first.communicate()
        second = subprocess.run([str(Path(sys.executable).with_name("sfsep")), *args], capture_output=True,
                                text=True, env=ENV, timeout=300)
        assert first.poll() is None  # still waiting at the gate
        gate.touch()
        first_out, first_err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, first_err
    assert "1 done, 0 skipped, 0 failed" in first_out
    assert second.returncode == 0, second.stderr
    assert "0 done, 1 skipped, 0 failed" in second.stdout, second.stdout
    assert "another sfsep run" in second.stderr, second.stderr
    folder = out / "classic" / "song"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{name}.wav" for name in STEMS)


def test_the_lock_is_per_track_and_left_behind_by_no_run(run_cli, wav_file, tmp_path):
    """Tracks whose stems share one folder are not serialized (nor skipped) by the lock, and no
    lock file stays behind."""
    wav_file("music/a.wav", seconds=0.5)
    wav_file("music/b.wav", seconds=0.5)
    out = tmp_path / "out"
    result = run_cli("batch", tmp_path / "music", "--model", "classic", "--out", out, "--jobs", "2",
                     "--filename", "{track}-{stem}.{ext}")
    assert result.code == 0, result
    assert "2 done, 0 skipped, 0 failed" in result.out
    assert _hidden(out / "classic") == []


def test_a_killed_run_s_staged_files_are_removed_by_the_next_run_of_that_track(tmp_path):
    """A run killed mid-file (SIGKILL, the OOM killer, a Ray worker that dies) cannot clean up: its
    .part files stay. The next run that takes the track's lock removes them, and only them."""
    rate = 8000
    music = tmp_path / "music"
    music.mkdir()
    sf.write(music / "song.wav", tone_mix(rate, 10.0, 2), rate)
    out = tmp_path / "out"
    script = Path(sys.executable).with_name("sfsep")
    command = [str(script), "batch", str(music), "--model", "classic", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 300
    while not list(out.glob("classic/song/.*.part.*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.kill()
    process.wait()
    folder = out / "classic" / "song"
    left = sorted(p.name for p in folder.glob(".*.part.*"))
    assert left, "the run ended before it staged its stems"
    other_track = folder / ".other_song.0123abcd.part.wav"  # not this track's stem name: kept
    other_track.touch()
    done = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(f"{s}.wav" for s in STEMS)
    assert _hidden(folder) == [other_track.name]


def test_a_file_system_without_flock_runs_unlocked(run_cli, wav_file, tmp_path, monkeypatch):
    """Some network mounts refuse flock: the run goes on without the lock (no traceback)."""
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    song = wav_file("song.wav", seconds=0.5)
    out = tmp_path / "out"
    result = run_cli(song, "--model", "classic", "--out", out)
    assert result.code == 0, result
    assert sorted(p.name for p in (out / "classic" / "song").iterdir()) == sorted(f"{s}.wav" for s in STEMS)


# ----------------------------------------------------------------------------------------
# Item 8: published files follow the umask


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_and_reports_follow_the_umask(run_cli, wav_file, tmp_path, umask):
    from test_eval import make_musdb

    song = wav_file("song.wav", seconds=0.5)
    musdb = make_musdb(tmp_path / "musdb", names=("Alpha - First",))
    previous = os.umask(umask)
    try:
        separated = run_cli(song, "--model", "classic", "--out", tmp_path / "stems")
        evaluated = run_cli("eval", "--musdb", musdb, "--model", "classic", "--rates", "8000",
                            "--out", tmp_path / "eval")
    finally:
        os.umask(previous)
    assert separated.code == 0, separated
    assert evaluated.code == 0, evaluated
    expected = 0o666 & ~umask
    written = [p for p in (tmp_path / "stems").rglob("*") if p.is_file()]
    written += [p for p in (tmp_path / "eval").rglob("*") if p.is_file()]
    assert len(written) >= 4 + 6
    suffixes = {p.suffix for p in written}
    assert {".wav", ".csv", ".md", ".json", ".png"} <= suffixes, suffixes
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in written}
    assert set(modes.values()) == {oct(expected)}, modes
