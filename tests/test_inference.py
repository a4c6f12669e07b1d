"""Chunked inference: chunking must not change what a local model computes; the mixture
normalization (one function, gathered whole or block by block) follows each reference's formula."""

import numpy as np
import pytest
import torch

from sfsep.errors import UsageError
from sfsep.inference import (NORMALIZATIONS, MixtureStatistics, demix, fade_plan, mixture_scale,
                             normalize_mixture, resolve_device)


class SmallConv(torch.nn.Module):
    """A two-layer convolution: receptive field of 2 * 8 = 16 samples on each side, 3 stems."""

    def __init__(self, channels: int = 2, stems: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.stems = stems
        self.first = torch.nn.Conv1d(channels, 8, kernel_size=17, padding=8)
        self.second = torch.nn.Conv1d(8, channels * stems, kernel_size=17, padding=8)

    def forward(self, mix):
        batch, channels, length = mix.shape
        out = self.second(torch.tanh(self.first(mix)))
        return out.view(batch, self.stems, channels, length)


def _signal(length, channels=2, seed=1):
    return torch.randn(channels, length, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("length", [5000, 4096 * 3, 777])
def test_fade_chunking_equals_whole_signal_away_from_edges(batch_size, length):
    model = SmallConv().eval()
    mix = _signal(length)
    with torch.inference_mode():
        whole = model(mix[None])[0]
    # overlap 0.25 of 1024 = 256 samples: margins of 64 >= the 16-sample receptive field.
    chunked = demix(model, mix, chunk_size=1024, overlap=0.25, style="fade", batch_size=batch_size)
    assert chunked.shape == whole.shape
    edge = 16
    torch.testing.assert_close(chunked[..., edge:-edge], whole[..., edge:-edge], atol=1e-5, rtol=0)


def test_fade_chunking_differs_when_receptive_field_exceeds_margin():
    """The equality above is not a tautology: a tiny overlap makes chunk edges visible."""
    model = SmallConv().eval()
    mix = _signal(4000)
    with torch.inference_mode():
        whole = model(mix[None])[0]
    chunked = demix(model, mix, chunk_size=1000, overlap=0.0, style="fade")
    assert (chunked - whole).abs().max() > 1e-3


def test_fade_plan_covers_signal_and_ends_at_the_end():
    starts = fade_plan(10_000, 1024, 0.25)
    assert starts[0] == 0 and starts[-1] == 10_000 - 1024
    assert all(b - a <= 1024 for a, b in zip(starts, starts[1:]))
    assert fade_plan(500, 1024, 0.25) == [0]


def test_fade_plan_on_grid_ends_with_a_shorter_chunk():
    """For models that take any length the chunks stay on the grid; the last one reaches the
    end, is shorter than a chunk and longer than the overlap, and no chunk is wasted."""
    for length in (1751, 2000, 2500, 10_000, 10_001):
        starts = fade_plan(length, 1000, 0.25, on_grid=True)
        assert starts == list(range(0, starts[-1] + 1, 750))
        assert starts[-1] + 1000 >= length > starts[-1] + 250
        assert len(starts) == 1 or starts[-2] + 1000 < length
    assert fade_plan(1750, 1000, 0.25, on_grid=True) == [0, 750]


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_any_length_runs_the_short_last_chunk_unpadded_and_alone(batch_size):
    """The last chunk of an any_length fade plan reaches the model unpadded, in a call of its own
    whatever the batch size, and the result reconstructs an identity model."""
    lengths = []

    def identity(batch):
        lengths.append((batch.shape[0], batch.shape[-1]))
        return batch[:, None]

    mix = _signal(10_123)
    out = demix(identity, mix, chunk_size=2048, overlap=0.25, style="fade", batch_size=batch_size,
                any_length=True)
    torch.testing.assert_close(out[0], mix, atol=1e-5, rtol=0)
    starts = fade_plan(10_123, 2048, 0.25, on_grid=True)
    assert lengths[-1] == (1, 10_123 - starts[-1]) and 10_123 - starts[-1] < 2048
    assert all(length == 2048 for _, length in lengths[:-1])
    assert sum(count for count, _ in lengths) == len(starts)


@pytest.mark.parametrize("style,overlap", [("msst", 2), ("msst", 4), ("msst_demucs", 4), ("demucs", 0.25), ("fade", 0.5)])
def test_every_style_reconstructs_an_identity_model(style, overlap):
    """A model that returns its input (as one stem) must come back unchanged from every style."""
    identity = lambda x: x[:, None]  # noqa: E731
    mix = _signal(10_123)
    out = demix(identity, mix, chunk_size=2048, overlap=overlap, style=style, batch_size=2)
    assert out.shape == (1, 2, 10_123)
    torch.testing.assert_close(out[0], mix, atol=1e-5, rtol=0)


def test_progress_reports_every_chunk():
    calls = []
    demix(lambda x: x[:, None], _signal(9000), chunk_size=1000, overlap=0.25, style="fade",
          batch_size=2, progress=lambda done, total: calls.append((done, total)))
    total = calls[-1][1]
    assert calls[-1][0] == total == len(fade_plan(9000, 1000, 0.25))
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_whole_signal_when_no_chunk_size():
    model = SmallConv().eval()
    mix = _signal(3000)
    out = demix(model, mix, chunk_size=None)
    with torch.inference_mode():
        torch.testing.assert_close(out, model(mix[None])[0])


def test_bad_arguments_are_usage_errors():
    with pytest.raises(UsageError):
        demix(lambda x: x[:, None], _signal(100), chunk_size=10, style="nope")
    with pytest.raises(UsageError):
        demix(lambda x: x[:, None], _signal(100), chunk_size=10, style="fade", overlap=0.9)
    with pytest.raises(UsageError):
        resolve_device("cuda:0") if not torch.cuda.is_available() else (_ for _ in ()).throw(UsageError("x"))
    with pytest.raises(UsageError):
        demix(lambda x: x[:, None], _signal(100), chunk_size=10, precision="fp16")


def test_bf16_autocast_runs_on_cpu():
    model = SmallConv().eval()
    mix = _signal(2048)
    out = demix(model, mix, chunk_size=1024, overlap=0.25, precision="bf16")
    with torch.inference_mode():
        whole = model(mix[None])[0]
    assert out.dtype == torch.float32
    assert (out - whole).abs().max() < 0.1


# --------------------------------------------------------------------------------------------
# Mixture normalization


def _oracle(mix: torch.Tensor, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per item of (..., channels, samples), the references' formulas in numpy float64."""
    mono = mix.numpy().astype(np.float64).mean(axis=-2)
    scale = mono.std(axis=-1, ddof=0 if kind == "msst" else 1)
    return mono.mean(axis=-1), scale + (1e-8 if kind == "demucs" else 0.0)


def _mean_and_scale(restore, batch_shape=()) -> tuple[torch.Tensor, torch.Tensor]:
    """The (mean, scale) a restore function applies, read back exactly (float64 stems)."""
    zeros = torch.zeros(*batch_shape, 1, 1, 1, dtype=torch.float64)
    mean = restore(zeros)
    return mean.reshape(batch_shape), (restore(zeros + 1) - mean).reshape(batch_shape)


@pytest.mark.parametrize("kind", NORMALIZATIONS)
def test_normalize_mixture_matches_the_reference_formula(kind):
    generator = torch.Generator().manual_seed(3)
    mix = 0.2 * torch.randn(2, 50_000, generator=generator) + torch.tensor([[0.05], [-0.01]])
    normalized, restore = normalize_mixture(mix, kind)

    mean, scale = _oracle(mix, kind)
    expected = (mix.numpy().astype(np.float64) - mean) / scale
    assert np.abs(normalized.numpy() - expected).max() < 1e-5
    assert normalized.dtype == mix.dtype
    normalized_mono = normalized.double().mean(dim=0)
    assert abs(normalized_mono.mean().item()) < 1e-6
    assert abs(normalized_mono.std(correction=0 if kind == "msst" else 1).item() - 1.0) < 1e-5

    # restore() maps stems (..., stems, channels, samples) back: stem * scale + mean.
    stems = torch.stack([normalized * 0.25, normalized * 0.75])
    restored = restore(stems)
    assert restored.shape == stems.shape
    expected_restored = stems.numpy().astype(np.float64) * scale + mean
    assert np.abs(restored.numpy() - expected_restored).max() < 1e-6
    assert (restore(normalized[None])[0] - mix).abs().max().item() < 1e-5


@pytest.mark.parametrize("kind", NORMALIZATIONS)
def test_normalize_mixture_scale_per_kind_on_a_short_track(kind):
    # Seven samples: population and sample std differ by sqrt(7/6), so each kind is told apart.
    mix = torch.tensor([[0.1, -0.4, 0.3, 0.9, -0.2, 0.05, 0.6],
                        [0.3, 0.2, -0.5, 0.1, 0.0, -0.3, 0.2]])
    _, restore = normalize_mixture(mix, kind)
    mean, scale = _mean_and_scale(restore)
    expected_mean, expected_scale = _oracle(mix, kind)
    assert abs(mean.item() - expected_mean) < 1e-7
    assert abs(scale.item() / expected_scale - 1) < 1e-6
    population, sample = _oracle(mix, "msst")[1], _oracle(mix, "demucs_v2")[1]
    assert abs(sample / population - (7 / 6) ** 0.5) < 1e-12
    assert abs(mixture_scale(kind, float(((mix.double().mean(0) - expected_mean) ** 2).sum()), 7)
               / expected_scale - 1) < 1e-12


@pytest.mark.parametrize("kind", ["demucs", "demucs_v2"])
def test_normalize_mixture_round_trip_and_batches(kind):
    eps = 1e-8 if kind == "demucs" else 0.0
    mix = 0.3 * torch.randn(2, 1000, generator=torch.Generator().manual_seed(0)) + 0.05
    normalized, restore = normalize_mixture(mix, kind)
    mean, scale = _mean_and_scale(restore)
    mono = normalized.mean(0)
    assert abs(mono.mean().item()) < 1e-6
    assert abs(mono.std().item() - 1) < 1e-5
    assert abs(mean.item() - mix.mean(0).mean().item()) < 1e-7
    assert abs(scale.item() - (mix.mean(0).std().item() + eps)) < 1e-7
    stems = torch.stack([normalized, 2 * normalized])
    restored = restore(stems)
    assert (restored[0] - mix).abs().max().item() < 1e-5
    assert (restored[1] - (2 * mix - mean.float())).abs().max().item() < 1e-5

    # Batched tracks (B, C, T) carry one mean and scale per track.
    batch = torch.stack([mix, 3 * mix])
    normalized, restore = normalize_mixture(batch, kind)
    mean, scale = _mean_and_scale(restore, (2,))
    assert mean.shape == (2,) and abs(scale[1].item() / scale[0].item() - 3) < 1e-5
    assert (restore(normalized[:, None])[:, 0] - batch).abs().max().item() < 1e-5
    alone, _ = normalize_mixture(3 * mix, kind)
    assert (normalized[1] - alone).abs().max().item() < 1e-6


@pytest.mark.parametrize("kind", NORMALIZATIONS)
def test_normalize_mixture_silent_track_stays_finite(kind):
    # demucs v4 keeps its + 1e-8 (the scale is then 1e-8 and the normalized track 0); the
    # others would divide by zero and use scale 1 instead.
    silent_scale = torch.tensor(1e-8).item() if kind == "demucs" else 1.0
    for mix in (torch.full((2, 1000), 0.25), torch.zeros(2, 100)):
        normalized, restore = normalize_mixture(mix, kind)
        assert torch.isfinite(normalized).all()
        assert _mean_and_scale(restore)[1].item() == silent_scale
        assert (restore(normalized[None])[0] - mix).abs().max().item() < 1e-7


@pytest.mark.filterwarnings("ignore:std\\(\\)")  # torch warns that one sample has no sample std
@pytest.mark.parametrize("kind", NORMALIZATIONS)
def test_normalize_mixture_one_sample_stays_finite(kind):
    # The sample std of one sample is NaN (and the population std 0): scale 1 for every kind.
    normalized, restore = normalize_mixture(torch.tensor([[0.5], [0.1]]), kind)
    assert torch.isfinite(normalized).all()
    assert _mean_and_scale(restore)[1].item() == 1.0
    statistics = MixtureStatistics()
    statistics.update(torch.tensor([[0.5], [0.1]]))
    assert statistics.normalization(kind)[1] == 1.0


def test_normalize_mixture_bad_arguments_are_usage_errors():
    with pytest.raises(UsageError, match="channels, samples"):
        normalize_mixture(torch.zeros(10), "msst")
    for call in (lambda: normalize_mixture(torch.zeros(2, 10), "std"), lambda: mixture_scale("std", 1.0, 10),
                 lambda: MixtureStatistics().normalization("std")):
        with pytest.raises(UsageError, match="unknown normalization 'std'"):
            call()


def test_normalize_mixture_is_differentiable():
    mix = torch.randn(3, 2, 500, generator=torch.Generator().manual_seed(1), requires_grad=True)
    normalized, restore = normalize_mixture(mix, "demucs")
    restore(torch.tanh(normalized)[:, None]).pow(2).sum().backward()
    assert mix.grad is not None and torch.isfinite(mix.grad).all() and mix.grad.abs().max() > 0


@pytest.mark.parametrize("kind", NORMALIZATIONS)
def test_mixture_statistics_in_uneven_blocks_equal_the_whole(kind):
    generator = torch.Generator().manual_seed(7)
    mix = 0.3 * torch.randn(2, 100_003, generator=generator) + torch.tensor([[0.1], [0.02]])
    _, restore = normalize_mixture(mix.double(), kind)
    whole_mean, whole_scale = (value.item() for value in _mean_and_scale(restore))
    results = []
    for sizes in ([1, 999, 0, 30_000, 40_000, 29_003], [100_003], [77_777, 22_226]):
        statistics = MixtureStatistics()
        for block in torch.split(mix, sizes, dim=1):
            statistics.update(block)
        assert statistics.count == mix.shape[1]
        mean, scale = statistics.normalization(kind)
        assert abs(mean / whole_mean - 1) < 1e-7
        assert abs(scale / whole_scale - 1) < 1e-7
        results.append((mean, scale))
    # The float32 whole-track computation agrees too, to float32 accuracy.
    _, restore32 = normalize_mixture(mix, kind)
    mean32, scale32 = (value.item() for value in _mean_and_scale(restore32))
    assert abs(mean32 / results[0][0] - 1) < 1e-5 and abs(scale32 / results[0][1] - 1) < 1e-6
    # A silent stream gets the same scale as normalize_mixture gives a silent track.
    statistics = MixtureStatistics()
    for block in torch.split(torch.full((2, 1000), 0.25), [10, 990], dim=1):
        statistics.update(block)
    assert statistics.normalization(kind) == (0.25, 1e-8 if kind == "demucs" else 1.0)
