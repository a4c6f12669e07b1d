"""The flow as a library: strategies, rates, channels, lengths, with a fixed-rate model."""

import pytest
import torch

from sfsep.errors import ResampleError
from sfsep.inference import demix
from sfsep.models import build_model
from sfsep.pipeline import Separator, Settings, separate
from sfsep.registry import ModelSpec


def _fixed_rate_separator(trained_rate=44100, residual=None):
    """The classical separator pinned to one trained rate, standing in for a neural model."""
    spec = ModelSpec(name="pinned", family="classic", stems=("vocals", "drums", "bass", "other"),
                     trained_rate=trained_rate, chunk_size=trained_rate, overlap=0.25, chunk_style="fade",
                     residual_stem=residual)
    module = build_model("classic", {"sample_rate": trained_rate})
    return Separator(spec, device="cpu", modules=[module])


def _mix(rate, seconds=1.0, channels=2):
    t = torch.arange(int(rate * seconds)) / rate
    base = 0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.1 * torch.sin(2 * torch.pi * 1500 * t)
    return base.expand(channels, -1).clone()


@pytest.mark.parametrize("input_rate,expected", [(8000, "noisy"), (44100, "none"), (48000, "conventional")])
def test_auto_strategy_and_stems_back_at_input_rate(input_rate, expected):
    separator = _fixed_rate_separator()
    mix = _mix(input_rate)
    result = separate(mix, input_rate, separator, settings=Settings(seed=0))
    assert result.strategy == expected and result.model_rate == 44100
    assert list(result.stems) == ["vocals", "drums", "bass", "other"]
    for stem in result.stems.values():
        assert stem.shape == mix.shape and stem.dtype == torch.float32
    total = sum(result.stems.values())
    error = (total - mix).pow(2).sum() / mix.pow(2).sum()
    assert error < 1e-2, float(error)  # classical stems sum to the mixture, resampling is near-transparent


def test_none_strategy_refused_when_rates_differ():
    with pytest.raises(ResampleError, match="--resampler none"):
        separate(_mix(8000), 8000, _fixed_rate_separator(), "none")


def test_seed_reproduces_noisy_runs_and_differs_without_it():
    separator = _fixed_rate_separator()
    mix = _mix(8000, 0.5)
    first = separate(mix, 8000, separator, settings=Settings(seed=3)).stems["vocals"]
    second = separate(mix, 8000, separator, settings=Settings(seed=3)).stems["vocals"]
    third = separate(mix, 8000, separator, settings=Settings(seed=4)).stems["vocals"]
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


def test_mono_in_mono_out_and_residual_stem():
    separator = _fixed_rate_separator(residual="instrumental")
    mix = _mix(16000, 0.5, channels=1)
    result = separate(mix, 16000, separator, "conventional")
    assert set(result.stems) == {"vocals", "drums", "bass", "other", "instrumental"}
    assert all(stem.shape == (1, 8000) for stem in result.stems.values())
    assert any("instrumental" in note for note in result.notes)


def test_any_rate_model_runs_at_input_rate():
    result = separate(_mix(11025, 0.5), 11025, "classic")
    assert result.model_rate == 11025 and result.strategy == "none"


def test_msst_chunking_runs_with_the_spec_num_overlap():
    """An MSST-style spec chunks with its integer num_overlap (its `overlap` fraction is None)."""
    rate = 8000
    spec = ModelSpec(name="pinned_msst", family="classic", stems=("vocals", "drums", "bass", "other"),
                     trained_rate=rate, chunk_size=rate // 2, overlap=None, num_overlap=2, chunk_style="msst")
    separator = Separator(spec, device="cpu", modules=[build_model("classic", {"sample_rate": rate})])
    mix = _mix(rate, seconds=1.5)
    contract = separator.contract(rate, Settings(seed=0))
    assert (contract.style, contract.segment, contract.num_overlap) == ("msst", rate // 2, 2)
    result = separate(mix, rate, separator, settings=Settings(seed=0))
    expected = demix(separator.modules(rate)[0], mix, chunk_size=rate // 2, overlap=2, style="msst")
    assert torch.equal(torch.stack(list(result.stems.values())), expected)
