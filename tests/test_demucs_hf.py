"""demucs' own Hugging Face repositories (issue 14): models.toml takes demucs' models from the
Hub's safetensors exports first and from the legacy .th packages when the Hub fails, and a
safetensors export loads exactly as the .th package it was made from.

The exports here are written the way demucs 4.1.0's tools/export_hf.py writes them (read for the
format only): the package's state as the tensors, and string metadata `klass` (the class's dotted
name), `args` and `kwargs` as JSON, a Fraction written as {"_type": "fraction", "numerator": n,
"denominator": d}. The Hub is tests/loopback_server.py behind HF_ENDPOINT; runs that use it are
subprocesses (huggingface_hub fixes HF_HOME at import) whose proxy settings send anything but
127.0.0.1 to a closed port, so nothing here can reach the network.
"""

from __future__ import annotations

import fractions
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from sfsep import checkpoint, hub
from sfsep.errors import ModelError, WeightsError
from sfsep.registry import registry, spec_from_table

from parity import load_fixture
from test_checkpoint import save_package  # a .th package naming demucs' class, as demucs pickles it

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback_server import LoopbackServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KLASS = "demucs.htdemucs.HTDemucs"
SIGNATURE = "955717e8"  # htdemucs' model in demucs' repositories

# demucs 4.1.0's bags (demucs/remote/<name>.yaml), which its Hub repositories hold as <name>.yaml.
BAGS = {
    "htdemucs": ("adefossez/HTDemucs", "models: ['955717e8']\n", None),
    "htdemucs_ft": ("adefossez/HTDemucs-ft", "models: ['f7e0c4bc', 'd12395a8', '92cfc3b6', '04573f0d']\n"
                    "weights: [\n  [1., 0., 0., 0.],\n  [0., 1., 0., 0.],\n  [0., 0., 1., 0.],\n  [0., 0., 0., 1.],\n]\n",
                    [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]),
    "htdemucs_6s": ("adefossez/HTDemucs-6s", "models: ['5c90dfd2']\n", None),
}


def demucs_json(value) -> str:
    """JSON as demucs' export writes package arguments: Fractions as tagged objects."""
    def encode(item):
        if isinstance(item, fractions.Fraction):
            return {"_type": "fraction", "numerator": item.numerator, "denominator": item.denominator}
        return str(item)

    return json.dumps(value, default=encode)


@pytest.fixture(scope="module")
def tiny() -> dict:
    """The tiny HT-Demucs fixture as a demucs package would hold it: float16 weights (as demucs'
    published files), its kwargs with the segment as a Fraction (3/10 s)."""
    fixture = load_fixture("htdemucs_demucsrepo_tiny")
    kwargs = dict(fixture["config"])
    kwargs["segment"] = fractions.Fraction(3, 10)
    return {"kwargs": kwargs, "state": {key: value.half() for key, value in fixture["state_dict"].items()},
            "config": fixture["config"]}


def write_package(path: Path, tiny: dict) -> bytes:
    save_package(path, tiny["state"], tiny["kwargs"])
    return path.read_bytes()


def write_export(path: Path, tiny: dict, **metadata: str) -> bytes:
    """A safetensors export in demucs' format; `metadata` replaces (or, with value None, drops) keys."""
    from safetensors.torch import save_file

    fields = {"klass": KLASS, "args": demucs_json(()), "kwargs": demucs_json(tiny["kwargs"])}
    fields.update(metadata)
    save_file({key: value.contiguous() for key, value in tiny["state"].items()}, str(path),
              metadata={key: value for key, value in fields.items() if value is not None})
    return path.read_bytes()


@pytest.fixture()
def server():
    loopback = LoopbackServer()
    yield loopback
    loopback.close()


def song(tmp_path: Path) -> Path:
    path = tmp_path / "song.wav"
    rng = np.random.default_rng(3)
    sf.write(path, 0.2 * rng.standard_normal((22050, 2)).astype(np.float32), 44100, subtype="FLOAT")
    return path


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def hub_env(tmp_path: Path, server: LoopbackServer, registry_file: Path | None = None) -> dict:
    dead = f"http://127.0.0.1:{closed_port()}"
    env = {**os.environ, "HF_ENDPOINT": server.base, "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO),
           "SFSEP_CACHE": str(tmp_path / "cache"), "HF_HUB_DISABLE_TELEMETRY": "1", "COLUMNS": "400",
           "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
           "OMP_NUM_THREADS": "1"}  # as the suite's own processes: two threads on two shared cores only thrash
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "SFSEP_OFFLINE", "SFSEP_REGISTRY"):
        env.pop(name, None)
    if registry_file is not None:
        env["SFSEP_REGISTRY"] = str(registry_file)
    return env


def sfsep(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sfsep", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=180)


def stems(folder: Path) -> dict[str, np.ndarray]:
    found = {path.stem: sf.read(path, dtype="float32")[0] for path in folder.rglob("*.wav")}
    assert sorted(found) == ["bass", "drums", "other", "vocals"], sorted(found)
    return found


def assert_same_stems(first: Path, second: Path) -> None:
    one, two = stems(first), stems(second)
    for name in one:
        assert np.abs(one[name]).max() > 1e-3, name  # the model did produce something
        assert np.abs(one[name] - two[name]).max() <= 1e-5, name


def tiny_registry(tmp_path: Path, tiny: dict, weights: str) -> Path:
    """A models.toml with `tiny_demucs`, run as demucs runs htdemucs; `weights` is the body of its
    [[models.tiny_demucs.weights]] table."""
    config = "\n".join(f"{key} = {json.dumps(value)}" for key, value in tiny["config"].items() if value is not None)
    path = tmp_path / "models.toml"
    path.write_text(f"""
[models.tiny_demucs]
family = "htdemucs"
description = "a tiny HT-Demucs"
trained_rate = 44100
stems = ["drums", "bass", "other", "vocals"]
chunk_size = 13230
overlap = 0.25
chunk_style = "demucs"
normalize = "demucs"
[models.tiny_demucs.config]
{config}
[[models.tiny_demucs.weights]]
{weights}
""")
    return path


# --------------------------------------------------------------------------------------------
# models.toml


def test_demucs_models_come_from_their_hub_repositories_first():
    """Each demucs model: demucs' Hub repository and <signature>.safetensors (named as demucs 4.1.0
    does), no invented digest, then the legacy .th with its published digest; a bag lists the
    files and weights of its bag yaml."""
    models = registry()
    for name in ("htdemucs", "htdemucs_ft", "htdemucs_6s", "htdemucs_msst"):
        repo, bag_yaml, bag_weights = BAGS["htdemucs" if name == "htdemucs_msst" else name]
        signatures = yaml.safe_load(bag_yaml)["models"]
        spec = models[name]
        assert [source.hf_filename for source in spec.weights] == [f"{sig}.safetensors" for sig in signatures], name
        if bag_weights is not None:
            assert [list(row) for row in spec.bag_weights] == yaml.safe_load(bag_yaml)["weights"] == bag_weights
        for source, sig in zip(spec.weights, signatures):
            assert source.hf_repo == repo and source.hf_revision is None, (name, source)
            assert source.sha256 is None and source.size is None, (name, source)  # none published: TOFU
            assert "no digest" in source.checksum_source and "trust on first use" in source.checksum_source
            (legacy,) = source.mirrors
            assert legacy.url.startswith("https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/")
            assert legacy.cache_name == legacy.url.rsplit("/", 1)[1]  # its own name in the cache
            prefix = legacy.cache_name.removeprefix(f"{sig}-").removesuffix(".th")
            assert len(prefix) == 8 and len(legacy.sha256) == 64 and legacy.sha256.startswith(prefix), legacy
            assert "demucs-infer" in legacy.checksum_source
    assert all(not source.hf_repo for source in models["conv_tasnet"].weights)  # demucs v2: no Hub repository


def test_a_mirror_with_its_own_digest_is_another_file_held_to_that_digest(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "RETRY_PAUSE_SECONDS", 0.0)
    package = b"legacy package bytes" * 1000
    digest = hashlib.sha256(package).hexdigest()
    legacy_path = f"/legacy/955717e8-{digest[:8]}.th"
    table = {"family": "htdemucs", "stems": ["a"], "weights": [{
        "url": server.url("/hub/955717e8.safetensors"),  # gone: 404
        "mirrors": [{"url": server.add(legacy_path, package, mode="corrupt"), "sha256": digest,
                     "checksum_source": "a published list"}]}]}
    (source,) = spec_from_table("m", table).weights
    (legacy,) = source.mirrors
    assert source.sha256 is None and legacy.sha256 == digest and legacy.cache_name == f"955717e8-{digest[:8]}.th"
    with pytest.raises(WeightsError, match=f"models.toml expects {digest}"):  # a corrupted copy: its own digest
        hub.ensure(source, progress=False, log=lambda message: None)
    server.add(legacy_path, package)
    path = hub.ensure(source, progress=False, log=lambda message: None)
    assert path.name == f"955717e8-{digest[:8]}.th" and path.read_bytes() == package
    table["weights"][0]["mirrors"][0].pop("sha256")
    with pytest.raises(ModelError, match="checksum_source needs its own sha256"):
        spec_from_table("m", table)


# --------------------------------------------------------------------------------------------
# Reading an export


def test_an_export_gives_the_checkpoint_and_contract_of_its_package(tmp_path, tiny):
    from sfsep.pipeline import load_separator

    package, export = tmp_path / f"{SIGNATURE}-00000000.th", tmp_path / f"{SIGNATURE}.safetensors"
    write_package(package, tiny)
    write_export(export, tiny)
    from_package, from_export = checkpoint.load_checkpoint(package), checkpoint.load_checkpoint(export)
    assert from_export.class_name == from_package.class_name == KLASS
    assert from_export.kwargs == from_package.kwargs and from_export.kwargs["segment"] == "3/10"
    assert from_export.upcast == from_package.upcast == len(tiny["state"])
    assert from_export.state.keys() == from_package.state.keys()
    assert all(torch.equal(from_export.state[key], from_package.state[key]) for key in from_package.state)
    renamed = tmp_path / "export.bin"  # recognised by its header, not its name
    renamed.write_bytes(export.read_bytes())
    assert checkpoint.load_checkpoint(renamed).kwargs == from_package.kwargs
    plain = tmp_path / "plain.safetensors"  # no package metadata (e.g. another tool's {"format": "pt"}): a state_dict
    write_export(plain, tiny, klass=None, args=None, kwargs=None, format="pt")
    loaded = checkpoint.load_checkpoint(plain)
    assert loaded.class_name is None and loaded.kwargs == {} and loaded.state.keys() == from_package.state.keys()
    separators = [load_separator("htdemucs", device="cpu", weights=path) for path in (package, renamed)]
    assert separators[0].spec == separators[1].spec
    assert separators[0].contract(44100) == separators[1].contract(44100)
    assert separators[1].contract(44100).segment == round(0.3 * 44100)  # the package's own segment


@pytest.mark.parametrize("metadata, problem", [
    ({"kwargs": "{'sources': ['drums']}"}, "'kwargs' is not valid JSON"),
    ({"kwargs": json.dumps({"segment": {"_type": "fraction", "numerator": 3}})}, "kwargs.segment"),
    ({"kwargs": json.dumps({"segment": {"_type": "fraction", "numerator": 3, "denominator": 0}})},
     "kwargs.segment is a fraction 3/0"),
    ({"kwargs": json.dumps({"sources": {"_type": "tuple", "items": []}})}, "kwargs.sources is an encoded value"),
    ({"kwargs": "[1, 2]"}, "'kwargs' is a JSON list, not an object"),
    ({"klass": "os.system"}, "'klass' names 'os.system'"),
    ({"args": None}, "not args"),
    ({"structure": "{}"}, "DiffQ-quantized"),
    ({"truncate": "yes"}, "not a readable safetensors file"),
])
def test_an_export_with_bad_metadata_is_one_line_naming_the_file(tmp_path, tiny, run_cli, metadata, problem):
    bad = tmp_path / f"{SIGNATURE}.safetensors"
    metadata = dict(metadata)
    truncate = metadata.pop("truncate", None)
    data = write_export(bad, tiny, **metadata)
    if truncate:
        bad.write_bytes(data[: len(data) // 2])
    result = run_cli(song(tmp_path), "--model", "htdemucs", "--weights", bad, "-o", tmp_path / "out")
    assert result.code == 1, result
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert str(bad) in result.err and problem in result.err, result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.wav"))


def test_a_downloaded_export_whose_kwargs_cannot_build_a_model_is_one_line(server, tmp_path, tiny, run_cli,
                                                                           monkeypatch):
    """A downloaded export has no published digest to vouch for it: its recorded kwargs are
    checked field by field, as those of a --weights file are."""
    export = write_export(tmp_path / "export.safetensors", tiny,
                          kwargs=demucs_json({**tiny["kwargs"], "depth": "four"}))
    url = server.add(f"/exports/{SIGNATURE}.safetensors", export)
    monkeypatch.setenv("SFSEP_REGISTRY", str(tiny_registry(tmp_path, tiny, f'url = "{url}"')))
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))
    result = run_cli(song(tmp_path), "--model", "tiny_demucs", "-o", tmp_path / "out")
    assert result.code != 0 and len(result.err.strip().splitlines()) == 1, result
    assert str(tmp_path / "cache" / "weights" / f"{SIGNATURE}.safetensors") in result.err
    assert "depth must be" in result.err and "'four'" in result.err, result.err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# Through the Hub (loopback) and the public entry point


def test_the_packaged_demucs_models_download_from_their_hub_repositories(server, tmp_path, tiny):
    """`sfsep fetch` with the packaged models.toml against a Hub holding demucs' repositories
    (each bag's yaml and the files it lists, nothing else): every file comes from its repository,
    and its digest is recorded (none is published)."""
    export = write_export(tmp_path / "export.safetensors", tiny)
    for name, (repo, bag_yaml, _) in BAGS.items():
        server.add_hf(repo, f"{name}.yaml", bag_yaml.encode())
        for sig in yaml.safe_load(bag_yaml)["models"]:
            server.add_hf(repo, f"{sig}.safetensors", export)
    done = sfsep(hub_env(tmp_path, server), "fetch", "htdemucs", "htdemucs_ft", "htdemucs_6s", "htdemucs_msst")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" ok ") == 7, done.stdout  # htdemucs_msst runs htdemucs' file: cached already
    assert "warning" not in done.stderr and "dl.fbaipublicfiles.com" not in done.stdout + done.stderr
    for name, (repo, bag_yaml, _) in BAGS.items():
        for sig in yaml.safe_load(bag_yaml)["models"]:
            # asked for (a file whose content is cached already is not fetched again by huggingface_hub)
            assert any(request[1] == f"/{repo}/resolve/main/{sig}.safetensors" for request in server.requests)
            record = tmp_path / "cache" / "weights" / "huggingface" / repo / f"{sig}.safetensors.sha256"
            assert record.read_text().split()[0] == hashlib.sha256(export).hexdigest()  # trust on first use
    assert list((tmp_path / "hf").rglob(f"{SIGNATURE}.safetensors"))  # in the Hugging Face cache (HF_HOME)


def test_the_hub_export_and_its_legacy_fallback_separate_alike(server, tmp_path, tiny, run_cli, monkeypatch):
    """`sfsep FILE --model M` where M's first source is a Hub export and its mirror the legacy .th
    (models.toml's layout for demucs' models): from the Hub; then, with fresh caches and the Hub
    answering 404, from the legacy URL, held to its own digest; the stems agree within 1e-5. The
    cached .th then serves offline."""
    export = write_export(tmp_path / "export.safetensors", tiny)
    hub_paths = [f"/adefossez/HTDemucs/resolve/{revision}/{SIGNATURE}.safetensors" for revision in ("main", "c" * 40)]
    server.add_hf("adefossez/HTDemucs", f"{SIGNATURE}.safetensors", export)
    package = tmp_path / f"{SIGNATURE}-00000000.th"
    data = write_package(package, tiny)
    digest = hashlib.sha256(data).hexdigest()
    legacy_url = server.add(f"/demucs/hybrid_transformer/{SIGNATURE}-{digest[:8]}.th", data)
    registry_file = tiny_registry(tmp_path, tiny, f"""
hf_repo = "adefossez/HTDemucs"
hf_filename = "{SIGNATURE}.safetensors"
[[models.tiny_demucs.weights.mirrors]]
url = "{legacy_url}"
sha256 = "{digest}"
checksum_source = "the test"
""")
    wav = song(tmp_path)
    hub_run = tmp_path / "hub"
    done = sfsep(hub_env(hub_run, server, registry_file), wav, "--model", "tiny_demucs", "-o", hub_run / "out",
                 "--bits", "32")
    assert done.returncode == 0, done.stderr
    assert server.gets(hub_paths[0]) and not server.gets(legacy_url[len(server.base):])

    for path in hub_paths:  # the Hub lost the file
        del server.entries[path]
    legacy_run = tmp_path / "legacy"
    done = sfsep(hub_env(legacy_run, server, registry_file), wav, "--model", "tiny_demucs", "-o",
                 legacy_run / "out", "--bits", "32")
    assert done.returncode == 0, done.stderr
    assert f"trying the mirror {legacy_url}" in done.stderr
    asked = [request for request in server.requests if request[1] == hub_paths[0]]
    assert server.requests.index(asked[-1]) < server.requests.index(("GET", legacy_url[len(server.base):], None))
    cached = legacy_run / "cache" / "weights" / f"{SIGNATURE}-{digest[:8]}.th"
    assert cached.read_bytes() == data
    assert_same_stems(hub_run / "out", legacy_run / "out")

    monkeypatch.setenv("SFSEP_REGISTRY", str(registry_file))
    monkeypatch.setenv("SFSEP_CACHE", str(legacy_run / "cache"))  # offline, the cached legacy file serves
    requests = len(server.requests)
    result = run_cli(wav, "--model", "tiny_demucs", "--offline", "-o", tmp_path / "offline", "--bits", "32")
    assert result.code == 0, result
    assert len(server.requests) == requests
    assert_same_stems(tmp_path / "offline", legacy_run / "out")


def test_offline_without_weights_names_the_hub_file_and_the_legacy_one(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))
    result = run_cli(song(tmp_path), "--model", "htdemucs", "--offline", "-o", tmp_path / "out")
    assert result.code == 1 and len(result.err.strip().splitlines()) == 1, result
    assert "adefossez/HTDemucs/955717e8.safetensors" in result.err
    assert str(tmp_path / "cache" / "weights" / "955717e8-8726e21a.th") in result.err
