"""BS-RoFormer and Mel-Band RoFormer: published key layouts, the mel band layout, and numerical
parity with MSST on the tiny fixtures (forward pass and chunked demix)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from sfsep.errors import ModelError
from sfsep.models import roformer
from sfsep.models.melscale import hz_to_mel, mel_band_membership, mel_filterbank, mel_to_hz

from parity import TOLERANCE, assert_msst_demix_matches, load_manifest, shared_dir

BUILDERS = {
    "bs_roformer": roformer.build_bs_roformer,
    "mel_band_roformer": roformer.build_mel_band_roformer,
}
MANIFESTS = {
    "bs_roformer": "bs_roformer",
    "bs_roformer_viperx_ep317": "bs_roformer",
    "mel_band_roformer": "mel_band_roformer",
    "mel_band_roformer_viperx_ep3005": "mel_band_roformer",
}
# Bins per band of the published Mel-Band RoFormers (44.1 kHz, n_fft 2048, 60 bands), as
# librosa 0.11.0 gives them (shared/research/msst.md, section 6).
PUBLISHED_MEL_BINS_PER_BAND = [
    7, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 9, 9, 9, 10, 10, 11, 13, 13, 13, 15, 16,
    17, 19, 20, 20, 22, 24, 26, 28, 29, 31, 33, 36, 39, 41, 44, 47, 50, 54, 57, 61, 66, 71, 76, 80,
    86, 93, 99, 105, 113, 122, 130,
]


_LOADED: dict[str, tuple] = {}


def _tiny(family: str):
    if family not in _LOADED:
        path = shared_dir() / "parity" / f"{family}_tiny.pt"
        assert path.is_file(), f"missing fixture {path}"
        fixture = torch.load(path, weights_only=True)
        assert fixture["model_type"] == family
        model = BUILDERS[family](fixture["config"]).eval()
        model.load_state_dict(fixture["state_dict"], strict=True)
        _LOADED[family] = (model, fixture)
    return _LOADED[family]


def _reference_output(fixture: dict) -> torch.Tensor:
    """The reference squeezes the stem axis of a one-stem Mel-Band RoFormer; put it back."""
    output = fixture["output"]
    return output if output.dim() == 4 else output.unsqueeze(1)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_published_keys_and_shapes(name):
    manifest = load_manifest(name)
    assert manifest["model_type"] == MANIFESTS[name]
    with torch.device("meta"):
        model = BUILDERS[MANIFESTS[name]](manifest["config"])
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert list(shapes) == list(manifest["state_dict"])
    assert shapes == manifest["state_dict"]
    assert sum(value.numel() for value in model.state_dict().values()) == manifest["state_dict_numel"]
    training = manifest["config"]["training"]
    target = training.get("target_instrument")
    assert model.stems == ((target,) if target else tuple(training["instruments"]))


def test_published_mel_bands():
    membership = mel_band_membership(44100, 2048, 60)
    assert membership.sum(axis=1).tolist() == PUBLISHED_MEL_BINS_PER_BAND
    assert membership.sum() == 1979
    assert set(membership.sum(axis=0).tolist()) == {1, 2}
    # Bands are runs of consecutive bins, moving up in frequency.
    starts = [int(np.flatnonzero(row)[0]) for row in membership]
    assert starts == sorted(starts)
    for row in membership:
        bins = np.flatnonzero(row)
        assert (np.diff(bins) == 1).all()
    # The first band of the published checkpoints has 7 bins x 2 channels x (re, im) inputs.
    manifest = load_manifest("mel_band_roformer")
    for band, count in enumerate(PUBLISHED_MEL_BINS_PER_BAND):
        assert manifest["state_dict"][f"band_split.to_features.{band}.0.gamma"] == [4 * count]


def test_tiny_mel_bands_match_fixture():
    model, fixture = _tiny("mel_band_roformer")
    assert list(model.bins_per_band) == [4, 4, 4, 5, 6, 9, 13, 16, 23, 32, 44, 61]
    for band, count in enumerate(model.bins_per_band):
        assert fixture["state_dict"][f"band_split.to_features.{band}.0.gamma"].shape == (4 * count,)


def test_slaney_mel_scale():
    # Linear below 1 kHz (200/3 Hz per mel), 27 mels per factor 6.4 above.
    assert float(hz_to_mel(440.0)) == pytest.approx(6.6, abs=1e-12)
    assert float(hz_to_mel(1000.0)) == pytest.approx(15.0, abs=1e-12)
    assert float(hz_to_mel(6400.0)) == pytest.approx(42.0, abs=1e-12)
    frequencies = np.array([0.0, 100.0, 999.0, 1000.0, 5000.0, 22050.0])
    assert np.allclose(mel_to_hz(hz_to_mel(frequencies)), frequencies, rtol=1e-12, atol=1e-9)
    # Slaney normalisation: each triangle has height 2 / (width in Hz) at its peak, so its
    # continuous area is 1; on a fine grid the Riemann sum is close to 1.
    weights = mel_filterbank(8000, 4096, 20)
    bin_hz = 8000 / 4096
    areas = weights.sum(axis=1) * bin_hz
    assert np.allclose(areas[2:], 1.0, atol=0.02)
    assert weights.dtype == np.float32 and weights.shape == (20, 2049)


def test_forward_matches_reference():
    for family in BUILDERS:
        model, fixture = _tiny(family)
        with torch.inference_mode():
            out = model(fixture["input"])
        expected = _reference_output(fixture)
        assert out.shape == expected.shape, family
        assert (out - expected).abs().max().item() < TOLERANCE, family


@pytest.mark.parametrize("family", sorted(BUILDERS))
@pytest.mark.parametrize("expected_key", ["demix_output", "demix_output_batch1"])
def test_demix_matches_reference(family, expected_key):
    model, fixture = _tiny(family)
    assert_msst_demix_matches(model, fixture, expected_key)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_any_length_and_batch_items_independent(family):
    model, _ = _tiny(family)
    samples = 4096 + 37  # not a multiple of the hop (64)
    mix = 0.3 * torch.randn(2, 2, samples, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        both = model(mix)
        first = model(mix[:1])
    assert both.shape == (2, model.num_stems, 2, samples)
    assert torch.isfinite(both).all()
    assert (both[:1] - first).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_autocast_keeps_stft_in_float32(family):
    model, fixture = _tiny(family)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(fixture["input"])
    assert out.dtype == torch.float32
    expected = _reference_output(fixture)
    error = (out - expected).abs().max().item()
    assert error < 0.1 * expected.abs().max().item()


def test_rotary_embedding_is_the_interleaved_rotation():
    # Independent oracle: rotate each feature pair (2i, 2i+1) at position p by p * theta_i
    # with explicit 2x2 rotation matrices, in float64.
    rotary = roformer.RotaryEmbedding(8)
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))
    rotated = rotary.rotate(x)
    freqs = 1.0 / 10000 ** (np.arange(0, 8, 2) / 8)
    expected = np.empty((3, 5, 8))
    for position in range(5):
        for pair, freq in enumerate(freqs):
            angle = position * freq
            matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            pairs = x[:, position, 2 * pair : 2 * pair + 2].double().numpy()
            expected[:, position, 2 * pair : 2 * pair + 2] = pairs @ matrix.T
    assert np.abs(rotated.numpy() - expected).max() < 1e-5
    assert torch.allclose(rotary.freqs, torch.from_numpy(freqs).float())


def test_rms_norm_definition():
    norm = roformer.RMSNorm(6)
    with torch.no_grad():
        norm.gamma.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    expected = x / x.norm(dim=-1, keepdim=True) * 6**0.5 * torch.arange(1.0, 7.0)
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_build_rejects_bad_configs():
    _, fixture = _tiny("bs_roformer")
    config = fixture["config"]
    for option, value in [("unknown_option", 1), ("skip_connection", True), ("linear_transformer_depth", 1)]:
        bad = {**config, "model": {**config["model"], option: value}}
        with pytest.raises(ModelError, match=option):
            roformer.build_bs_roformer(bad)
    bad = {**config, "model": {**config["model"], "freqs_per_bands": [2, 2, 4]}}
    with pytest.raises(ModelError, match="freqs_per_bands"):
        roformer.build_bs_roformer(bad)
    bad = {**config, "training": {"instruments": ["a", "b", "c"], "target_instrument": None}}
    with pytest.raises(ModelError, match="num_stems"):
        roformer.build_bs_roformer(bad)
    with pytest.raises(ModelError, match="model"):
        roformer.build_mel_band_roformer({"audio": {}})
    model, _ = _tiny("bs_roformer")
    with pytest.raises(ModelError, match="stereo"):
        model(torch.zeros(1, 1, 4096))
