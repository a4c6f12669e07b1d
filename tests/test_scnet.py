"""SCNet: published key layout, parity with MSST on the tiny fixture, and which published
configs ask for whole-track normalisation (done by sfsep.inference.normalize_mixture, tested in
test_inference)."""

from __future__ import annotations


import pytest
import torch

from sfsep.errors import ModelError
from sfsep.models import scnet
from sfsep.registry import get_spec, spec_from_config

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


@pytest.mark.parametrize("name,kind", [("scnet", "msst"), ("scnet_large", None)])
def test_normalization_follows_published_configs(name, kind):
    # The MSST config's inference.normalize, read as a user's --config and as models.toml says it.
    config = load_manifest(name)["config"]
    assert bool(config["inference"].get("normalize", False)) is (kind is not None)
    assert spec_from_config(config, name=name, base=get_spec(name)).normalize == kind
    assert get_spec(name).normalize == kind
