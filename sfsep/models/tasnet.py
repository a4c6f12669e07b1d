"""Conv-TasNet as demucs v2 shipped it (`tasnet`, `tasnet_extra`), as a plain nn.Module.

Owns: `ConvTasNet` (the multichannel music variant of Luo & Mesgarani's network that demucs v2
trained on MUSDB) and `build_conv_tasnet`, which takes the demucs v2 constructor kwargs.

The network. An encoder (a 1-D conv with L-sample filters, hop L/2, no bias, then ReLU) turns
the stereo waveform into N non-negative basis weights per frame. A temporal convolutional
network estimates one mask per source over those weights: a channel-wise layer norm, a 1x1
bottleneck to B channels, R repeats of X residual blocks (1x1 conv to H, PReLU, norm,
depthwise conv with dilation 2^x, PReLU, norm, 1x1 conv back to B), and a 1x1 conv to
sources*N mask channels (ReLU or softmax over sources). The decoder multiplies the weights by
each mask, maps every frame to L samples per audio channel with a linear layer and
overlap-adds the frames at hop L/2. The output is zero-padded on the right to the input
length (the last partial frame is not decoded).

The published models use the class defaults (N=256, L=20, B=256, H=512, P=3, R=4, gLN, ReLU,
non-causal) with X=10, stereo, sources [drums, bass, other, vocals]; `segment_length` (352800
samples = 8 s) is only the chunk length demucs v2 used at inference. The model itself does no
normalisation; demucs v2 normalised the whole track by its mono mixture outside the model.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ModelError

# demucs v2 ConvTasNet constructor defaults (the published models only override X and sources).
CONV_TASNET_DEFAULTS: dict[str, Any] = {
    "N": 256,
    "L": 20,
    "B": 256,
    "H": 512,
    "P": 3,
    "X": 8,
    "R": 4,
    "audio_channels": 2,
    "norm_type": "gLN",
    "causal": False,
    "mask_nonlinear": "relu",
    "samplerate": 44100,
    "segment_length": 44100 * 2 * 4,
}

# Inside the square root of both layer norms.
NORM_EPS = 1e-8


class GlobalLayerNorm(nn.Module):
    """gLN: normalise each item over channels and time together (biased variance)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2), keepdim=True)
        var = (x - mean).pow(2).mean(dim=(1, 2), keepdim=True)
        return self.gamma * (x - mean) / torch.sqrt(var + NORM_EPS) + self.beta


class ChannelwiseLayerNorm(nn.Module):
    """cLN: normalise each frame over channels only (biased variance)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return self.gamma * (x - mean) / torch.sqrt(var + NORM_EPS) + self.beta


def _norm(norm_type: str, channels: int) -> nn.Module:
    if norm_type == "gLN":
        return GlobalLayerNorm(channels)
    if norm_type == "cLN":
        return ChannelwiseLayerNorm(channels)
    if norm_type == "id":
        return nn.Identity()
    if norm_type == "BN":
        return nn.BatchNorm1d(channels)
    raise ModelError(f"conv_tasnet config: norm_type={norm_type!r} is not one of gLN, cLN, BN, id")


class TrimRight(nn.Module):
    """Drop the last `amount` frames (makes a left-padded convolution causal)."""

    def __init__(self, amount: int) -> None:
        super().__init__()
        self.amount = amount

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :x.shape[-1] - self.amount]


class SeparableConv(nn.Module):
    """Depthwise dilated conv -> PReLU -> norm -> pointwise conv to the bottleneck width.

    In the causal variant the conv is padded on both sides and its last frames are trimmed,
    which shifts the PReLU/norm/pointwise indices in `net` by one (as in the checkpoints).
    """

    def __init__(self, hidden: int, bottleneck: int, kernel: int, dilation: int,
                 norm_type: str, causal: bool) -> None:
        super().__init__()
        padding = (kernel - 1) * dilation if causal else (kernel - 1) * dilation // 2
        layers: list[nn.Module] = [
            nn.Conv1d(hidden, hidden, kernel, padding=padding, dilation=dilation,
                      groups=hidden, bias=False)]
        if causal:
            layers.append(TrimRight(padding))
        layers += [nn.PReLU(), _norm(norm_type, hidden),
                   nn.Conv1d(hidden, bottleneck, 1, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TemporalBlock(nn.Module):
    """Residual block: 1x1 conv to H -> PReLU -> norm -> separable dilated conv back to B."""

    def __init__(self, bottleneck: int, hidden: int, kernel: int, dilation: int,
                 norm_type: str, causal: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(bottleneck, hidden, 1, bias=False),
            nn.PReLU(),
            _norm(norm_type, hidden),
            SeparableConv(hidden, bottleneck, kernel, dilation, norm_type, causal),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class Encoder(nn.Module):
    def __init__(self, filter_length: int, num_filters: int, audio_channels: int) -> None:
        super().__init__()
        self.conv1d_U = nn.Conv1d(audio_channels, num_filters, filter_length,
                                  stride=filter_length // 2, bias=False)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv1d_U(mix))


class MaskNetwork(nn.Module):
    """Temporal convolutional network that estimates a mask per source over the weights (the
    paper's "separation module"; a ConvTasNet holds it as `separator`, the published key prefix)."""

    def __init__(self, num_sources: int, N: int, B: int, H: int, P: int, X: int, R: int,
                 norm_type: str, causal: bool, mask_nonlinear: str) -> None:
        super().__init__()
        self.num_sources = num_sources
        self.mask_nonlinear = mask_nonlinear
        repeats = nn.Sequential(*[
            nn.Sequential(*[TemporalBlock(B, H, P, 2 ** x, norm_type, causal) for x in range(X)])
            for _ in range(R)])
        self.network = nn.Sequential(
            ChannelwiseLayerNorm(N),
            nn.Conv1d(N, B, 1, bias=False),
            repeats,
            nn.Conv1d(B, num_sources * N, 1, bias=False),
        )

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        batch, num_filters, frames = weights.shape
        score = self.network(weights).view(batch, self.num_sources, num_filters, frames)
        if self.mask_nonlinear == "softmax":
            return F.softmax(score, dim=1)
        return F.relu(score)


class Decoder(nn.Module):
    def __init__(self, num_filters: int, filter_length: int, audio_channels: int) -> None:
        super().__init__()
        self.filter_length = filter_length
        self.audio_channels = audio_channels
        self.basis_signals = nn.Linear(num_filters, audio_channels * filter_length, bias=False)

    def forward(self, weights: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """weights (B, N, K), masks (B, S, N, K) -> (B, S, audio_channels, (K-1)*L/2 + L)."""
        masked = (weights[:, None] * masks).transpose(2, 3)  # (B, S, K, N)
        frames = self.basis_signals(masked)  # (B, S, K, C*L)
        batch, sources, count, _ = frames.shape
        frames = frames.view(batch, sources, count, self.audio_channels, self.filter_length)
        frames = frames.permute(0, 1, 3, 4, 2)  # (B, S, C, L, K): columns for fold
        frames = frames.reshape(batch, sources * self.audio_channels * self.filter_length, count)
        hop = self.filter_length // 2
        total = (count - 1) * hop + self.filter_length
        # Overlap-add of K frames of L samples at hop L/2, as a 1-D fold.
        wave = F.fold(frames, output_size=(1, total), kernel_size=(1, self.filter_length),
                      stride=(1, hop))
        return wave.view(batch, sources, self.audio_channels, total)


class ConvTasNet(nn.Module):
    """Conv-TasNet for music. `forward(mix (B, C, T)) -> (B, S, C, T)`.

    Attributes a caller may use: `sources`, `samplerate`, `audio_channels`, `segment_length`
    (demucs v2's inference chunk, samples), `valid_length(length)` (= length).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        kw = dict(CONV_TASNET_DEFAULTS)
        kw.update(kwargs)
        if kw["L"] % 2:
            raise ModelError(f"conv_tasnet config: L={kw['L']} must be even (the hop is L/2)")
        if kw["mask_nonlinear"] not in ("relu", "softmax"):
            raise ModelError(
                f"conv_tasnet config: mask_nonlinear={kw['mask_nonlinear']!r} is not relu or softmax")
        self.sources: list[str] = list(kw["sources"])
        self.audio_channels = int(kw["audio_channels"])
        self.samplerate = int(kw["samplerate"])
        self.segment_length = int(kw["segment_length"])
        self.filter_length = int(kw["L"])
        self.encoder = Encoder(kw["L"], kw["N"], self.audio_channels)
        self.separator = MaskNetwork(len(self.sources), kw["N"], kw["B"], kw["H"], kw["P"],
                                     kw["X"], kw["R"], kw["norm_type"], bool(kw["causal"]),
                                     kw["mask_nonlinear"])
        self.decoder = Decoder(kw["N"], kw["L"], self.audio_channels)

    def valid_length(self, length: int) -> int:
        return length

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise ModelError(
                f"conv_tasnet expects a (batch, {self.audio_channels}, samples) waveform, "
                f"got shape {tuple(mix.shape)}")
        length = mix.shape[-1]
        if length < self.filter_length:
            raise ModelError(
                f"conv_tasnet needs at least {self.filter_length} samples, got {length}")
        weights = self.encoder(mix)
        masks = self.separator(weights)
        estimate = self.decoder(weights, masks)
        return F.pad(estimate, (0, length - estimate.shape[-1]))


def conv_tasnet_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """Full constructor kwargs from demucs v2 kwargs (keys starting with '_' are notes)."""
    if not isinstance(config, dict) or "sources" not in config:
        raise ModelError("conv_tasnet config: expected demucs v2 ConvTasNet kwargs with `sources`")
    full = dict(CONV_TASNET_DEFAULTS)
    unknown = []
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key != "sources" and key not in CONV_TASNET_DEFAULTS:
            unknown.append(key)
            continue
        full[key] = value
    if unknown:
        warnings.warn(f"conv_tasnet config: ignoring unknown options {sorted(unknown)}",
                      stacklevel=3)
    full["sources"] = [str(name) for name in config["sources"]]
    return full


def build_conv_tasnet(config: dict[str, Any]) -> ConvTasNet:
    """ConvTasNet from demucs v2 constructor kwargs (missing values take the class defaults)."""
    return ConvTasNet(**conv_tasnet_kwargs(config))
