"""Property-based tests (hypothesis) of reading damaged audio: WAV, FLAC and MP3 files written
with soundfile, then given random header corruption, random byte damage and truncation.

Whatever the damage, reading either fails with an AudioError whose one-line message names the
file, or succeeds with a correct read: finite float32 samples, one or two channels, and every
frame the header declares (an MP3 within the length tolerance `audio.check_length` allows).
Never another exception, never a crash, never a hang: each example runs in a forked child with
a time limit, so a decoder that loops or dies is reported as such instead of stalling the suite.
The same holds through the CLI (`sfsep info` and `sfsep FILE --model classic`).
"""

from __future__ import annotations

import io
import os
import pickle
import select
import signal
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import sfsep.audio
import sfsep.checkpoint
import sfsep.cli
import sfsep.models.classic
import sfsep.models.limits
import sfsep.pipeline

PRELOADED = (sfsep.audio, sfsep.checkpoint, sfsep.cli, sfsep.models.classic, sfsep.models.limits, sfsep.pipeline)
"""Imported once here, so that every forked child has them already."""

EXAMPLE_SECONDS = 60.0
"""Time one example may take in its child before it counts as a hang (the machine is shared)."""

FUZZ = settings(max_examples=int(os.environ.get("SFSEP_FUZZ_EXAMPLES", "50")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

EXAMPLES: dict[str, int] = {}
"""Examples run per test in this process (printed when the module's tests are done)."""

FORMATS = {
    "wav16": ("WAV", "PCM_16", ".wav"),
    "wavfloat": ("WAV", "FLOAT", ".wav"),
    "flac": ("FLAC", "PCM_16", ".flac"),
    "mp3": ("MP3", "MPEG_LAYER_III", ".mp3"),
}


STEMS = ("vocals", "drums", "bass", "other")
"""What `--model classic` writes for each input."""


HEADER_FIELDS = {
    # (offset, width): RIFF size, fmt size, format tag, channels, rate, byte rate, block align, bits, data size
    "wav16": [(4, 4), (16, 4), (20, 2), (22, 2), (24, 4), (28, 4), (32, 2), (34, 2), (40, 4)],
    "wavfloat": [(4, 4), (16, 4), (20, 2), (22, 2), (24, 4), (28, 4), (32, 2), (34, 2), (40, 4)],
    # block header, then STREAMINFO: block sizes, frame sizes, rate/channels/bits, total samples, MD5
    "flac": [(4, 4), (8, 2), (10, 2), (12, 3), (15, 3), (18, 4), (21, 1), (22, 4), (26, 4)],
    # the first frame's header, then its Xing/Info tag: flags, frame count, byte count
    "mp3": [(0, 2), (2, 2), (36, 4), (40, 4), (44, 4), (48, 4)],
}
"""Where each format keeps the numbers a reader trusts (byte offset, width), for targeted damage."""


EXAMPLE_MEMORY = 1 << 30
"""Address space one example may add (a file of a few kB has no business asking for more)."""


def _limit_memory() -> None:
    import resource

    with open("/proc/self/statm") as stream:
        in_use = int(stream.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (in_use + EXAMPLE_MEMORY, resource.RLIM_INFINITY))


def _bounded(function, *args) -> tuple:
    """Run `function(*args)` in a forked child; returns what it returned, or ("timeout",) or
    ("crash", signal number). The child shares nothing back but a pickled result."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, send the outcome, leave without running any cleanup
        os.close(reader)
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 2)  # libmpg123 reports every bad frame on the C library's stderr
        _limit_memory()
        torch.set_num_threads(1)  # a file of a few kB needs no thread pool, nor the parent's
        try:
            outcome = function(*args)
        except BaseException as exc:  # noqa: BLE001 - everything is an outcome to report
            outcome = ("raised", type(exc).__name__, str(exc), traceback.format_exc())
        with os.fdopen(writer, "wb") as stream:
            stream.write(pickle.dumps(outcome))
        os._exit(0)
    os.close(writer)
    chunks, deadline = [], time.monotonic() + EXAMPLE_SECONDS
    with os.fdopen(reader, "rb") as stream:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return ("timeout",)
            ready, _, _ = select.select([stream], [], [], left)
            if ready:
                chunk = os.read(stream.fileno(), 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return ("crash", os.WTERMSIG(status))
    return pickle.loads(b"".join(chunks)) if chunks else ("crash", "no result")


@st.composite
def damaged_files(draw, kind: str):
    """(file bytes, what was done): an encoded tone, then header bytes overwritten, a few bytes
    anywhere overwritten, and/or the file cut short."""
    fmt, subtype, _ = FORMATS[kind]
    rate = draw(st.sampled_from([8000, 22050, 44100]))
    channels = draw(st.integers(1, 2))
    frames = draw(st.integers(1, 4000)) if kind != "mp3" else draw(st.integers(1500, 12000))
    t = np.arange(frames) / rate
    data = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, data.astype(np.float32), rate, format=fmt, subtype=subtype)
    content = bytearray(buffer.getvalue())
    done = []
    mode = draw(st.sampled_from(["field", "header", "bytes", "cut", "mixed"]))
    header = min(len(content), 128)
    if mode in ("header", "mixed"):
        for offset, value in draw(st.lists(st.tuples(st.integers(0, header - 1), st.integers(0, 255)),
                                           min_size=1, max_size=6)):
            content[offset] = value
            done.append(f"header[{offset}]={value}")
    if mode in ("field", "mixed"):
        # A number the reader trusts (a size, a rate, a channel or sample count) set to an extreme
        # or a random value, in the format's own byte order.
        order = "big" if kind in ("flac", "mp3") else "little"
        for _ in range(draw(st.integers(1, 2))):
            offset, width = draw(st.sampled_from(HEADER_FIELDS[kind]))
            top = (1 << (8 * width)) - 1
            value = draw(st.sampled_from([0, 1, 2, 3, top // 2, top // 2 + 1, top]) | st.integers(0, top))
            if offset + width <= len(content):
                content[offset:offset + width] = value.to_bytes(width, order)
                done.append(f"field[{offset}:{offset + width}]={value}")
    if mode in ("bytes", "mixed"):
        for position, value in draw(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                                             min_size=1, max_size=3)):
            offset = int(position * len(content))
            content[offset] = value
            done.append(f"byte[{offset}]={value}")
    if mode == "cut" or (mode == "mixed" and draw(st.booleans())):
        cut = draw(st.integers(0, len(content)))
        content = content[:cut]
        done.append(f"cut at {cut} of {len(buffer.getvalue())}")
    return bytes(content), done


def _read_everything(path: str) -> tuple:
    """In the child: inspect, stream and whole-file read, as sfsep does; a summary or the error."""
    from sfsep import audio
    from sfsep.errors import AudioError

    try:
        info = audio.check_input(path)
        decoded = 0
        for block in audio.read_blocks(path, info=info, block_frames=1000):
            assert block.dtype.is_floating_point and block.shape[0] in (1, 2), block.shape
            assert bool(block.isfinite().all())
            decoded += block.shape[-1]
        whole, rate = audio.read(path)
        bandwidth = audio.file_bandwidth(info)  # the analysis every separation starts with
        assert 0 <= bandwidth <= rate / 2, bandwidth
        return ("ok", info.frames, decoded, whole.shape[-1], rate, info.format)
    except AudioError as exc:
        return ("AudioError", str(exc))


def _check_outcome(outcome: tuple, path: Path, done: list[str]) -> None:
    assert outcome[0] in ("ok", "AudioError"), (done, outcome)
    if outcome[0] == "AudioError":
        message = outcome[1]
        assert message.startswith(str(path)) and "\n" not in message, (done, message)
        assert "allocate" not in message, (done, message)  # running out of memory is no diagnosis
        return
    _, declared, decoded, whole, rate, fmt = outcome
    assert decoded >= 1 and whole == decoded and rate > 0, (done, outcome)
    tolerance = max(1152, declared // 100) if fmt == "MP3" else 0
    assert declared - tolerance <= decoded, (done, outcome)  # no frame the header declares is lost silently


def _fuzz_read(tmp_path: Path, kind: str, case) -> None:
    content, done = case
    path = tmp_path / f"fuzz{FORMATS[kind][2]}"
    path.write_bytes(content)
    EXAMPLES[f"read {kind}"] = EXAMPLES.get(f"read {kind}", 0) + 1
    _check_outcome(_bounded(_read_everything, str(path)), path, done)


@pytest.mark.parametrize("kind", ["wav16", "wavfloat", "flac"])
def test_damaged_files_read_correctly_or_fail_clearly(tmp_path, kind):
    @FUZZ
    @given(case=damaged_files(kind))
    def check(case):
        _fuzz_read(tmp_path, kind, case)

    check()


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile has no MP3")
def test_damaged_mp3s_read_correctly_or_fail_clearly(tmp_path):
    @FUZZ
    @given(case=damaged_files("mp3"))
    def check(case):
        _fuzz_read(tmp_path, "mp3", case)

    check()


def _cli(args: list[str]) -> tuple:
    """In the child: `sfsep ARGS`, its exit code and what it printed."""
    from sfsep.cli import main

    os.environ["COLUMNS"] = "200"
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return ("exit", code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("command", ["info", "separate"])
def test_damaged_files_through_the_cli_end_in_one_line(tmp_path, command):
    kinds = [kind for kind in FORMATS if kind != "mp3" or "MP3" in sf.available_formats()]

    @settings(FUZZ, max_examples=max(10, FUZZ.max_examples // (2 if command == "info" else 4)))
    @given(kind=st.sampled_from(kinds), data=st.data())
    def check(kind, data):
        content, done = data.draw(damaged_files(kind))
        path = tmp_path / f"song{FORMATS[kind][2]}"
        path.write_bytes(content)
        EXAMPLES[f"cli {command}"] = EXAMPLES.get(f"cli {command}", 0) + 1
        out = tmp_path / f"out{EXAMPLES[f'cli {command}']}"  # each example its own, to see what it left
        args = ["info", str(path)] if command == "info" else [str(path), "--model", "classic", "--out", str(out)]
        outcome = _bounded(_cli, args)
        assert outcome[0] == "exit", (done, outcome)
        _, code, stdout, stderr = outcome
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        if code != 0:
            assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (done, code, stderr)
            assert str(path) in lines[0], (done, lines)
        else:
            assert "Traceback" not in stdout + stderr, (done, stdout, stderr)
        # A file that fails leaves nothing at all (no stem, no .part, no lock); one that is
        # separated leaves its four stems and nothing else.
        left = sorted(p.name for p in out.rglob("*") if p.is_file()) if out.exists() else []
        expected = [] if code != 0 or command == "info" else sorted(f"{stem}.wav" for stem in STEMS)
        assert left == expected, (done, code, stderr, left)

    check()


@pytest.fixture(scope="module", autouse=True)
def _warm():
    """Run the CLI once before any child is forked (`sfsep models`: typer's adapters, the
    registry; no signal processing), so that each example pays for its own work only."""
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        try:
            sfsep.cli.main(["models"])
        except SystemExit:
            pass


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if EXAMPLES:
        counts = ", ".join(f"{name}: {count}" for name, count in sorted(EXAMPLES.items()))
        print(f"\nfuzz examples run (this worker): {counts}", file=sys.stderr)
