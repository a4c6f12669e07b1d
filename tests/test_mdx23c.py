"""MDX23C (TFC-TDF v3): published key layout, parity with MSST on the tiny fixture, stems
and lengths."""

from __future__ import annotations

import copy

import pytest
import torch

from sfsep.errors import ModelError
from sfsep.models import mdx23c

from parity import (
    TOLERANCE,
    assert_forward_matches,
    assert_msst_demix_matches,
    assert_published_layout,
    tiny_model,
)



@pytest.fixture(scope="module")
def tiny():
    return tiny_model(mdx23c.build, "mdx23c_tiny")


@pytest.mark.parametrize("name", ["mdx23c", "mdx23c_vocals"])
def test_published_keys_and_shapes(name):
    assert_published_layout(mdx23c.build, name)


def test_forward_matches_reference(tiny):
    assert_forward_matches(*tiny)


@pytest.mark.parametrize("expected_key", ["demix_output", "demix_output_batch1"])
def test_demix_matches_reference(tiny, expected_key):
    model, fixture = tiny
    assert_msst_demix_matches(model, fixture, expected_key)


def test_lengths_the_reference_cannot_take_still_return_every_sample(tiny):
    model, fixture = tiny
    mix = fixture["input"]  # 8064 samples = 64 frames, a valid length
    assert model.valid_length(8064) == 8064
    assert model.valid_length(8000) == 8064  # 63 frames -> padded to 64
    assert model.valid_length(8100) == 8100  # 64 frames already (8064 + 36)
    with torch.inference_mode():
        longer = model(torch.cat([mix, mix[..., :36]], dim=-1))
        shorter = model(mix[..., :8000])
        shorter_padded = model(torch.nn.functional.pad(mix[..., :8000], (0, 64)))
        tiny_input = model(mix[..., :100])
    assert longer.shape == (1, 2, 2, 8100) and torch.isfinite(longer).all()
    # A length the U-Net cannot take is zero-padded on the right, run, and cropped.
    assert shorter.shape == (1, 2, 2, 8000)
    assert (shorter - shorter_padded[..., :8000]).abs().max().item() < TOLERANCE
    assert tiny_input.shape == (1, 2, 2, 100) and torch.isfinite(tiny_input).all()


def test_batch_items_are_independent(tiny):
    model, fixture = tiny
    mix = torch.cat([fixture["input"], 0.5 * fixture["input"].flip(-1)])
    with torch.inference_mode():
        both = model(mix)
    assert (both[:1] - fixture["output"]).abs().max().item() < TOLERANCE


def test_autocast_keeps_stft_in_float32(tiny):
    model, fixture = tiny
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(fixture["input"])
    assert out.dtype == torch.float32
    error = (out - fixture["output"]).abs().max().item()
    assert error < 0.1 * fixture["output"].abs().max().item()


def test_target_instrument_keeps_a_stem_axis(tiny):
    _, fixture = tiny
    config = copy.deepcopy(fixture["config"])
    config["training"]["target_instrument"] = "vocals"
    model = mdx23c.build(config).eval()
    assert model.stems == ("vocals",)
    with torch.inference_mode():
        out = model(fixture["input"])
    assert out.shape == (1, 1, 2, fixture["input"].shape[-1])


def test_build_reports_missing_keys(tiny):
    _, fixture = tiny
    config = copy.deepcopy(fixture["config"])
    del config["audio"]["dim_f"]
    with pytest.raises(ModelError, match="audio.dim_f"):
        mdx23c.build(config)
    config = copy.deepcopy(fixture["config"])
    config["model"]["act"] = "swish"
    with pytest.raises(ModelError, match="act"):
        mdx23c.build(config)
    with pytest.raises(ModelError, match="model"):
        mdx23c.build({"audio": fixture["config"]["audio"]})
