"""SCNet: published key layout, parity with MSST on the tiny fixture, and the whole-track
normalisation of the SCNet-small config."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from sfsep.errors import ModelError
from sfsep.models import scnet

from parity import (
    TOLERANCE,
    assert_forward_matches,
    assert_msst_demix_matches,
    assert_published_layout,
    load_manifest,
    tiny_model,
)



@pytest.fixture(scope="module")
def tiny():
    return tiny_model(scnet.build, "scnet_tiny")


@pytest.mark.parametrize("name", ["scnet", "scnet_large"])
def test_published_keys_and_shapes(name):
    assert_published_layout(scnet.build, name)


def test_forward_matches_reference(tiny):
    assert_forward_matches(*tiny)


@pytest.mark.parametrize("expected_key", ["demix_output", "demix_output_batch1"])
def test_demix_matches_reference(tiny, expected_key):
    model, fixture = tiny
    assert_msst_demix_matches(model, fixture, expected_key)


@pytest.mark.parametrize("samples", [1000, 4096, 8191, 8192 + 128, 9999])
def test_any_length_and_batch_items_independent(tiny, samples):
    model, fixture = tiny
    mix = 0.3 * torch.randn(2, 2, samples, generator=torch.Generator().manual_seed(samples))
    with torch.inference_mode():
        both = model(mix)
        first = model(mix[:1])
    assert both.shape == (2, 2, 2, samples)
    assert torch.isfinite(both).all()
    assert (both[:1] - first).abs().max().item() < TOLERANCE


def test_autocast_keeps_stft_in_float32(tiny):
    model, fixture = tiny
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(fixture["input"])
    assert out.dtype == torch.float32
    # bfloat16 convs/LSTMs are coarse, but the output must still be the same separation.
    error = (out - fixture["output"]).abs().max().item()
    assert error < 0.1 * fixture["output"].abs().max().item()


def test_build_rejects_bad_configs(tiny):
    _, fixture = tiny
    config = {**fixture["config"], "model": {**fixture["config"]["model"], "unknown_option": 1}}
    with pytest.raises(ModelError, match="unknown_option"):
        scnet.build(config)
    config = {**fixture["config"], "model": {**fixture["config"]["model"], "dims": [6, 8, 12, 16]}}
    with pytest.raises(ModelError, match="dims"):
        scnet.build(config)
    with pytest.raises(ModelError, match="model"):
        scnet.build({"audio": {}})


def test_normalize_mixture_matches_msst_formula():
    generator = torch.Generator().manual_seed(3)
    mix = 0.2 * torch.randn(2, 50_000, generator=generator) + torch.tensor([[0.05], [-0.01]])
    normalized, restore = scnet.normalize_mixture(mix)

    # Independent oracle: the MSST formula written with numpy (population std).
    array = mix.numpy().astype(np.float64)
    mono = array.mean(axis=0)
    expected = (array - mono.mean()) / mono.std()
    assert np.abs(normalized.numpy() - expected).max() < 1e-5
    assert normalized.dtype == mix.dtype
    normalized_mono = normalized.double().mean(dim=0)
    assert abs(normalized_mono.mean().item()) < 1e-6
    assert abs(normalized_mono.std(correction=0).item() - 1.0) < 1e-5

    # restore() maps stems (any leading axes) back: est * std + mean.
    stems = torch.stack([normalized * 0.25, normalized * 0.75])
    restored = restore(stems)
    assert restored.shape == stems.shape
    expected_restored = stems.numpy().astype(np.float64) * mono.std() + mono.mean()
    assert np.abs(restored.numpy() - expected_restored).max() < 1e-6
    assert (restore(normalized) - mix).abs().max().item() < 1e-5


def test_normalize_mixture_silent_track_stays_finite():
    mix = torch.full((2, 1000), 0.25)
    normalized, restore = scnet.normalize_mixture(mix)
    assert torch.isfinite(normalized).all()
    assert (restore(normalized) - mix).abs().max().item() < 1e-7
    with pytest.raises(ModelError):
        scnet.normalize_mixture(torch.zeros(1, 2, 10))


def test_wants_normalization_follows_published_configs():
    assert scnet.wants_normalization(load_manifest("scnet")["config"]) is True
    assert scnet.wants_normalization(load_manifest("scnet_large")["config"]) is False
