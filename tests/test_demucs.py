"""HT-Demucs and demucs v2 Conv-TasNet: published keys and shapes, parity with the reference
code on the tiny fixtures (forward and chunked inference), and the bag and shift helpers of
sfsep.models.demucs (its mixture normalisation is sfsep.inference's, tested in test_inference)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from sfsep.errors import ModelError
from sfsep.inference import demix
from sfsep.models import build_model
from sfsep.models.demucs import (
    apply_shifts,
    average_bag,
    build_conv_tasnet,
    build_htdemucs,
)

from parity import TOLERANCE, load_fixture, load_manifest


def loaded(builder, fixture: dict) -> torch.nn.Module:
    model = builder(fixture["config"]).eval()
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------------------------
# Published keys and shapes (built on the meta device: no memory, no time)


@pytest.mark.parametrize("manifest_name, builder", [
    ("htdemucs.manifest.json", build_htdemucs),
    ("htdemucs_demucsrepo.manifest.json", build_htdemucs),
    ("conv_tasnet.manifest.json", build_conv_tasnet),
])
def test_state_dict_matches_manifest(manifest_name, builder):
    manifest = load_manifest(manifest_name)
    with torch.device("meta"):
        model = builder(manifest["config"])
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    expected = {key: list(shape) for key, shape in manifest["state_dict"].items()}
    assert sorted(shapes) == sorted(expected)
    assert shapes == expected
    assert sum(p.numel() for p in model.parameters()) == manifest["params"]


def test_published_segments():
    msst = load_manifest("htdemucs.manifest.json")["config"]
    demucs_kwargs = load_manifest("htdemucs_demucsrepo.manifest.json")["config"]
    with torch.device("meta"):
        from_msst = build_htdemucs(msst)
        from_demucs = build_htdemucs(demucs_kwargs)
    assert from_demucs.segment == Fraction(39, 5)
    assert from_demucs.training_length == 343980
    assert from_demucs.use_train_segment
    assert from_msst.training_length == 485100
    assert not from_msst.use_train_segment
    assert from_msst.sources == ["drums", "bass", "other", "vocals"]


def test_model_table_builds_both_families():
    fixture = load_fixture("conv_tasnet_tiny.pt")
    model = build_model("conv_tasnet", fixture["config"])
    assert not model.training
    model = build_model("htdemucs", load_fixture("htdemucs_tiny.pt")["config"])
    assert model.sources == ["drums", "vocals"]


# --------------------------------------------------------------------------------------------
# Forward parity


@pytest.mark.parametrize("fixture_name, builder", [
    ("htdemucs_tiny.pt", build_htdemucs),
    ("htdemucs_demucsrepo_tiny.pt", build_htdemucs),
    ("conv_tasnet_tiny.pt", build_conv_tasnet),
])
def test_forward_parity(fixture_name, builder):
    fixture = load_fixture(fixture_name)
    model = loaded(builder, fixture)
    with torch.inference_mode():
        output = model(fixture["input"])
    assert max_error(output, fixture["output"]) < TOLERANCE
    # A sanity check that the comparison is not trivially small.
    assert fixture["output"].abs().max() > 0.1


def test_conv_tasnet_zero_tail():
    # 44105 samples: the decoder covers 44100, the last 5 samples are padding zeros.
    fixture = load_fixture("conv_tasnet_tiny.pt")
    model = loaded(build_conv_tasnet, fixture)
    with torch.inference_mode():
        output = model(fixture["input"])
    assert torch.all(output[..., -5:] == 0)
    assert output[..., -6].abs().max() > 0


# --------------------------------------------------------------------------------------------
# Chunked inference parity


def test_msst_demucs_demix_parity():
    fixture = load_fixture("htdemucs_tiny.pt")
    params = fixture["demix_params"]
    model = loaded(build_htdemucs, fixture)
    chunk = fixture["config"]["training"]["samplerate"] * fixture["config"]["training"]["segment"]
    assert chunk == params["chunk_size"]
    stems = demix(model, fixture["demix_input"], chunk_size=chunk,
                  overlap=fixture["config"]["inference"]["num_overlap"], style="msst_demucs",
                  batch_size=params["batch_size"])
    assert max_error(stems, fixture["demix_output"]) < TOLERANCE
    stems_one = demix(model, fixture["demix_input"], chunk_size=chunk, overlap=params["num_overlap"],
                      style="msst_demucs", batch_size=1)
    assert max_error(stems_one, fixture["demix_output_batch1"]) < TOLERANCE


def test_demucs_apply_parity_htdemucs():
    fixture = load_fixture("htdemucs_demucsrepo_tiny.pt")
    # The fixture is raw apply_model: no normalisation by the mixture.
    assert "normalis" not in fixture["notes"].lower()
    params = fixture["apply_params"]
    model = loaded(build_htdemucs, fixture)
    assert model.training_length == params["segment_length"]
    stems = demix(model, fixture["apply_input"][0], chunk_size=model.training_length,
                  overlap=params["overlap"], style="demucs",
                  padded_length=model.valid_length(model.training_length))
    assert max_error(stems, fixture["apply_output"][0]) < TOLERANCE


def test_demucs_apply_parity_conv_tasnet():
    fixture = load_fixture("conv_tasnet_tiny.pt")
    # v2 separate.py normalises outside apply_model; the fixture states it did not.
    assert "no mixture normalisation" in fixture["notes"].lower()
    params = fixture["apply_params"]
    model = loaded(build_conv_tasnet, fixture)
    assert model.segment_length == params["segment_length"]
    stems = demix(model, fixture["apply_input"], chunk_size=model.segment_length,
                  overlap=params["overlap"], style="demucs", padded_length=None)
    assert max_error(stems, fixture["apply_output"]) < TOLERANCE


# --------------------------------------------------------------------------------------------
# Lengths


def test_short_input_is_padded_to_training_length():
    fixture = load_fixture("htdemucs_demucsrepo_tiny.pt")
    model = loaded(build_htdemucs, fixture)
    short = fixture["input"][..., :5000]
    padded = torch.nn.functional.pad(short, (0, model.training_length - 5000))
    with torch.inference_mode():
        direct = model(short)
        reference = model(padded)[..., :5000]
    assert direct.shape == (1, 4, 2, 5000)
    assert max_error(direct, reference) < 1e-6


def test_longer_input_than_training_length_runs():
    fixture = load_fixture("htdemucs_demucsrepo_tiny.pt")
    model = loaded(build_htdemucs, fixture)
    long = torch.cat([fixture["input"], fixture["input"][..., :3000]], dim=-1)
    with torch.inference_mode():
        output = model(long)
    assert output.shape == (1, 4, 2, long.shape[-1])
    assert torch.isfinite(output).all()


def test_msst_model_accepts_any_length_without_padding():
    fixture = load_fixture("htdemucs_tiny.pt")
    model = loaded(build_htdemucs, fixture)
    with torch.inference_mode():
        output = model(fixture["input"][..., :3001])
    assert output.shape == (1, 2, 2, 3001)
    assert torch.isfinite(output).all()


def test_wrong_channel_count_is_a_model_error():
    fixture = load_fixture("conv_tasnet_tiny.pt")
    model = loaded(build_conv_tasnet, fixture)
    with pytest.raises(ModelError):
        model(torch.zeros(1, 1, 1000))


def test_causal_conv_tasnet_does_not_look_ahead():
    config = dict(load_fixture("conv_tasnet_tiny.pt")["config"], causal=True, norm_type="cLN")
    torch.manual_seed(0)
    model = build_conv_tasnet(config).eval()
    mix = torch.randn(1, 2, 4000)
    changed = mix.clone()
    changed[..., 3000:] += 1.0
    with torch.inference_mode():
        before, after = model(mix), model(changed)
    # A frame spans L=20 samples, so output before 3000 - 20 cannot see the change.
    assert torch.equal(before[..., :2980], after[..., :2980])
    assert not torch.equal(before, after)


# --------------------------------------------------------------------------------------------
# Config handling


def test_segment_forms():
    config = dict(load_fixture("htdemucs_demucsrepo_tiny.pt")["config"])
    for segment in ("3/10", 0.3, Fraction(3, 10)):
        with torch.device("meta"):
            model = build_htdemucs(dict(config, segment=segment))
        assert model.segment == Fraction(3, 10)
        assert model.training_length == 13230
    with pytest.raises(ModelError):
        build_htdemucs(dict(config, segment="three"))


@pytest.mark.parametrize("option, value", [
    ("cac", False), ("t_emb", "cape"), ("t_sparse_self_attn", True), ("multi_freqs", [0.5]),
    ("depth", 6),
])
def test_unsupported_options_are_refused(option, value):
    config = dict(load_fixture("htdemucs_demucsrepo_tiny.pt")["config"], **{option: value})
    with pytest.raises(ModelError, match=option):
        build_htdemucs(config)


def test_config_without_sources_is_refused():
    with pytest.raises(ModelError):
        build_htdemucs({"channels": 4})
    with pytest.raises(ModelError):
        build_conv_tasnet({"N": 4})


# --------------------------------------------------------------------------------------------
# Bags, shifts and normalisation


def test_average_bag_plain_mean_and_weights():
    generator = torch.Generator().manual_seed(3)
    outputs = [torch.randn(4, 2, 50, generator=generator) for _ in range(4)]
    mean = average_bag(outputs, None)
    assert max_error(mean, torch.stack(outputs).mean(0)) < 1e-6
    # htdemucs_ft: model i supplies only source i.
    identity = [[1.0 if i == k else 0.0 for k in range(4)] for i in range(4)]
    picked = average_bag(outputs, identity)
    for k in range(4):
        assert torch.equal(picked[k], outputs[k][k])
    # mdx-style weights: source 0 from models 0, 2 and 3, equally.
    weights = [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 1], [1, 0, 1, 1]]
    mixed = average_bag(outputs, weights)
    expected0 = (outputs[0][0] + outputs[2][0] + outputs[3][0]) / 3
    expected1 = (outputs[0][1] + outputs[1][1]) / 2
    assert max_error(mixed[0], expected0) < 1e-6
    assert max_error(mixed[1], expected1) < 1e-6
    # Batched outputs (B, S, C, T) work the same way.
    batched = average_bag([o[None] for o in outputs], identity)
    assert torch.equal(batched[0], picked)


def test_average_bag_refuses_bad_weights():
    outputs = [torch.zeros(2, 1, 5), torch.zeros(2, 1, 5)]
    with pytest.raises(ModelError):
        average_bag(outputs, [[1, 0], [1, 0]])  # source 1 has no weight
    with pytest.raises(ModelError):
        average_bag(outputs, [[1, 1]])
    with pytest.raises(ModelError):
        average_bag([], None)


def _position_dependent_run(x: torch.Tensor) -> torch.Tensor:
    """Stems that depend on where a sample sits in the input (not shift invariant)."""
    ramp = torch.arange(x.shape[-1], dtype=x.dtype)
    return torch.stack([x * ramp, x + ramp])


def test_apply_shifts_without_offset_equals_no_shift():
    mix = torch.randn(2, 300, generator=torch.Generator().manual_seed(0))
    direct = _position_dependent_run(mix)
    # max_shift 0: the only possible offset is 0, the model sees exactly the mixture.
    shifted = apply_shifts(_position_dependent_run, mix, 1, 0, torch.Generator().manual_seed(1))
    assert torch.equal(shifted, direct)
    assert torch.equal(apply_shifts(_position_dependent_run, mix, 0, 100), direct)
    # A pointwise model is shift invariant: any offsets give the unshifted result.
    pointwise = lambda x: torch.stack([2 * x, -x])  # noqa: E731
    result = apply_shifts(pointwise, mix, 3, 100, torch.Generator().manual_seed(2))
    assert max_error(result, pointwise(mix)) < 1e-6


def test_apply_shifts_averages_the_realigned_outputs():
    mix = torch.randn(2, 300, generator=torch.Generator().manual_seed(0))
    shifts, max_shift = 3, 50
    result = apply_shifts(_position_dependent_run, mix, shifts, max_shift,
                          torch.Generator().manual_seed(5))
    draws = torch.Generator().manual_seed(5)
    offsets = [int(torch.randint(0, max_shift + 1, (1,), generator=draws)) for _ in range(shifts)]
    assert len(set(offsets)) > 1  # the check below must see different shifts
    expected = torch.zeros_like(result)
    for offset in offsets:
        delay = max_shift - offset
        # The model sees `delay` zeros and then the mixture; its output is realigned.
        seen = torch.cat([torch.zeros(2, delay), mix], dim=-1)
        expected += _position_dependent_run(seen)[..., delay:]
    expected /= shifts
    assert max_error(result, expected) < 1e-4
    # Reproducible with the same seed, different with another.
    again = apply_shifts(_position_dependent_run, mix, shifts, max_shift,
                         torch.Generator().manual_seed(5))
    assert torch.equal(result, again)
    other = apply_shifts(_position_dependent_run, mix, shifts, max_shift,
                         torch.Generator().manual_seed(6))
    assert not torch.equal(result, other)
