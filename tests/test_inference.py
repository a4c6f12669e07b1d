"""Chunked inference: chunking must not change what a local model computes."""

import pytest
import torch

from sfsep.errors import UsageError
from sfsep.inference import demix, fade_plan, resolve_device


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
