"""Trust in weights (issue 13, items 9-11), through `sfsep ...`: digests recorded on first
download and checked on every use, published digests and mirrors, `fetch --check`, resuming only
an unchanged file, and failing fast (and quietly) when a host does not answer. Every host is a
server on 127.0.0.1 (tests/loopback_server.py) or a socket that never answers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sfsep import hub

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback_server import LoopbackServer, content_etag  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
CHANGED = bytes(reversed(PAYLOAD))  # the same size, other bytes: a host that replaced its file


@pytest.fixture()
def server():
    loopback = LoopbackServer()
    yield loopback
    loopback.close()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SFSEP_CACHE", str(folder))
    monkeypatch.delenv("SFSEP_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "RETRY_PAUSE_SECONDS", 0.0)
    return folder


def weights_table(name: str, **fields) -> str:
    """A [[models.NAME.weights]] table; `mirrors` is a list of dicts."""
    mirrors = fields.pop("mirrors", [])
    lines = [f"[[models.{name}.weights]]"] + [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    for mirror in mirrors:
        lines.append(f"[[models.{name}.weights.mirrors]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in mirror.items()]
    return "\n".join(lines)


def plain_model(name: str, **weights) -> str:
    """A model whose checkpoint is only downloaded and checked, never built (family classic)."""
    return (f'[models.{name}]\nfamily = "classic"\ndescription = "test"\ntrained_rate = 44100\n'
            f'stems = ["vocals"]\n[models.{name}.config]\n' + weights_table(name, **weights) + "\n")


def use_registry(tmp_path: Path, monkeypatch, *tables: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text("\n".join(tables))
    monkeypatch.setenv("SFSEP_REGISTRY", str(path))
    return path


# --------------------------------------------------------------------------------------------
# 9. Digests: recorded on first download, checked on every use; models.toml's wins


def test_a_file_that_nothing_vouches_for_fails_verify_and_is_replaced(server, cache, tmp_path, monkeypatch,
                                                                      run_cli):
    url = server.add("/rel/scnet_checkpoint_musdb18.ckpt", PAYLOAD)
    use_registry(tmp_path, monkeypatch, plain_model("scnetlike", url=url))
    placed = cache / "weights" / "scnet_checkpoint_musdb18.ckpt"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(os.urandom(4096))  # put there by hand: sfsep never downloaded it

    result = run_cli("fetch", "--verify")
    assert result.code == 1, result
    assert "fails its check" in result.err and "no sha256 was recorded" in result.err
    assert "1 cached file(s) checked, 1 failed" in result.out

    result = run_cli("fetch", "scnetlike")  # online: replaced by a download, whose digest is recorded
    assert result.code == 0, result
    assert placed.read_bytes() == PAYLOAD
    record = cache / "weights" / "scnet_checkpoint_musdb18.ckpt.sha256"
    assert record.read_text() == f"{DIGEST}  scnet_checkpoint_musdb18.ckpt\n"  # sha256sum's format
    assert run_cli("fetch", "--verify").code == 0


def test_a_file_checked_by_an_older_sfsep_keeps_its_record(cache, tmp_path, monkeypatch, run_cli):
    use_registry(tmp_path, monkeypatch, plain_model("old", url="http://127.0.0.1:9/old.ckpt"),
                 plain_model("touched", url="http://127.0.0.1:9/touched.ckpt"))
    weights = cache / "weights"
    weights.mkdir(parents=True)
    for name in ("old.ckpt", "touched.ckpt"):  # as sfsep <= 0.1 left them: a record in verified/
        path = weights / name
        path.write_bytes(PAYLOAD)
        stat = path.stat()
        key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
        (cache / "verified").mkdir(exist_ok=True)
        (cache / "verified" / f"{key}.json").write_text(json.dumps(
            {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": DIGEST}))
    os.utime(weights / "touched.ckpt", ns=(0, 0))  # changed since that record was written: it proves nothing
    result = run_cli("fetch", "--verify")
    assert result.code == 1, result
    assert "old.ckpt ok" in result.out
    assert "touched.ckpt fails its check" in result.err
    assert (weights / "old.ckpt.sha256").read_text().startswith(DIGEST)


def tiny_conv_tasnet(shared: Path, tmp_path: Path, server: LoopbackServer) -> tuple[str, bytes, bytes]:
    """A registry table for a tiny Conv-TasNet served by `server` (no digest in it), its
    checkpoint's bytes, and the bytes of another checkpoint of the same size (other weights)."""
    import torch

    fixture = torch.load(shared / "parity" / "conv_tasnet_tiny.pt", weights_only=True)
    blobs = []
    for scale in (1.0, 0.5):
        target = tmp_path / f"tiny_{scale}.th"
        torch.save({key: value * scale for key, value in fixture["state_dict"].items()}, target)
        blobs.append(target.read_bytes())
    assert len(blobs[0]) == len(blobs[1])
    url = server.add("/v3.0/tiny.th", blobs[0])
    config = "\n".join(f"{key} = {json.dumps(value)}" for key, value in fixture["config"].items())
    table = (f'[models.tiny]\nfamily = "conv_tasnet"\ndescription = "tiny"\ntrained_rate = 44100\n'
             f'stems = ["drums", "bass", "other", "vocals"]\nchunk_size = 8000\nchunk_style = "demucs"\n'
             f'[models.tiny.config]\n{config}\n' + weights_table("tiny", url=url) + "\n")
    return table, blobs[0], blobs[1]


def test_every_load_hashes_the_file_against_its_first_download(server, cache, tmp_path, monkeypatch, run_cli,
                                                               shared):
    import torch

    torch.set_num_threads(1)
    table, original, other = tiny_conv_tasnet(shared, tmp_path, server)
    use_registry(tmp_path, monkeypatch, table)
    assert run_cli("fetch", "tiny").code == 0
    cached = cache / "weights" / "tiny.th"
    song = tmp_path / "song.wav"
    sf.write(song, 0.1 * np.random.default_rng(0).standard_normal((4000, 2)).astype(np.float32), 44100)
    result = run_cli("separate", song, "--model", "tiny", "--offline", "-o", tmp_path / "out")
    assert result.code == 0, result

    # Other weights of the same size under the same name, its mtime put back: only a hash can tell.
    stat = cached.stat()
    cached.write_bytes(other)
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = run_cli("separate", song, "--model", "tiny", "--offline", "-o", tmp_path / "out2")
    assert result.code == 1, result
    assert "fail their check" in result.err and "recorded when it was first downloaded" in result.err
    assert not (tmp_path / "out2").exists()
    assert (cache / "weights" / "tiny.th.sha256").read_text().split()[0] == hashlib.sha256(original).hexdigest()


def test_models_toml_digest_wins_over_the_recorded_one(server, cache, tmp_path, monkeypatch, run_cli):
    url = server.add("/w/pinned.ckpt", PAYLOAD)
    use_registry(tmp_path, monkeypatch, plain_model("pinned", url=url, sha256=DIGEST))
    assert run_cli("fetch", "pinned").code == 0
    record = cache / "weights" / "pinned.ckpt.sha256"
    assert record.read_text().startswith(DIGEST)

    record.write_text(f"{hashlib.sha256(b'x').hexdigest()}  pinned.ckpt\n")  # a wrong record: models.toml wins
    result = run_cli("fetch", "--verify")
    assert result.code == 0, result
    assert record.read_text().startswith(DIGEST)  # and the record is put right

    (cache / "weights" / "pinned.ckpt").write_bytes(CHANGED)  # a file that agrees with a record, not models.toml
    record.write_text(f"{hashlib.sha256(CHANGED).hexdigest()}  pinned.ckpt\n")
    result = run_cli("fetch", "--verify")
    assert result.code == 1 and "models.toml expects" in result.err, result


def test_a_host_that_changed_its_file_after_the_first_download_is_refused(server, cache, tmp_path, monkeypatch,
                                                                          run_cli):
    url = server.add("/w/tofu.ckpt", PAYLOAD)
    use_registry(tmp_path, monkeypatch, plain_model("tofu", url=url))
    assert run_cli("fetch", "tofu").code == 0
    (cache / "weights" / "tofu.ckpt").unlink()  # lost from the cache; its record stays
    server.add("/w/tofu.ckpt", CHANGED)
    result = run_cli("fetch", "tofu")
    assert result.code == 1, result
    assert "was recorded when this file was first downloaded" in result.err
    assert not (cache / "weights" / "tofu.ckpt").exists()


# --------------------------------------------------------------------------------------------
# 9b. Published digests and mirrors; `fetch --check`


def test_models_toml_carries_the_published_digests_and_mirrors(run_cli, monkeypatch):
    monkeypatch.delenv("SFSEP_REGISTRY", raising=False)
    result = run_cli("models", "--json")
    assert result.code == 0, result
    rows = {row["name"]: row for row in json.loads(result.out)}
    mel = rows["mel_roformer"]["sources"][0]
    assert mel["sha256"] == "87201f4d31afb5bc79993230fc49446918425574db48c01c405e44f365c7559e"
    assert mel["size"] == 913106900 and "melband-roformer-infer" in mel["checksum_source"]
    assert mel["mirrors"] == ["hf://Politrees/UVR_resources/models/Roformer/MelBand/vocals_mel_band_roformer.ckpt"]
    for row in rows.values():
        for source in row["sources"]:
            digest = source["sha256"]
            if digest and len(digest) == 64:
                assert source["checksum_source"], (row["name"], source)
            if digest and row["family"] == "htdemucs":  # demucs names carry the digest's first 8 hex digits
                assert len(digest) == 64 and source["file"].endswith(f"-{digest[:8]}.th")


def test_a_mirror_is_tried_when_the_source_fails(server, cache, tmp_path, monkeypatch, run_cli):
    good = server.add("/mirror/a.ckpt", PAYLOAD)
    use_registry(
        tmp_path, monkeypatch,
        plain_model("gone", url=server.url("/dead/a.ckpt"), sha256=DIGEST, mirrors=[{"url": good}]),
        plain_model("bad", url=server.add("/corrupt/b.ckpt", PAYLOAD, mode="corrupt"), sha256=DIGEST,
                    mirrors=[{"url": server.add("/mirror/b.ckpt", PAYLOAD)}]),
        plain_model("lost", url=server.url("/dead/c.ckpt"), sha256=DIGEST,
                    mirrors=[{"url": server.url("/dead/c2.ckpt")}]))
    result = run_cli("fetch", "gone", "bad")
    assert result.code == 0, result
    assert "trying the mirror " + good in result.err
    assert (cache / "weights" / "a.ckpt").read_bytes() == PAYLOAD
    assert (cache / "weights" / "b.ckpt").read_bytes() == PAYLOAD  # the source's bytes failed the digest
    result = run_cli("fetch", "lost")
    assert result.code == 1
    assert "none of the 2 sources" in result.err and "/dead/c.ckpt" in result.err and "/dead/c2.ckpt" in result.err


def test_fetch_check_asks_every_source_with_head_only(server, cache, tmp_path, monkeypatch, run_cli):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there any more
    server.add_hf("someone/model", "model.ckpt", PAYLOAD)
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    use_registry(
        tmp_path, monkeypatch,
        plain_model("moved", url=server.url("/dead/m.ckpt"), size=len(PAYLOAD),
                    mirrors=[{"url": server.add("/mirror/m.ckpt", PAYLOAD)},
                             {"hf_repo": "someone/model", "hf_filename": "model.ckpt"}]),
        plain_model("resized", url=server.add("/w/r.ckpt", PAYLOAD[:1000]), size=len(PAYLOAD)),
        plain_model("unreachable", url=f"http://127.0.0.1:{port}/x.ckpt"))
    result = run_cli("fetch", "--check", "moved")
    assert result.code == 0, result
    assert "/dead/m.ckpt does not serve the file (HTTP 404" in result.err
    assert "/mirror/m.ckpt (mirror) answers (HTTP 200, 1.0 MB)" in result.out
    assert "hf://someone/model/model.ckpt (mirror) answers" in result.out
    result = run_cli("fetch", "--check")
    assert result.code == 1, result
    assert "but models.toml expects 1048576 bytes" in result.err and "cannot connect" in result.err
    assert "2 of 5 source(s) answer; 2 checkpoint(s) have no source that does" in result.out
    assert server.gets("/") == [], server.gets("/")
    assert not (cache / "weights").exists()  # HEAD only


HF_FETCH = ["-m", "sfsep", "fetch"]


def hf_env(tmp_path: Path, endpoint: str, registry: Path) -> dict:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO),
           "SFSEP_CACHE": str(tmp_path / "cache"), "SFSEP_REGISTRY": str(registry),
           "HF_HUB_DISABLE_TELEMETRY": "1", "COLUMNS": "400"}
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "SFSEP_OFFLINE"):
        env.pop(name, None)
    return env


def test_a_hugging_face_mirror_and_the_digest_it_records(server, tmp_path):
    server.add_hf("mirror/copy", "sub/model.ckpt", PAYLOAD)
    registry = tmp_path / "models.toml"
    registry.write_text(plain_model("hfm", hf_repo="gone/original", hf_filename="model.ckpt",
                                    mirrors=[{"hf_repo": "mirror/copy", "hf_filename": "sub/model.ckpt"}]))
    env = hf_env(tmp_path, server.base, registry)
    done = subprocess.run([sys.executable, *HF_FETCH, "hfm"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "trying the mirror hf://mirror/copy/sub/model.ckpt" in done.stderr
    record = tmp_path / "cache" / "weights" / "huggingface" / "mirror" / "copy" / "sub" / "model.ckpt.sha256"
    assert record.read_text() == f"{DIGEST}  model.ckpt\n"
    verify = subprocess.run([sys.executable, *HF_FETCH, "--verify"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert verify.returncode == 0 and "1 cached file(s) checked, 0 failed" in verify.stdout, verify


# --------------------------------------------------------------------------------------------
# 10. Resume only what is unchanged


def test_resume_starts_over_when_the_host_changed_the_file(server, cache, tmp_path, monkeypatch, run_cli):
    url = server.add("/w/moving.ckpt", PAYLOAD, mode="drop")  # every connection drops halfway
    use_registry(tmp_path, monkeypatch, plain_model("moving", url=url))
    result = run_cli("fetch", "moving")
    assert result.code == 1 and "resumes from there" in result.err, result
    kept = (cache / "weights" / "moving.ckpt.part").stat().st_size
    assert 0 < kept < len(PAYLOAD)

    server.add("/w/moving.ckpt", CHANGED)  # the host replaced the file in between
    result = run_cli("fetch", "moving")
    assert result.code == 0, result
    assert (cache / "weights" / "moving.ckpt").read_bytes() == CHANGED  # not old bytes glued to new ones
    assert server.gets("/w/moving.ckpt")[-1][2] == f"bytes={kept}-"
    assert server.if_ranges[-1] == content_etag(PAYLOAD)  # the resume named the version it had begun
    assert not list((cache / "weights").glob("moving.ckpt.part*"))


def test_resume_by_last_modified_and_start_over_without_validators(server, cache, tmp_path, monkeypatch,
                                                                    run_cli):
    date = "Wed, 01 Jul 2026 10:00:00 GMT"
    use_registry(
        tmp_path, monkeypatch,
        plain_model("dated", url=server.add("/w/dated.ckpt", PAYLOAD, mode="drop", times=1, etag=False,
                                             last_modified=date)),
        plain_model("bare", url=server.add("/w/bare.ckpt", PAYLOAD, mode="drop", times=1, etag=False)))
    result = run_cli("fetch", "dated", "bare")
    assert result.code == 0, result
    dated, bare = server.gets("/w/dated.ckpt"), server.gets("/w/bare.ckpt")
    assert dated[1][2] == f"bytes={len(PAYLOAD) // 2}-"  # resumed, guarded by the date
    assert bare[1][2] is None  # nothing tells whether the rest still fits: from the start
    assert (cache / "weights" / "dated.ckpt").read_bytes() == PAYLOAD
    assert (cache / "weights" / "bare.ckpt").read_bytes() == PAYLOAD


# --------------------------------------------------------------------------------------------
# 11. Fail fast, in one line, and leave no lock files


def silent_host() -> socket.socket:
    """A socket that accepts connections (the kernel completes them) and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


def test_a_host_that_never_answers_fails_within_15_seconds(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))  # and the real pauses between attempts
    monkeypatch.setenv("COLUMNS", "400")
    listener = silent_host()
    port = listener.getsockname()[1]
    use_registry(tmp_path, monkeypatch, plain_model("mute", url=f"http://127.0.0.1:{port}/mute.ckpt"))
    start = time.monotonic()
    result = run_cli("fetch", "mute")
    elapsed = time.monotonic() - start
    listener.close()
    assert result.code == 1, result
    assert elapsed < 15, elapsed
    assert "sent nothing" in result.err and result.err.count("error:") == 1
    assert len(result.err.strip().splitlines()) == 1, result.err


@pytest.mark.parametrize("host", ["refusing", "silent"])
def test_an_unreachable_hugging_face_endpoint_fails_fast_and_quietly(tmp_path, host):
    listener = silent_host()
    port = listener.getsockname()[1]
    first_contact: list[float] = []
    if host == "refusing":
        listener.close()
    else:  # note when the first connection arrives, so that Python's start-up on a loaded machine is not counted
        def accept() -> None:
            with contextlib.suppress(OSError):
                while True:
                    connection, _ = listener.accept()
                    first_contact.append(time.monotonic())
                    held.append(connection)  # open and silent

        held: list[socket.socket] = []
        threading.Thread(target=accept, daemon=True).start()
    registry = tmp_path / "models.toml"
    registry.write_text(plain_model("hf", hf_repo="someone/model", hf_filename="model.ckpt"))
    start = time.monotonic()
    done = subprocess.run([sys.executable, *HF_FETCH, "hf"], env=hf_env(tmp_path, f"http://127.0.0.1:{port}", registry),
                          capture_output=True, text=True, timeout=120)
    end = time.monotonic()
    listener.close()
    assert done.returncode == 1, done
    assert end - (first_contact[0] if first_contact else start) < 15, (end - start, done.stderr)
    assert "Retrying" not in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert ("cannot connect" if host == "refusing" else "sent nothing") in done.stderr


def test_no_lock_files_are_left_behind(server, cache, tmp_path, monkeypatch, run_cli):
    use_registry(
        tmp_path, monkeypatch,
        plain_model("missing", url=server.url("/w/missing.ckpt")),
        plain_model("broken", url=server.add("/w/broken.ckpt", PAYLOAD, mode="500")),
        plain_model("fine", url=server.add("/w/fine.ckpt", PAYLOAD)))
    for _ in range(2):
        assert run_cli("fetch", "missing", "broken", "fine").code == 1
    assert sorted(p.name for p in (cache / "weights").iterdir()) == ["fine.ckpt", "fine.ckpt.sha256"]
