"""The demucs family: builders, bags of models, the shift trick and the run-time contract.

Owns the entry points the model table points at (`build_htdemucs`, `build_conv_tasnet`; the
networks live in `htdemucs.py` and `tasnet.py`) and what demucs does around its networks at
inference time, written so that any chunking function can sit in the middle:

- `average_bag`: a "bag" (e.g. `htdemucs_ft`, four fine-tuned HT-Demucs) is run model by model
  and the estimates are averaged source by source with per-model, per-source weights.
- `apply_shifts`: demucs' `--shifts`: run the model on copies of the mixture delayed by random
  amounts (up to `max_shift` samples, zero-padded) and average the realigned outputs.
- `run_contract`: how a loaded model is run (the segment and valid length a demucs package
  carries win over models.toml).

demucs' standardisation of the whole track by its mono mix (v4: sample std + 1e-8, v2: sample
std) is `sfsep.inference.normalize_mixture` with kind "demucs" / "demucs_v2", like every other
family's.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..errors import ModelError
from .htdemucs import HTDemucs, build_htdemucs, htdemucs_kwargs
from .tasnet import ConvTasNet, build_conv_tasnet, conv_tasnet_kwargs

__all__ = [
    "ConvTasNet",
    "HTDemucs",
    "apply_shifts",
    "average_bag",
    "build_conv_tasnet",
    "build_htdemucs",
    "conv_tasnet_kwargs",
    "htdemucs_kwargs",
]


def average_bag(outputs: Sequence[torch.Tensor],
                weights: Sequence[Sequence[float]] | None = None) -> torch.Tensor:
    """Combine the estimates of a bag of models, source by source.

    `outputs[i]` is model i's estimate shaped (..., sources, channels, samples). Source k of the
    result is sum_i weights[i][k] * outputs[i][..., k, :, :] / sum_i weights[i][k]; with no
    weights every model counts 1 (a plain mean). htdemucs_ft's weights are the identity: each
    fine-tuned model supplies only its own source.
    """
    if len(outputs) == 0:
        raise ModelError("average_bag: the bag has no model outputs")
    first = outputs[0]
    for output in outputs[1:]:
        if output.shape != first.shape:
            raise ModelError(
                f"average_bag: models disagree on output shape ({tuple(first.shape)} vs "
                f"{tuple(output.shape)})")
    if first.dim() < 3:
        raise ModelError(f"average_bag: outputs must be (..., sources, channels, samples), "
                         f"got {tuple(first.shape)}")
    num_sources = first.shape[-3]
    if weights is None:
        weights = [[1.0] * num_sources for _ in outputs]
    if len(weights) != len(outputs) or any(len(row) != num_sources for row in weights):
        raise ModelError(
            f"average_bag: weights must be {len(outputs)} rows of {num_sources} values "
            f"(one per model and source), got {[len(row) for row in weights]}")
    table = torch.tensor([[float(value) for value in row] for row in weights],
                         dtype=first.dtype, device=first.device)
    totals = table.sum(dim=0)
    if bool((totals == 0).any()):
        missing = [k for k in range(num_sources) if float(totals[k]) == 0.0]
        raise ModelError(f"average_bag: sources {missing} have a total weight of 0 in the bag")
    combined = torch.zeros_like(first)
    for output, row in zip(outputs, table):
        combined += output * row[:, None, None]
    return combined / totals[:, None, None]


def apply_shifts(run: Callable[[torch.Tensor], torch.Tensor], mix: torch.Tensor, shifts: int,
                 max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """demucs' shift trick: average `run` over `shifts` random delays of `mix`.

    `mix` is (..., samples); `run` maps such a waveform to stems (..., samples) of the same
    length. The mixture is zero-padded by `max_shift` on both sides; for each shift an offset
    in [0, max_shift] (inclusive) is drawn from `generator` and `run` sees
    padded[offset : samples + max_shift], i.e. the mixture delayed by max_shift - offset
    samples; that delay is cut from the output. demucs uses max_shift = samplerate // 2 and
    Python's `random`; here draws come from the torch Generator so a seed reproduces a run.
    With shifts <= 0 the mixture is run once as is.
    """
    if shifts <= 0:
        return run(mix)
    if max_shift < 0:
        raise ModelError(f"apply_shifts: max_shift must be >= 0, got {max_shift}")
    length = mix.shape[-1]
    padded = torch.nn.functional.pad(mix, (max_shift, max_shift))
    total: torch.Tensor | None = None
    for _ in range(shifts):
        offset = int(torch.randint(0, max_shift + 1, (1,), generator=generator).item())
        delay = max_shift - offset
        estimate = run(padded[..., offset:length + max_shift])[..., delay:]
        total = estimate if total is None else total + estimate
    assert total is not None
    return total / shifts


def run_contract(spec, module):
    """demucs' own run of a loaded model: for an HT-Demucs chunked demucs' way, the segment is
    the one the checkpoint carries (`module.segment`, e.g. 39/5 s for the v4 models, 3/10 s for a
    small package) and each chunk is centred in `module.valid_length(segment)` samples, as
    demucs' `apply_model` does; models.toml says only what a package does not (overlap, batch,
    normalization). Conv-TasNet and MSST-configured HT-Demucs follow their spec."""
    from dataclasses import replace

    from . import spec_contract

    contract = spec_contract(spec)
    if isinstance(module, HTDemucs) and spec.chunk_style == "demucs":
        segment = module.training_length
        contract = replace(contract, segment=segment, padded_length=module.valid_length(segment))
    return contract


def checkpoint_config(spec, kwargs):
    """A demucs package records the kwargs it was trained with (sources, segment, ...): they are
    authoritative over models.toml's reconstruction, for HT-Demucs and Conv-TasNet alike. An
    MSST-configured HT-Demucs (no `sources` in its config) keeps its config."""
    if "sources" in spec.config and kwargs.get("sources"):
        return dict(kwargs), tuple(str(name) for name in kwargs["sources"])
    return spec.config_copy(), None
