"""Shared test helpers: running the CLI in-process, writing audio files, the shared folder."""

from __future__ import annotations

from pathlib import Path

import ipaddress
import signal
import socket
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from parity import shared_dir

# The suite runs in 2 xdist workers on 2 cores: one torch thread each avoids oversubscription stalls.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts on one torch thread, whatever a test before it (a CLI run with --threads)
    left set, and leaves it as it found it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _loopback_only(address) -> None:
    host = address[0] if isinstance(address, tuple) else None
    if host is None:  # unix sockets
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConnectionRefusedError(f"tests may only connect to loopback addresses, not {host}")


@pytest.fixture(autouse=True)
def _no_network_but_loopback(monkeypatch):
    """The tests run offline: any connection to a non-loopback address is refused at once
    (a test that forgets --model/--offline fails fast instead of reaching a real host)."""

    def connect(self, address):
        _loopback_only(address)
        return _real_connect(self, address)

    def connect_ex(self, address):
        _loopback_only(address)
        return _real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


@pytest.fixture
def shared() -> Path:
    folder = shared_dir()
    assert folder.is_dir(), f"the shared folder is missing: {folder} (set SFSEP_SHARED)"
    return folder


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out!r}, err={self.err!r})"


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run `sfsep ARGS...` in this process; returns exit code, stdout and stderr."""
    from sfsep.cli import main

    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def tone_mix(rate: int, seconds: float = 1.0, channels: int = 2, seed: int = 0) -> np.ndarray:
    """A small (samples, channels) test signal: two tones and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    base = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * min(1000, rate / 5) * t)
    data = np.stack([base + 0.01 * rng.standard_normal(t.size) for _ in range(channels)], axis=1)
    return data.astype(np.float32)


@pytest.fixture
def wav_file(tmp_path):
    """Write a test WAV: wav_file(name, rate=8000, seconds=1.0, channels=2, subtype="PCM_16")."""

    def make(name: str = "song.wav", rate: int = 8000, seconds: float = 1.0, channels: int = 2,
             subtype: str = "PCM_16", data: np.ndarray | None = None) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, tone_mix(rate, seconds, channels) if data is None else data, rate, subtype=subtype)
        return path

    return make


def one_line_error(result: CliResult, *fragments: str, code: int | None = None) -> str:
    """Assert that a CLI run failed (with `code` when given) and printed exactly one line on
    stderr, an "error: " line holding every fragment; returns that line."""
    assert result.code != 0 if code is None else result.code == code, result
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def files_below(folder: Path) -> list[Path]:
    """Every file under `folder` (none when it does not exist)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def interrupt_once_staged(process, out: Path, timeout: float = 300) -> tuple[str, float]:
    """Send Ctrl-C (SIGINT) to a running `sfsep batch ... --model classic --out out` as soon as
    its first stems are staged (`.part` files below out/classic/<track>/); returns its stderr
    and the seconds it took to end after the signal. Fails if it ended before staging anything."""
    deadline = time.monotonic() + timeout
    while not list(out.glob("classic/*/.*.part.*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, ("the batch ended before its first stems were staged", process.communicate())
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    return err, time.monotonic() - sent
