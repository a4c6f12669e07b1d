"""The shared parity material (../shared/parity) for the architecture tests: where it is, and
how to load a tiny-config fixture or a published manifest.

CI clones the repository with shared/ beside it; SFSEP_SHARED points elsewhere. A missing folder
fails the test that needs it (never a skip).
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import torch

TOLERANCE = 1e-5
"""Max abs difference allowed against the reference implementations' float32 outputs."""


def shared_dir() -> Path:
    override = os.environ.get("SFSEP_SHARED")
    folder = Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared"
    assert folder.is_dir(), f"the shared folder is missing: {folder} (set SFSEP_SHARED)"
    return folder


def load_fixture(name: str) -> dict:
    """A tiny-config fixture, e.g. load_fixture("scnet_tiny"): config, state_dict, input, output, ..."""
    path = shared_dir() / "parity" / (name if name.endswith(".pt") else f"{name}.pt")
    assert path.is_file(), f"missing parity fixture {path}"
    return torch.load(path, weights_only=True)


def load_manifest(name: str) -> dict:
    """A published configuration's manifest, its config parsed (some store it as a Python repr)."""
    file_name = name if name.endswith(".json") else f"{name}.manifest.json"
    path = shared_dir() / "parity" / file_name
    assert path.is_file(), f"missing parity manifest {path}"
    manifest = json.loads(path.read_text())
    if isinstance(manifest.get("config"), str):
        manifest["config"] = ast.literal_eval(manifest["config"])
    return manifest


def tiny_model(build, name: str) -> tuple[torch.nn.Module, dict]:
    """Build a model from a tiny fixture's config, load its weights strictly; (model, fixture)."""
    fixture = load_fixture(name)
    model = build(fixture["config"]).eval()
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model, fixture


def assert_published_layout(build, name: str) -> torch.nn.Module:
    """The published configuration in manifest `name` builds exactly its state_dict: every
    key and shape, the parameter count and the stems. Returns the (meta-device) model."""
    manifest = load_manifest(name)
    with torch.device("meta"):
        model = build(manifest["config"])
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert shapes == manifest["state_dict"]
    assert sum(value.numel() for value in model.state_dict().values()) == manifest["params"]
    assert model.stems == tuple(manifest["config"]["training"]["instruments"])
    return model


def assert_forward_matches(model: torch.nn.Module, fixture: dict) -> None:
    """The model's forward pass on the fixture's input gives its stored output."""
    with torch.inference_mode():
        out = model(fixture["input"])
    assert out.shape == fixture["output"].shape
    assert (out - fixture["output"]).abs().max().item() < TOLERANCE


def assert_msst_demix_matches(model: torch.nn.Module, fixture: dict, expected_key: str) -> None:
    """MSST's chunked demix with the fixture's stored parameters must give its stored output
    (`demix_output` with the stored batch size, `demix_output_batch1` with batches of one)."""
    from sfsep.inference import demix

    params = fixture["demix_params"]
    stems = demix(model, fixture["demix_input"], chunk_size=params["chunk_size"], overlap=params["num_overlap"],
                  style="msst", batch_size=params["batch_size"] if expected_key == "demix_output" else 1)
    expected = fixture[expected_key]
    assert stems.shape == expected.shape
    assert (stems - expected).abs().max().item() < TOLERANCE
