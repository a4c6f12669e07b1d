"""What the system refuses ends in one clear line, through the real entry point: a name longer
than the file system takes, a read-only weights cache, a full disk, a rate a model cannot run
at; and input that is not what it claims (a truncated MP3, a NaN in a reference stem)."""

import errno
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import files_below, one_line_error


LONG = "a" * 300


# --------------------------------------------------------------------------------------------
# A 300-character path component


def test_a_name_too_long_for_the_file_system_is_one_line(run_cli, wav_file, tmp_path):
    song = wav_file("song.wav")
    missing = tmp_path / f"{LONG}.wav"
    for args in (("separate", missing, "--model", "classic", "--out", tmp_path / "o"), ("info", missing)):
        one_line_error(run_cli(*args), f"{LONG}.wav: cannot be read", "304 bytes long",
                        "the file system takes at most 255")
    out = tmp_path / "o"
    one_line_error(run_cli(song, "--model", "classic", "--out", out / LONG), "cannot be written",
                    "300 bytes long", "shorten --out, --filename")
    one_line_error(run_cli(song, "--model", "classic", "--out", out, "--filename", "{track}/{stem}" + LONG + ".{ext}"),
                    "310 bytes long")
    result = run_cli("batch", tmp_path / LONG, "--model", "classic", "--out", out)
    one_line_error(result, "300 bytes long")
    music = tmp_path / "music"
    music.mkdir()
    (music / "song.wav").write_bytes(song.read_bytes())
    result = run_cli("batch", music, "--model", "classic", "--out", out / LONG)
    assert result.code == 1 and "Traceback" not in result.err + result.out, result
    assert "300 bytes long" in result.err + result.out
    assert files_below(out) == []


# --------------------------------------------------------------------------------------------
# A read-only SFSEP_CACHE


@pytest.fixture
def read_only(monkeypatch):
    """read_only(folder): writes below `folder` fail as on a read-only file system (EROFS) —
    the mode bits do not stop root, which the tests may run as, so the system calls are refused."""
    folders: list[str] = []
    real_mkdir, real_open = os.mkdir, os.open

    def inside(path) -> bool:
        path = os.path.abspath(os.fsdecode(path))
        return any(path == folder or path.startswith(folder + os.sep) for folder in folders)

    def mkdir(path, *args, **kwargs):
        if inside(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    return lambda folder: folders.append(os.path.abspath(folder))


@pytest.fixture
def tiny_registry(tmp_path, monkeypatch):
    """A models.toml with one model whose weights come from a (never reached) loopback URL and
    whose full sha256 is that of `content`."""
    from sfsep import registry

    content = b"weights we trust"
    path = tmp_path / "models.toml"
    path.write_text(f"""
[models.tiny]
family = "conv_tasnet"
trained_rate = 44100
stems = ["drums", "bass", "other", "vocals"]
chunk_size = 44100
[models.tiny.config]
sources = ["drums", "bass", "other", "vocals"]
[[models.tiny.weights]]
url = "http://127.0.0.1:9/tiny.th"
sha256 = "{hashlib.sha256(content).hexdigest()}"
""")
    monkeypatch.setenv("SFSEP_REGISTRY", str(path))
    registry._registry_at.cache_clear()
    yield content
    registry._registry_at.cache_clear()


def test_a_read_only_cache_is_one_line_in_fetch_and_separate(run_cli, wav_file, tmp_path, monkeypatch,
                                                             read_only, tiny_registry):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SFSEP_CACHE", str(cache))
    read_only(cache)
    for args in (("fetch", "tiny"), (wav_file("song.wav"), "--model", "tiny", "--out", tmp_path / "o")):
        one_line_error(run_cli(*args), f"{cache}", "cannot write the weights of model 'tiny'",
                        "read-only", "SFSEP_CACHE")
    assert not (tmp_path / "o").exists()


def test_a_read_only_cache_that_holds_the_weights_is_enough(run_cli, tmp_path, monkeypatch, read_only,
                                                            tiny_registry):
    cache = tmp_path / "shared-cache"
    (cache / "weights").mkdir(parents=True)
    (cache / "weights" / "tiny.th").write_bytes(tiny_registry)
    monkeypatch.setenv("SFSEP_CACHE", str(cache))
    read_only(cache)
    result = run_cli("fetch", "tiny")
    assert result.code == 0, result
    assert "tiny.th ok" in result.out


# --------------------------------------------------------------------------------------------
# A full disk


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_says_no_space_is_left(run_cli, wav_file, tmp_path, monkeypatch):
    """Every audio file sfsep writes goes to /dev/full, where the system's write fails with
    ENOSPC as on a full disk; libsndfile itself only reports "System error."."""
    song = wav_file("song.wav")
    real_init = sf.SoundFile.__init__

    def to_full_device(self, file, mode="r", *args, **kwargs):
        if "w" in mode:
            file = "/dev/full"
        return real_init(self, file, mode, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "__init__", to_full_device)
    out = tmp_path / "out"
    one_line_error(run_cli(song, "--model", "classic", "--out", out), "no space left on the device")
    assert files_below(out) == []


def _limit_file_size() -> None:
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_a_file_size_limit_reached_while_writing_says_no_space_is_left(wav_file, tmp_path):
    """RLIMIT_FSIZE stops each stem after 200 kB, in the middle of the streamed write."""
    song = wav_file("song.wav", rate=44100, seconds=4.0)  # 700 kB per 16-bit stereo stem
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "sfsep", str(song), "--model", "classic", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size,
                            env={**os.environ, "COLUMNS": "200"})
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "no space left" in lines[0] and "ulimit -f" in lines[0], lines
    assert files_below(out) == []


# --------------------------------------------------------------------------------------------
# A rate a model cannot run at


def test_classic_on_a_1_hz_file_names_the_file(run_cli, tmp_path):
    path = tmp_path / "one_hertz.wav"
    sf.write(path, np.zeros((16, 2), np.float32), 1)
    for model in ("classic", "nmf"):
        result = run_cli(path, "--model", model, "--out", tmp_path / "o")
        one_line_error(result, f"{path}: model '{model}' cannot separate a file sampled at 1 Hz", "1000 Hz")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------
# A truncated MP3


def _mp3(path: Path, seconds: float = 3.0, rate: int = 44100) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    data = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)], axis=1)
    sf.write(path, data.astype(np.float32), rate, format="MP3")
    return path


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile has no MP3")
def test_a_truncated_mp3_is_refused_with_its_name(run_cli, tmp_path):
    whole = _mp3(tmp_path / "whole.mp3")
    content = whole.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(content[: len(content) // 2])
    assert sf.info(cut).frames == 132300  # the header still declares the whole length
    out = tmp_path / "out"
    line = one_line_error(run_cli(cut, "--model", "classic", "--out", out), f"{cut}: the file is truncated",
                           "but its header declares 132300", "re-export or re-download it")
    assert "decodes to 6" in line  # about 46% of it
    assert files_below(out) == []
    from sfsep import audio
    from sfsep.errors import AudioError

    with pytest.raises(AudioError, match="cut.mp3: the file is truncated"):
        audio.read(cut)
    with pytest.raises(AudioError, match="cut.mp3: the file is truncated"):  # the streaming read too
        list(audio.read_blocks(cut, block_frames=4096))
    # The last frame missing from a file that states its length: separated, with a note in sfsep's words.
    nearly = tmp_path / "nearly.mp3"
    nearly.write_bytes(content[: int(len(content) * 0.99)])
    result = run_cli(nearly, "--model", "classic", "--out", out)
    assert result.code == 0, result
    assert f"note: {nearly}: it decodes to" in result.out and "may be missing" in result.out
    result = run_cli(whole, "--model", "classic", "--out", out)
    assert result.code == 0 and "note" not in result.out, result


# --------------------------------------------------------------------------------------------
# NaN or Inf in a MUSDB reference stem


def _musdb_track(root: Path, bad_stem: str, bad_value: float) -> Path:
    """A one-track MUSDB18-HQ-shaped folder (1.5 s, mono float) with one bad sample in `bad_stem`."""
    rate = 44100
    t = np.arange(int(1.5 * rate)) / rate
    rng = np.random.default_rng(0)
    stems = {"vocals": 0.2 * np.sin(2 * np.pi * 330 * t), "drums": 0.1 * rng.standard_normal(t.size),
             "bass": 0.3 * np.sin(2 * np.pi * 55 * t), "other": 0.1 * np.sin(2 * np.pi * 440 * t)}
    stems["mixture"] = sum(stems.values())
    stems[bad_stem][rate // 2] = bad_value
    folder = root / "test" / "Alpha - First"
    folder.mkdir(parents=True)
    for name, data in stems.items():
        sf.write(folder / f"{name}.wav", data.astype(np.float32)[:, None], rate, subtype="FLOAT")
    return folder / f"{bad_stem}.wav"


@pytest.mark.parametrize("stem,value", [("vocals", float("nan")), ("drums", float("inf"))])
def test_nan_or_inf_in_a_reference_is_an_error_naming_the_file(run_cli, tmp_path, stem, value):
    bad = _musdb_track(tmp_path / "musdb", stem, value)
    out = tmp_path / "results"
    result = run_cli("eval", "--musdb", tmp_path / "musdb", "--model", "classic", "--rates", "8000",
                     "--out", out)
    one_line_error(result, f"{bad}: the {stem} reference contains 1 NaN or infinite samples", "0.50 s")
    assert result.code == 1
    assert not (out / "classic" / "table.csv").exists()


# --------------------------------------------------------------------------------------------
# A header that claims an absurd sampling rate (found by tests/test_fuzz_audio.py)


def test_a_header_claiming_2_31_hz_is_refused_before_any_analysis(run_cli, wav_file, tmp_path):
    """A damaged WAV header said 2147483647 Hz: the bandwidth analysis, sized by the rate, then
    asked for a 2 GB FFT frame. The rate is refused when the header is read."""
    song = wav_file("song.wav", rate=8000, seconds=0.5)
    content = bytearray(song.read_bytes())
    content[24:28] = (2**31 - 1).to_bytes(4, "little")
    damaged = tmp_path / "damaged.wav"
    damaged.write_bytes(bytes(content))
    for args in (("info", damaged), (damaged, "--model", "classic", "--out", tmp_path / "o")):
        one_line_error(run_cli(*args), f"{damaged}: its header gives a sampling rate of 2147483647 Hz",
                        "at most 1000000 Hz")
