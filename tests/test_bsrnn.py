"""BSRNN: published key layout, parity with amanteur/BandSplitRNN-PyTorch on the tiny fixture,
the fixed chunk length, and the reference separator's chunking."""

from __future__ import annotations


import pytest
import torch

from sfsep.errors import ModelError
from sfsep.models import bsrnn

from parity import TOLERANCE, load_fixture, load_manifest



@pytest.fixture(scope="module")
def fixture():
    return load_fixture("bsrnn_tiny")


@pytest.fixture(scope="module")
def manifest():
    return load_manifest("bsrnn")


def _tiny_model(fixture, **audio_params):
    config = dict(fixture["config"])
    if audio_params:
        config["_audio_params"] = audio_params
    model = bsrnn.build(config).eval()
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model


# --- published layout ------------------------------------------------------------------------


def test_published_keys_and_shapes(manifest):
    with torch.device("meta"):
        model = bsrnn.build(manifest["config"])
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert list(shapes) == list(manifest["state_dict"])
    assert shapes == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["params"] == 32_414_628


def test_band_indices_match_the_reference(manifest, fixture):
    for config in (manifest["config"], fixture["config"]):
        bands = bsrnn.band_indices(config["sr"], config["n_fft"], config["bandsplits"])
        assert [list(band) for band in bands] == config["_band_indices"]
    assert len(bands) == 41


def test_chunk_samples_gives_t_timesteps_frames(manifest, fixture):
    assert bsrnn.chunk_samples(manifest["config"]) == 134144  # 262 hops of 512
    assert bsrnn.chunk_samples(fixture["config"]) == 1920 == fixture["wave_input"].shape[-1]
    model = _tiny_model(fixture)
    spec = model.spectrogram(torch.zeros(1, 2, bsrnn.chunk_samples(fixture["config"])))
    assert spec.shape[-1] == fixture["config"]["t_timesteps"]


# --- parity ----------------------------------------------------------------------------------


def test_spectrogram_forward_parity(fixture):
    model = _tiny_model(fixture)
    with torch.inference_mode():
        estimate = model.forward_spectrogram(fixture["input"])
    assert estimate.dtype == fixture["output"].dtype
    assert (estimate - fixture["output"]).abs().max().item() < TOLERANCE


def test_waveform_forward_parity(fixture):
    model = _tiny_model(fixture)
    with torch.inference_mode():
        spec = model.spectrogram(fixture["wave_input"])
        stems = model(fixture["wave_input"])
    assert (spec - fixture["input"]).abs().max().item() < TOLERANCE
    assert stems.shape == (1, 1, 2, 1920)
    assert (stems[:, 0] - fixture["wave_output"]).abs().max().item() < TOLERANCE


def test_mask_output_and_mono_variants(fixture):
    stereo = _tiny_model(fixture)
    masking = bsrnn.build({**fixture["config"], "return_mask": True}).eval()
    masking.load_state_dict(fixture["state_dict"], strict=True)
    spec = fixture["input"]
    mean = spec.mean(dim=(1, 2, 3), keepdim=True)
    std = spec.std(dim=(1, 2, 3), keepdim=True)
    with torch.inference_mode():
        mask = (masking.forward_spectrogram(spec) - mean) / std
        estimate = (stereo.forward_spectrogram(spec) - mean) / std
    assert (estimate - mask * (spec - mean) / (std + 1e-5)).abs().max().item() < 1e-4

    mono_config = {key: value for key, value in fixture["config"].items() if key != "_band_indices"}
    mono = bsrnn.build({**mono_config, "is_mono": True}).eval()
    assert mono.state_dict()["bandsplit.layernorms.0.weight"].shape == (4, 16)  # 2 bins * re/im
    with torch.inference_mode():
        stems = mono(torch.randn(3, 1, 1920))
        downmixed = bsrnn.separate_waveform(mono, torch.randn(2, 2000), chunk_size=1408, chunk_step=700)
    assert stems.shape == (3, 1, 1, 1920) and torch.isfinite(stems).all()
    assert downmixed.shape == (1, 1, 2000)


# --- errors ----------------------------------------------------------------------------------


def test_other_chunk_lengths_are_refused(fixture):
    model = _tiny_model(fixture)
    for length in (1919, 2048):
        with pytest.raises(ModelError, match="1920 samples"):
            model(torch.zeros(1, 2, length))
    with pytest.raises(ModelError, match="exactly 16 frames"):
        model.forward_spectrogram(torch.zeros(1, 2, 257, 15, dtype=torch.complex64))
    with pytest.raises(ModelError, match="stereo"):
        model(torch.zeros(1, 1, 1920))


def test_bad_configs_are_refused(fixture):
    config = dict(fixture["config"])
    with pytest.raises(ModelError, match="unknown keys"):
        bsrnn.build({**config, "rnn_dimm": 8})
    with pytest.raises(ModelError, match="bottleneck_layer"):
        bsrnn.build({**config, "bottleneck_layer": "att"})
    with pytest.raises(ModelError, match="_band_indices"):
        bsrnn.build({**config, "_band_indices": config["_band_indices"][1:]})
    with pytest.raises(ModelError, match="missing"):
        bsrnn.build({key: value for key, value in config.items() if key != "t_timesteps"})


# --- the reference separator -----------------------------------------------------------------


def test_published_separator_layout(manifest):
    # Figures from the research notes (C.4) for a 10 s track at 44.1 kHz.
    layout = bsrnn.separator_layout(manifest["config"], 441000)
    assert (layout.window, layout.hop, layout.edge_padding) == (134144, 23894, 110250)
    assert (layout.tail_padding, layout.chunks) == (22206, 24)
    assert layout.padded_length == (layout.chunks - 1) * layout.hop + layout.window
    # The reference adds a whole hop even when the chunks already tile the padded signal.
    tiled = 441000 + 22206 - 23894
    assert bsrnn.separator_layout(manifest["config"], tiled).tail_padding == 23894


def test_separator_matches_reference_values(fixture):
    # Values computed once by running the reference's Separator (stft featurizers in place of
    # torchaudio's, identical settings) with the tiny weights: win 1408, hop 300 samples.
    model = _tiny_model(fixture, sr=44100, win_size=1408 / 44100, hop_size=300 / 44100, window=None, batch_size=3)
    mix = torch.randn(2, 5000, generator=torch.Generator().manual_seed(7))
    stems = bsrnn.separate_waveform(model, mix)
    assert stems.shape == (1, 2, 5000)
    positions = [0, 611, 1222, 1833, 2444, 3055, 3666, 4277, 4888, 4999]
    expected = torch.tensor(
        [
            [0.0460003, -0.0327231, -0.0536036, 0.0101834, -0.0453165, -0.0400095, 0.020879, -0.0083466, 0.133256, 0.0903068],
            [0.0063502, 0.0794312, 0.0805664, 0.0812687, -0.0807683, -0.047287, 0.0830285, 0.0508599, -0.0156513, 0.0112487],
        ]
    )
    assert (stems[0][:, positions] - expected).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("window", [None, "hann"])
def test_separator_is_a_scaled_overlap_add_of_chunk_outputs(fixture, window):
    """Written from the notes' description, independently of separate_waveform's indexing."""
    chunk_size, chunk_step = 1450, 400
    model = _tiny_model(fixture, window=window)
    length = 3001
    mix = torch.randn(2, length, generator=torch.Generator().manual_seed(3))
    stems = bsrnn.separate_waveform(model, mix, chunk_size=chunk_size, chunk_step=chunk_step, batch_size=2)

    window_length = 1920  # 1450 samples grown by win_length - 1450 % hop = 512 - 42
    hop = chunk_step + window_length - chunk_size
    edge = chunk_size - chunk_step
    # Every chunk of the grid -edge + k * hop that overlaps the signal (zeros outside it).
    expected = torch.zeros(2, length)
    start = -edge
    with torch.inference_mode():
        while start < length:
            excerpt = torch.zeros(2, window_length)
            lo, hi = max(start, 0), min(start + window_length, length)
            if hi > lo:
                excerpt[:, lo - start : hi - start] = mix[:, lo:hi]
            out = model(excerpt[None])[0, 0]
            out = out / (window_length / hop) if window is None else out * torch.hann_window(window_length)
            if hi > lo:
                expected[:, lo:hi] += out[:, lo - start : hi - start]
            start += hop
    assert (stems[0] - expected).abs().max().item() < TOLERANCE


def test_separator_duplicates_mono_like_the_reference_loader(fixture):
    model = _tiny_model(fixture)
    mono = torch.randn(1, 2500, generator=torch.Generator().manual_seed(5))
    stems = bsrnn.separate_waveform(model, mono, chunk_size=1408, chunk_step=600)
    stereo = bsrnn.separate_waveform(model, mono.repeat(2, 1), chunk_size=1408, chunk_step=600)
    assert stems.shape == (1, 2, 2500)
    assert torch.equal(stems, stereo)
    with pytest.raises(ModelError, match="chunks of 1000 samples"):
        bsrnn.separate_waveform(model, mono, chunk_size=1000, chunk_step=600)
