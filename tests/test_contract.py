"""The run-time contract: a loaded model is run the way its checkpoint says, through the CLI too.

The bug this guards against: a demucs package whose own segment is 3/10 s was chunked with
models.toml's 7.8-s segment (343980 samples), so `sfsep FILE --model htdemucs --weights pkg.th`
differed from demucs' `apply_model` on that package by up to 1.16.
"""

from __future__ import annotations

import fractions
import re

import numpy as np
import soundfile as sf
import torch
from importlib import resources

from parity import TOLERANCE, load_fixture
from sfsep.inference import demix, normalize_mixture
from sfsep.models import build_model
from sfsep.pipeline import load_separator
from test_checkpoint import save_package


def _package(tmp_path):
    data = load_fixture("htdemucs_demucsrepo_tiny")
    kwargs = {key: value for key, value in data["config"].items() if value is not None}
    kwargs["segment"] = fractions.Fraction(3, 10)
    path = tmp_path / "tiny-00000000.th"
    save_package(path, data["state_dict"], kwargs)
    return path, data


def _registry_without_normalization(tmp_path):
    """The packaged models.toml with htdemucs' whole-track normalization turned off, so that the
    CLI's output can be compared with the fixture's apply_model pair as it was recorded."""
    text = resources.files("sfsep").joinpath("models.toml").read_text(encoding="utf-8")
    section = re.search(r"\[models\.htdemucs\]\n(.*?)\n\[", text, re.S)
    body = section.group(1)
    assert 'normalize = "demucs"' in body
    text = text.replace(body, body.replace('normalize = "demucs"', "normalize = false"), 1)
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _stems(folder):
    return {path.stem: torch.from_numpy(np.ascontiguousarray(sf.read(path, dtype="float32", always_2d=True)[0].T))
            for path in sorted(folder.rglob("*.wav"))}


def test_demucs_package_runs_with_its_own_segment_through_the_cli(run_cli, tmp_path, monkeypatch):
    package, data = _package(tmp_path)
    song = tmp_path / "song.wav"
    sf.write(song, data["apply_input"][0].T.numpy(), 44100, subtype="FLOAT")
    monkeypatch.setenv("SFSEP_REGISTRY", str(_registry_without_normalization(tmp_path)))
    out = tmp_path / "out"
    result = run_cli(song, "--model", "htdemucs", "--weights", package, "--out", out, "--bits", "32",
                     "--clip", "none")
    assert result.code == 0, result
    stems = _stems(out)
    assert list(stems) == sorted(["drums", "bass", "other", "vocals"])
    expected = data["apply_output"][0]  # demucs' apply_model: (sources, channels, samples)
    for index, name in enumerate(["drums", "bass", "other", "vocals"]):
        error = (stems[name] - expected[index]).abs().max().item()
        assert error < TOLERANCE, (name, error)


def test_demucs_package_contract_and_normalized_output(run_cli, tmp_path):
    """With the packaged models.toml (demucs' whole-track normalization on), the CLI's stems are
    the normalized mixture run as apply_model runs the package, mapped back."""
    package, data = _package(tmp_path)
    separator = load_separator("htdemucs", device="cpu", weights=package)
    contract = separator.contract(44100)
    assert (contract.style, contract.segment, contract.padded_length, contract.normalize) == \
        ("demucs", 13230, 13230, "demucs")
    mix = data["apply_input"][0]
    song = tmp_path / "song.wav"
    sf.write(song, mix.T.numpy(), 44100, subtype="FLOAT")
    result = run_cli(song, "--model", "htdemucs", "--weights", package, "--out", tmp_path / "out", "--bits",
                     "32", "--clip", "none")
    assert result.code == 0, result
    stems = _stems(tmp_path / "out")

    model = build_model("htdemucs", {key: value for key, value in data["config"].items() if value is not None})
    model.load_state_dict(data["state_dict"], strict=True)
    normalized, restore = normalize_mixture(mix, "demucs")
    params = data["apply_params"]
    expected = restore(demix(model, normalized, chunk_size=params["segment_length"], overlap=params["overlap"],
                             style="demucs", padded_length=params["segment_length"]))
    for index, name in enumerate(["drums", "bass", "other", "vocals"]):
        assert (stems[name] - expected[index]).abs().max().item() < TOLERANCE


def test_reading_the_registry_does_not_import_torch():
    """`sfsep models` and `--help` stay quick: the CLI and the registry import no torch."""
    import subprocess
    import sys

    code = "import sys, sfsep.cli, sfsep.registry; sfsep.registry.registry(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_classical_separators_run_in_bounded_chunks_of_their_own_choosing():
    for name in ("classic", "nmf"):
        separator = load_separator(name, device="cpu")
        for rate in (8000, 44100):
            contract = separator.contract(rate)
            segment, overlap = separator.modules(rate)[0].run_contract_hint()
            assert (contract.style, contract.segment, contract.overlap) == ("fade", segment, overlap)
            assert segment < 200 * rate  # a few minutes at most, whatever the track's length
