"""Architectures: a name -> builder table, and the contract every architecture follows.

Contract for an architecture module `sfsep/models/<family>.py`:

- It exposes `build(config: dict) -> torch.nn.Module`. `config` is the architecture's
  configuration as plain data (what models.toml stores, or what a user's MSST YAML holds):
  for the MSST families the whole MSST config (`audio`, `model`, `training`, `inference`
  sections); for the demucs families the model's constructor kwargs; for BSRNN its hparams.
- The module's `state_dict()` has exactly the keys and shapes of the published checkpoint,
  so `load_state_dict(published, strict=True)` works with no renaming.
- `module(mix)` takes a waveform batch (batch, channels, samples) at the model's trained rate
  and returns stems (batch, stems, channels, samples) with the same number of samples. Models
  whose reference forward works on another representation (e.g. a spectrogram) expose that as
  a separate method and keep `forward` waveform-to-waveform.

Builders are imported lazily so that `sfsep models` or the classical separators never pay for
importing every architecture.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from ..errors import ModelError

# family name -> "module:function" of its builder.
ARCHITECTURES: dict[str, str] = {
    "classic": "sfsep.models.classic:build_classic",
    "nmf": "sfsep.models.classic:build_nmf",
    "bs_roformer": "sfsep.models.roformer:build_bs_roformer",
    "mel_band_roformer": "sfsep.models.roformer:build_mel_band_roformer",
    "htdemucs": "sfsep.models.demucs:build_htdemucs",
    "conv_tasnet": "sfsep.models.demucs:build_conv_tasnet",
    "scnet": "sfsep.models.scnet:build",
    "mdx23c": "sfsep.models.mdx23c:build",
    "bsrnn": "sfsep.models.bsrnn:build",
}


def builder(family: str) -> Callable[[dict[str, Any]], torch.nn.Module]:
    """The builder of an architecture family, or a ModelError naming the known ones."""
    target = ARCHITECTURES.get(family)
    if target is None:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ModelError(f"unknown architecture '{family}' (known: {known})")
    module_name, function_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, function_name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(
            f"architecture '{family}' is not available in this version of sfsep ({exc})"
        ) from exc


def is_available(family: str) -> bool:
    """True when the family's builder can be imported (used by `sfsep models`)."""
    try:
        builder(family)
    except ModelError:
        return False
    return True


def build_model(family: str, config: dict[str, Any]) -> torch.nn.Module:
    """Build an architecture from its plain-data config (random weights, eval mode)."""
    model = builder(family)(config)
    return model.eval()
