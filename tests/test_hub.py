"""sfsep.hub against servers on 127.0.0.1: downloads, resume, checksums, locks, offline, Drive, HF,
and the `sfsep fetch` / `sfsep cache` commands. Nothing here touches the network."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sfsep import hub
from sfsep.errors import WeightsError
from sfsep.registry import WeightsSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback_server import LoopbackServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SFSEP_SHARED") or REPO.parent / "shared")
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, not a multiple of the 64 kB serving pieces' half
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


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


def test_cache_folder_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("SFSEP_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "sfsep"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "sfsep"
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "own"))
    assert hub.cache_dir() == tmp_path / "own"
    assert hub.weights_dir() == tmp_path / "own" / "weights"


def test_first_download_then_cache_hit_without_a_request(server, cache):
    source = WeightsSource(url=server.add("/w/model.ckpt", PAYLOAD), sha256=DIGEST, size=len(PAYLOAD))
    path = hub.ensure(source, progress=False)
    assert path == cache / "weights" / "model.ckpt"
    assert path.read_bytes() == PAYLOAD
    assert not list(path.parent.glob("*.part"))
    assert len(server.gets("/w/model.ckpt")) == 1
    assert hub.cached_path(source) == path
    again = hub.ensure(source, progress=False)
    assert again == path
    assert len(server.requests) == 1  # the cache hit made no request at all


def test_progress_bar_path_runs(server, cache):
    source = WeightsSource(url=server.add("/w/bar.ckpt", PAYLOAD), sha256=DIGEST)
    assert hub.ensure(source, progress=True).read_bytes() == PAYLOAD


def test_resume_after_a_dropped_connection(server, cache):
    url = server.add("/w/drop.ckpt", PAYLOAD, mode="drop", times=1)
    path = hub.ensure(WeightsSource(url=url, sha256=DIGEST), progress=False)
    assert path.read_bytes() == PAYLOAD
    gets = server.gets("/w/drop.ckpt")
    assert len(gets) == 2
    assert gets[0][2] is None
    assert gets[1][2] == f"bytes={len(PAYLOAD) // 2}-"  # the second request asked only for the rest


def test_resume_across_runs_keeps_the_partial_file(server, cache, monkeypatch):
    url = server.add("/w/later.ckpt", PAYLOAD, mode="drop", times=1)
    source = WeightsSource(url=url, sha256=DIGEST)
    monkeypatch.setattr(hub, "ATTEMPTS", 1)
    with pytest.raises(WeightsError, match="resumes from there"):
        hub.ensure(source, progress=False)
    final = cache / "weights" / "later.ckpt"
    assert not final.exists()
    assert (cache / "weights" / "later.ckpt.part").stat().st_size == len(PAYLOAD) // 2
    assert hub.ensure(source, progress=False).read_bytes() == PAYLOAD
    assert server.gets("/w/later.ckpt")[-1][2] == f"bytes={len(PAYLOAD) // 2}-"
    assert not (cache / "weights" / "later.ckpt.part").exists()


def test_checksum_mismatch_leaves_nothing_under_the_final_name(server, cache):
    url = server.add("/w/bad.ckpt", PAYLOAD, mode="corrupt")
    with pytest.raises(WeightsError, match="sha256") as caught:
        hub.ensure(WeightsSource(url=url, sha256=DIGEST), progress=False)
    assert DIGEST in str(caught.value)
    assert not (cache / "weights" / "bad.ckpt").exists()
    assert not (cache / "weights" / "bad.ckpt.part").exists()


def test_size_mismatch_is_rejected(server, cache):
    url = server.add("/w/short.ckpt", PAYLOAD[:1000])
    with pytest.raises(WeightsError, match="expects"):
        hub.ensure(WeightsSource(url=url, size=len(PAYLOAD)), progress=False)
    assert not (cache / "weights" / "short.ckpt").exists()


def test_demucs_style_prefix_checksum(server, cache):
    name = f"955717e8-{DIGEST[:8]}.th"
    good = WeightsSource(url=server.add(f"/hybrid/{name}", PAYLOAD), sha256=DIGEST[:8])
    assert hub.ensure(good, progress=False).name == name
    wrong = WeightsSource(url=server.add("/hybrid/x-00000000.th", PAYLOAD), sha256="00000000")
    with pytest.raises(WeightsError):
        hub.ensure(wrong, progress=False)
    assert hub.checksum_matches(DIGEST, DIGEST[:8].upper())
    assert not hub.checksum_matches(DIGEST, "deadbeef")


def test_corrupted_cached_file_is_reported_and_downloaded_again(server, cache):
    source = WeightsSource(url=server.add("/w/again.ckpt", PAYLOAD), sha256=DIGEST)
    path = hub.ensure(source, progress=False)
    path.write_bytes(b"garbage" + PAYLOAD[7:])  # same size, new mtime: hashed again
    messages: list[str] = []
    assert hub.ensure(source, progress=False, log=messages.append).read_bytes() == PAYLOAD
    assert len(server.gets("/w/again.ckpt")) == 2
    assert any("fails its check" in message for message in messages)


def test_without_a_published_digest_the_recorded_one_guards_the_cache(server, cache):
    source = WeightsSource(url=server.add("/w/nodigest.ckpt", PAYLOAD))
    path = hub.ensure(source, progress=False)
    assert hub.check_file(path, source).ok
    path.write_bytes(PAYLOAD[:-1] + b"!")
    assert not hub.check_file(path, source).ok
    messages: list[str] = []
    assert hub.ensure(source, progress=False, log=messages.append).read_bytes() == PAYLOAD
    assert messages and len(server.gets("/w/nodigest.ckpt")) == 2


def test_404_and_500_give_clear_errors(server, cache):
    with pytest.raises(WeightsError, match="HTTP 404") as caught:
        hub.ensure(WeightsSource(url=server.url("/w/missing.ckpt")), progress=False)
    assert "--weights" in str(caught.value)
    assert len(server.gets("/w/missing.ckpt")) == 1  # a 404 is not retried
    url = server.add("/w/down.ckpt", PAYLOAD, mode="500")
    with pytest.raises(WeightsError, match="HTTP 500"):
        hub.ensure(WeightsSource(url=url), progress=False)
    assert len(server.gets("/w/down.ckpt")) == hub.ATTEMPTS
    assert not any(p.name.startswith(("missing", "down")) and not p.name.endswith(".lock")
                   for p in (cache / "weights").iterdir())


def test_transient_500_is_retried(server, cache):
    url = server.add("/w/flaky.ckpt", PAYLOAD, mode="500", times=2)
    assert hub.ensure(WeightsSource(url=url, sha256=DIGEST), progress=False).read_bytes() == PAYLOAD


def test_a_web_page_is_not_taken_for_weights(server, cache):
    url = server.add("/w/login.ckpt", PAYLOAD, mode="html")
    with pytest.raises(WeightsError, match="web page"):
        hub.ensure(WeightsSource(url=url), progress=False)
    assert not (cache / "weights" / "login.ckpt").exists()


def test_offline_miss_touches_no_network_and_says_what_to_do(server, cache, monkeypatch):
    source = WeightsSource(url=server.add("/w/off.ckpt", PAYLOAD), sha256=DIGEST)
    with pytest.raises(WeightsError) as caught:
        hub.ensure(source, offline=True, model="htdemucs")
    message = str(caught.value)
    assert str(cache / "weights" / "off.ckpt") in message
    assert "sfsep fetch htdemucs" in message and "--weights" in message
    monkeypatch.setenv("SFSEP_OFFLINE", "1")
    with pytest.raises(WeightsError, match="offline"):
        hub.ensure(source)
    assert server.requests == []
    monkeypatch.delenv("SFSEP_OFFLINE")
    hub.ensure(source, progress=False)
    assert hub.ensure(source, offline=True) == cache / "weights" / "off.ckpt"
    assert len(server.requests) == 1


def test_unreachable_host_is_a_weights_error(cache, monkeypatch):
    monkeypatch.setattr(hub, "ATTEMPTS", 1)
    with pytest.raises(WeightsError, match="cannot connect"):
        hub.ensure(WeightsSource(url="http://127.0.0.1:9/none.ckpt"), progress=False)


@pytest.mark.parametrize("style", ["form", "cookie"])
def test_google_drive_confirmation(server, cache, monkeypatch, style):
    monkeypatch.setenv("SFSEP_GDRIVE_URL", server.url("/uc"))
    server.add_gdrive("FILE_ID_1", PAYLOAD, style=style)
    source = WeightsSource(gdrive_id="FILE_ID_1", filename="bsrnn.pt", sha256=DIGEST)
    path = hub.ensure(source, progress=False)
    assert path.name == "bsrnn.pt" and path.read_bytes() == PAYLOAD
    assert hub.source_label(source) == "https://drive.google.com/file/d/FILE_ID_1"


def test_google_drive_refusal_is_explained(server, cache, monkeypatch):
    monkeypatch.setenv("SFSEP_GDRIVE_URL", server.url("/uc"))
    server.add("/uc", b"<html><body>Quota exceeded</body></html>", content_type="text/html")
    with pytest.raises(WeightsError, match="did not serve"):
        hub.ensure(WeightsSource(gdrive_id="NOPE", filename="x.pt"), progress=False)


CONCURRENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sfsep import hub
    from sfsep.registry import WeightsSource
    url, digest, folder, name = sys.argv[1:5]
    if len(sys.argv) > 5:  # only to show that the test can fail: no lock at all
        import contextlib
        hub._download_lock = lambda path: contextlib.nullcontext()
    Path(folder, "ready-" + name).touch()
    while not Path(folder, "go").exists():  # start both downloads at the same moment
        time.sleep(0.01)
    print(hub.ensure(WeightsSource(url=url, sha256=digest), progress=False))
""")


def concurrent_downloads(server, cache, tmp_path, *extra) -> int:
    url = server.add("/w/shared.ckpt", PAYLOAD, delay=0.05)  # ~0.8 s per download: the runs overlap
    env = {**os.environ, "SFSEP_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, url, DIGEST, str(tmp_path), str(n), *extra],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(2)]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{n}").exists() for n in range(2)):
        assert time.monotonic() < deadline and all(run.poll() is None for run in runs), "a downloader died"
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        assert Path(out.strip()).read_bytes() == PAYLOAD
    return len(server.gets("/w/shared.ckpt"))


def test_two_processes_download_once(server, cache, tmp_path):
    assert concurrent_downloads(server, cache, tmp_path) == 1


HF_SCRIPT = textwrap.dedent("""
    import json, sys
    from sfsep import hub
    from sfsep.errors import WeightsError
    from sfsep.registry import WeightsSource
    source = WeightsSource(hf_repo="someone/model", hf_filename="model.ckpt", sha256=sys.argv[1])
    out = {"path": str(hub.ensure(source, offline=sys.argv[2] == "offline"))}
    out["cached"] = str(hub.cached_path(source))
    try:
        hub.ensure(WeightsSource(hf_repo="someone/model", hf_filename="other.ckpt"), offline=True, model="m")
    except WeightsError as exc:
        out["miss"] = str(exc)
    print(json.dumps(out))
""")


def test_hugging_face_source_through_a_fake_endpoint(server, tmp_path):
    server.add_hf("someone/model", "model.ckpt", PAYLOAD)
    env = {**os.environ, "HF_ENDPOINT": server.base, "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO),
           "SFSEP_CACHE": str(tmp_path / "cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_TOKEN", None)

    def run(mode: str, **extra: str) -> dict:
        done = subprocess.run([sys.executable, "-c", HF_SCRIPT, DIGEST, mode], env={**env, **extra},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run("online")
    path = Path(first["path"])
    assert path.read_bytes() == PAYLOAD
    assert str(tmp_path / "hf") in str(path)  # HF_HOME decides where it lives
    assert first["cached"] == first["path"]
    assert "Hugging Face cache" in first["miss"] and "sfsep fetch m" in first["miss"]
    count = len(server.requests)
    second = run("offline")
    assert second["path"] == first["path"]
    assert len(server.requests) == count  # offline: no request
    third = run("online", HF_HUB_OFFLINE="1")  # huggingface_hub's own offline switch is honoured
    assert third["path"] == first["path"] and "Hugging Face cache" in third["miss"]
    assert len(server.requests) == count


# --------------------------------------------------------------------------------------------
# Commands and the whole load path


def _registry_toml(tmp_path: Path, server: LoopbackServer) -> Path:
    import torch

    fixture = torch.load(SHARED / "parity" / "conv_tasnet_tiny.pt", weights_only=True)
    state = fixture["state_dict"]
    other = {key: value * 0.5 for key, value in state.items()}
    blobs = {}
    for name, sd in (("tiny_a.th", state), ("tiny_b.th", other)):
        target = tmp_path / name
        torch.save(sd, target)
        blobs[name] = target.read_bytes()
        server.add(f"/v3.0/{name}", blobs[name])
    cfg = fixture["config"]
    config_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in cfg.items())
    text = f"""
[models.tiny_bag]
family = "conv_tasnet"
description = "two tiny Conv-TasNets as a bag"
trained_rate = 44100
stems = ["drums", "bass", "other", "vocals"]
chunk_size = 8000
chunk_style = "demucs"
overlap = 0.25
bag_weights = [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]]
[models.tiny_bag.config]
{config_lines}
[[models.tiny_bag.weights]]
url = "{server.url('/v3.0/tiny_a.th')}"
sha256 = "{hashlib.sha256(blobs['tiny_a.th']).hexdigest()}"
[[models.tiny_bag.weights]]
url = "{server.url('/v3.0/tiny_b.th')}"
sha256 = "{hashlib.sha256(blobs['tiny_b.th']).hexdigest()[:8]}"

[models.gone]
family = "classic"
description = "a model whose file is gone"
trained_rate = 44100
stems = ["vocals"]
[models.gone.config]
[[models.gone.weights]]
url = "{server.url('/v3.0/gone.th')}"
"""
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path, fixture


def run_cli(args, capsys):
    from sfsep.cli import main

    with pytest.raises(SystemExit) as caught:
        main(list(args))
    out, err = capsys.readouterr()
    return caught.value.code, out, err


def test_fetch_command_cache_path_and_bag_loading(server, cache, tmp_path, monkeypatch, capsys):
    import torch

    torch.set_num_threads(1)

    toml, fixture = _registry_toml(tmp_path, server)
    monkeypatch.setenv("SFSEP_REGISTRY", str(toml))
    code, out, err = run_cli(["fetch", "tiny_bag"], capsys)
    assert code == 0, err
    assert out.count(" ok ") == 2
    assert len(server.gets("/v3.0/")) == 2
    code, out, _ = run_cli(["models", "--json"], capsys)
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["tiny_bag"]["cached"] is True and rows["gone"]["cached"] is False
    code, out, _ = run_cli(["fetch", "--verify"], capsys)
    assert code == 0 and "2 cached file(s) checked, 0 failed" in out
    code, out, err = run_cli(["fetch", "gone"], capsys)
    assert code == 1 and "HTTP 404" in err
    code, out, _ = run_cli(["cache", "path"], capsys)
    assert code == 0 and out.strip() == str(cache)

    from sfsep.pipeline import load_separator

    separator = load_separator("tiny_bag", device="cpu", offline=True)
    (bag,) = separator.modules(44100)
    mix = fixture["input"][..., :4000]
    with torch.no_grad():
        first, second = (member(mix) for member in bag.members)
        combined = bag(mix)
    expected = torch.stack([first[:, 0], second[:, 1], (first[:, 2] + second[:, 2]) / 2, second[:, 3]], 1)
    torch.testing.assert_close(combined, expected)

    import numpy as np
    import soundfile as sf

    song = tmp_path / "song.wav"
    sf.write(song, 0.1 * np.random.default_rng(0).standard_normal((11025, 2)).astype(np.float32), 22050)
    requests_before = len(server.requests)
    code, out, err = run_cli(["separate", str(song), "--model", "tiny_bag", "--offline", "-o", str(tmp_path / "out")],
                             capsys)
    assert code == 0, err
    assert len(server.requests) == requests_before  # offline: served from the cache
    written = sorted(p.name for p in (tmp_path / "out").rglob("*.wav"))
    assert written == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]

    (cache / "weights" / "tiny_a.th").write_bytes(b"x" * 100)
    code, out, err = run_cli(["fetch", "--verify"], capsys)
    assert code == 1 and "fails its check" in err
    code, out, err = run_cli(["fetch", "--verify", "tiny_bag"], capsys)
    assert code == 0, err
    assert (cache / "weights" / "tiny_a.th").read_bytes() == (tmp_path / "tiny_a.th").read_bytes()

    (cache / "unrelated.txt").write_text("not sfsep's")  # e.g. SFSEP_CACHE pointed at a shared folder
    code, out, _ = run_cli(["cache", "clean"], capsys)
    assert code == 0 and "removed" in out
    assert not (cache / "weights").exists() and not (cache / "verified").exists()
    assert (cache / "unrelated.txt").read_text() == "not sfsep's"
    code, _, err = run_cli(["fetch"], capsys)
    assert code == 2
