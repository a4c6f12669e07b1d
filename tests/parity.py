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
