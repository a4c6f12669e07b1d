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
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..errors import ModelError

if TYPE_CHECKING:
    from ..inference import RunContract

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


def spec_contract(spec) -> "RunContract":
    """The run-time contract models.toml (or a user's MSST config) states for `spec`: the
    contract of the families whose checkpoints carry no run-time facts of their own."""
    from ..inference import RunContract

    return RunContract(style=spec.chunk_style, segment=spec.chunk_size, num_overlap=spec.num_overlap,
                       overlap=spec.overlap, batch_size=spec.batch_size, normalize=spec.normalize,
                       residual_stem=spec.residual_stem)


def run_contract(spec, module: torch.nn.Module) -> "RunContract":
    """How the loaded `module` of `spec` is run (sfsep.inference.RunContract).

    A family's module may define `run_contract(spec, module)` to take facts from the checkpoint
    itself (a demucs package's segment and valid length, BSRNN's chunk window, the classical
    separators' block length at their rate); the others follow `spec_contract`.
    """
    target = ARCHITECTURES.get(spec.family)
    if target is not None:
        family_module = importlib.import_module(target.split(":")[0])
        own = getattr(family_module, "run_contract", None)
        if own is not None:
            return own(spec, module)
    return spec_contract(spec)


def checkpoint_config(spec, kwargs: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...] | None]:
    """The config to build `spec`'s module with for a checkpoint that records `kwargs` (its
    constructor arguments), and the stems it names; the spec's own config when the family's
    module does not take a checkpoint's word (`checkpoint_config(spec, kwargs)` there)."""
    target = ARCHITECTURES.get(spec.family)
    if target is not None:
        own = getattr(importlib.import_module(target.split(":")[0]), "checkpoint_config", None)
        if own is not None:
            return own(spec, kwargs)
    return spec.config_copy(), None
