"""SCNet (sparse compression network), as published through ZFTurbo's MSST.

Owns:
- `build(config)`: the SCNet module from a whole MSST config (`model` section = the
  constructor arguments; missing keys take the reference constructor's defaults).
- `SCNet`: waveform (batch, channels, samples) -> stems (batch, stems, channels, samples).
  Its state_dict has the keys and shapes of the published checkpoints (strict load).

The `inference.normalize` step of the MSST SCNet-small config (the whole track standardised by
its mono mix, population std, before chunking, undone on the stems) is not part of the module:
models.toml says `normalize = "msst"` and `sfsep.inference.normalize_mixture` does it.

Architecture (paper: arXiv 2401.13276), as the reference computes it:

1. Right-pad the waveform so that the STFT frame count is even (the separation network
   takes an rfft along time). The pad is `hop - T % hop` (a whole hop when T is already a
   multiple of hop), plus one more hop when that leaves an even number of hops.
2. STFT with a *rectangular* window (the reference passes no window to torch.stft, which
   means ones of `win_size`), `normalized=True`, centred with reflect padding. Real and
   imaginary parts become channels: [ch0.re, ch0.im, ch1.re, ch1.im].
3. Encoder: SD blocks. Each splits the frequency axis into low / mid / high bands by the
   proportions `band_SR`, down-samples each band with its own strided (kernel, 1) conv
   (`band_kernel`, `band_stride`), runs a per-band convolution module along time for every
   frequency row, applies GELU, concatenates the bands (this is the skip) and mixes them
   with a 3x3 conv.
4. Separation network: `num_dplayer` dual-path bi-LSTM layers (over frequency, then over
   time). Between layers the feature map alternates between the time domain and an
   orthonormal rfft of the time axis (real and imaginary parts stacked as channels), so
   odd layers work on twice the channels.
5. Decoder: fusion (add the skip, gated 3x3 conv) then SU layers (per-band transposed
   convs, trimmed back to the band's original height). The last one gives
   `dims[0] * len(sources)` channels laid out [source][channel][re/im].
6. Inverse STFT with the same rectangular normalised window; crop the padding.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .precision import autocast_off, run_rnn

# Constructor defaults of the reference SCNet (they are also the SCNet-small values).
MODEL_DEFAULTS: dict[str, Any] = {
    "sources": ["drums", "bass", "other", "vocals"],
    "audio_channels": 2,
    "dims": [4, 32, 64, 128],
    "nfft": 4096,
    "hop_size": 1024,
    "win_size": 4096,
    "normalized": True,
    "band_SR": [0.175, 0.392, 0.433],
    "band_stride": [1, 4, 16],
    "band_kernel": [3, 4, 16],
    "conv_depths": [3, 2, 1],
    "compress": 4,
    "conv_kernel": 3,
    "num_dplayer": 6,
    "expand": 1,
}


# ----------------------------------------------------------------------------------------
# Encoder pieces


class ConvolutionModule(nn.Module):
    """Residual stack applied along time to (rows, channels, frames).

    Each layer: GroupNorm(1) -> conv(k) to 2*hidden -> GLU -> depthwise conv(k) ->
    GroupNorm(1) -> SiLU -> 1x1 conv back to `channels`; hidden = channels / compress.
    """

    def __init__(self, channels: int, depth: int, compress: float, kernel: int):
        super().__init__()
        if kernel % 2 != 1:
            raise ModelError(f"SCNet conv_kernel must be odd, got {kernel}")
        hidden = int(channels / compress)
        pad = kernel // 2
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.GroupNorm(1, channels),
                nn.Conv1d(channels, 2 * hidden, kernel, padding=pad),
                nn.GLU(dim=1),
                nn.Conv1d(hidden, hidden, kernel, padding=pad, groups=hidden),
                nn.GroupNorm(1, hidden),
                nn.SiLU(),
                nn.Conv1d(hidden, channels, 1),
            )
            for _ in range(abs(depth))
        )

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            rows = rows + layer(rows)
        return rows


def _band_edges(height: int, band_proportions: Sequence[float]) -> list[tuple[int, int]]:
    """(start, end) of the low / mid / high bands of a frequency axis of `height` rows.

    Same arithmetic as the reference (ceil of height * cumulative proportion), so the
    band borders match bit for bit.
    """
    low, mid = band_proportions[0], band_proportions[1]
    first = math.ceil(height * low)
    second = math.ceil(height * (low + mid))
    return [(0, first), (first, second), (second, height)]


class SDlayer(nn.Module):
    """Split the frequency axis into bands and down-sample each with a strided conv."""

    def __init__(self, channels_in: int, channels_out: int, bands: Sequence[dict[str, Any]]):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels_in, channels_out, (band["kernel"], 1), (band["stride"], 1))
            for band in bands
        )
        self.strides = [band["stride"] for band in bands]
        self.kernels = [band["kernel"] for band in bands]
        self.proportions = [band["SR"] for band in bands]

    def forward(self, spec: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
        outputs, heights = [], []
        for conv, stride, kernel, (start, end) in zip(
            self.convs, self.strides, self.kernels, _band_edges(spec.shape[2], self.proportions)
        ):
            band = spec[:, :, start:end]
            height = end - start
            # Stride 1: "same"-style padding (kernel - 1 rows); otherwise round the band
            # height up to a multiple of the stride. The left side gets the smaller half.
            total = kernel - 1 if stride == 1 else (-height) % stride
            band = F.pad(band, (0, 0, total // 2, total - total // 2))
            outputs.append(conv(band))
            heights.append(height)
        return outputs, heights


class SDblock(nn.Module):
    """SD layer, per-band convolution modules along time, GELU, then a global 3x3 conv."""

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        bands: Sequence[dict[str, Any]],
        depths: Sequence[int],
        compress: float,
        conv_kernel: int,
    ):
        super().__init__()
        self.SDlayer = SDlayer(channels_in, channels_out, bands)
        self.conv_modules = nn.ModuleList(
            ConvolutionModule(channels_out, depth, compress, conv_kernel) for depth in depths
        )
        self.globalconv = nn.Conv2d(channels_out, channels_out, 3, 1, 1)

    def forward(
        self, spec: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
        bands, original_heights = self.SDlayer(spec)
        processed = []
        for conv_module, band in zip(self.conv_modules, bands):
            batch, channels, height, frames = band.shape
            # Every frequency row of every item is an independent 1-D sequence over time.
            rows = band.permute(0, 2, 1, 3).reshape(batch * height, channels, frames)
            rows = F.gelu(conv_module(rows))
            processed.append(rows.view(batch, height, channels, frames))
        heights = [band.shape[1] for band in processed]
        skip = torch.cat(processed, dim=1).permute(0, 2, 1, 3).contiguous()
        return self.globalconv(skip), skip, heights, original_heights


# ----------------------------------------------------------------------------------------
# Separation network


class DualPathRNN(nn.Module):
    """Bi-LSTM over frequency then over time, each GroupNorm -> LSTM -> Linear + residual."""

    def __init__(self, channels: int, expand: int):
        super().__init__()
        hidden = channels * expand
        self.lstm_layers = nn.ModuleList(
            nn.LSTM(channels, hidden, num_layers=1, bidirectional=True, batch_first=True)
            for _ in range(2)
        )
        self.linear_layers = nn.ModuleList(nn.Linear(2 * hidden, channels) for _ in range(2))
        self.norm_layers = nn.ModuleList(nn.GroupNorm(1, channels) for _ in range(2))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        batch, channels, height, frames = feats.shape
        # Frequency path: sequences along the frequency axis, one per (item, frame).
        seq = self.norm_layers[0](feats).permute(0, 3, 2, 1).reshape(batch * frames, height, channels)
        seq = self.linear_layers[0](run_rnn(self.lstm_layers[0], seq))
        feats = feats + seq.view(batch, frames, height, channels).permute(0, 3, 2, 1)
        # Time path: sequences along time, one per (item, frequency row).
        seq = self.norm_layers[1](feats).permute(0, 2, 3, 1).reshape(batch * height, frames, channels)
        seq = self.linear_layers[1](run_rnn(self.lstm_layers[1], seq))
        return feats + seq.view(batch, height, frames, channels).permute(0, 3, 1, 2)


class SeparationNet(nn.Module):
    """Dual-path layers; the time axis alternates with its orthonormal rfft between them."""

    def __init__(self, channels: int, expand: int, num_layers: int):
        super().__init__()
        if num_layers % 2:
            raise ModelError(f"SCNet num_dplayer must be even, got {num_layers}")
        self.dp_modules = nn.ModuleList(
            DualPathRNN(channels * (2 if index % 2 else 1), expand) for index in range(num_layers)
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        frames = feats.shape[-1]
        for index, layer in enumerate(self.dp_modules):
            feats = layer(feats)
            with autocast_off(feats.device):
                if index % 2 == 0:
                    # To the frequency-of-time domain: [real parts ; imaginary parts].
                    spectrum = torch.fft.rfft(feats.float(), dim=3, norm="ortho")
                    feats = torch.cat([spectrum.real, spectrum.imag], dim=1)
                else:
                    half = feats.shape[1] // 2
                    feats = feats.float()
                    spectrum = torch.complex(feats[:, :half], feats[:, half:])
                    feats = torch.fft.irfft(spectrum, n=frames, dim=3, norm="ortho")
        return feats


# ----------------------------------------------------------------------------------------
# Decoder pieces


class FusionLayer(nn.Module):
    """Add the encoder skip, then a gated 3x3 conv.

    The reference duplicates the channels ([x, x]) before a 2C -> 2C conv; a conv of a
    duplicated input equals a conv of x with the two input halves of the kernel summed,
    so we fold the kernel instead of building the doubled tensor (half the work).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 3, 1, 1)

    def forward(self, feats: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        feats = feats + skip
        channels = feats.shape[1]
        weight = self.conv.weight[:, :channels] + self.conv.weight[:, channels:]
        return F.glu(F.conv2d(feats, weight, self.conv.bias, padding=1), dim=1)


class SUlayer(nn.Module):
    """Per-band transposed convs that undo an SD layer, trimmed to the band's old height."""

    def __init__(self, channels_in: int, channels_out: int, bands: Sequence[dict[str, Any]]):
        super().__init__()
        self.convtrs = nn.ModuleList(
            nn.ConvTranspose2d(channels_in, channels_out, (band["kernel"], 1), (band["stride"], 1))
            for band in bands
        )

    def forward(
        self, feats: torch.Tensor, heights: Sequence[int], original_heights: Sequence[int]
    ) -> torch.Tensor:
        outputs = []
        start = 0
        for index, convtr in enumerate(self.convtrs):
            end = start + heights[index] if index < len(self.convtrs) - 1 else feats.shape[2]
            out = convtr(feats[:, :, start:end])
            target = original_heights[index]
            trim = abs(target - out.shape[2]) // 2
            outputs.append(out[:, :, trim : trim + target])
            start = end
        return torch.cat(outputs, dim=2)


# ----------------------------------------------------------------------------------------
# The network


class SCNet(nn.Module):
    """SCNet; see the module docstring. Keyword arguments are the MSST `model` section."""

    def __init__(
        self,
        *,
        sources: Sequence[str],
        audio_channels: int,
        dims: Sequence[int],
        nfft: int,
        hop_size: int,
        win_size: int,
        normalized: bool,
        band_SR: Sequence[float],
        band_stride: Sequence[int],
        band_kernel: Sequence[int],
        conv_depths: Sequence[int],
        compress: float,
        conv_kernel: int,
        num_dplayer: int,
        expand: int,
    ):
        super().__init__()
        if len(band_SR) != 3 or len(band_stride) != 3 or len(band_kernel) != 3:
            raise ModelError("SCNet band_SR, band_stride and band_kernel must have 3 entries (low, mid, high)")
        if dims[0] != 2 * audio_channels:
            raise ModelError(
                f"SCNet dims[0] must be 2 * audio_channels = {2 * audio_channels} "
                f"(real and imaginary part of each channel), got {dims[0]}"
            )
        self.sources = list(sources)
        self.stems = tuple(self.sources)
        self.audio_channels = audio_channels
        self.nfft = nfft
        self.hop_size = hop_size
        self.win_size = win_size
        self.normalized = bool(normalized)
        bands = [
            {"SR": band_SR[i], "stride": band_stride[i], "kernel": band_kernel[i]} for i in range(3)
        ]
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for index in range(len(dims) - 1):
            self.encoder.append(
                SDblock(dims[index], dims[index + 1], bands, conv_depths, compress, conv_kernel)
            )
            out_channels = dims[index] * (len(self.sources) if index == 0 else 1)
            # Decoder blocks run deepest first, hence insert at the front.
            self.decoder.insert(
                0,
                nn.Sequential(
                    FusionLayer(dims[index + 1]),
                    SUlayer(dims[index + 1], out_channels, bands),
                ),
            )
        self.separation_net = SeparationNet(dims[-1], expand, num_dplayer)

    def _padding(self, samples: int) -> int:
        """Right padding that makes the centred STFT frame count even (reference rule)."""
        padding = self.hop_size - samples % self.hop_size
        if ((samples + padding) // self.hop_size) % 2 == 0:
            padding += self.hop_size
        return padding

    def _stft_kwargs(self, device: torch.device) -> dict[str, Any]:
        return {
            "n_fft": self.nfft,
            "hop_length": self.hop_size,
            "win_length": self.win_size,
            "window": torch.ones(self.win_size, device=device, dtype=torch.float32),
            "center": True,
            "normalized": self.normalized,
        }

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """(batch, channels, samples) -> (batch, len(sources), channels, samples)."""
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise ModelError(
                f"SCNet expects audio shaped (batch, {self.audio_channels}, samples), got {tuple(mix.shape)}"
            )
        batch, channels, samples = mix.shape
        padded = samples + self._padding(samples)
        stft_kwargs = self._stft_kwargs(mix.device)

        with autocast_off(mix.device):
            wave = F.pad(mix.float(), (0, padded - samples)).reshape(batch * channels, padded)
            spec = torch.view_as_real(torch.stft(wave, return_complex=True, **stft_kwargs))
        # (batch*channels, freq, frames, re/im) -> (batch, channels*re/im, freq, frames)
        height, frames = spec.shape[1], spec.shape[2]
        feats = spec.permute(0, 3, 1, 2).reshape(batch, channels * 2, height, frames)

        skips = []
        for block in self.encoder:
            feats, skip, heights, original_heights = block(feats)
            skips.append((skip, heights, original_heights))

        feats = self.separation_net(feats)

        for (fusion, su_layer), (skip, heights, original_heights) in zip(self.decoder, reversed(skips)):
            feats = su_layer(fusion(feats, skip), heights, original_heights)

        # Channels are laid out [source][channel][re/im].
        num_sources = len(self.sources)
        with autocast_off(mix.device):
            feats = feats.float().reshape(batch * num_sources * channels, 2, height, frames)
            spec = torch.complex(feats[:, 0], feats[:, 1])
            wave = torch.istft(spec, length=padded, **stft_kwargs)
        return wave.view(batch, num_sources, channels, padded)[..., :samples]


def build(config: dict[str, Any]) -> SCNet:
    """SCNet from a whole MSST config (uses its `model` section)."""
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ModelError("SCNet config needs a 'model' section (the MSST YAML's model: mapping)")
    section = config["model"]
    unknown = sorted(set(section) - set(MODEL_DEFAULTS))
    if unknown:
        raise ModelError(
            f"SCNet config 'model' section has unknown keys {unknown} "
            f"(known: {', '.join(sorted(MODEL_DEFAULTS))}); is this an scnet_masked/scnet_tran config?"
        )
    return SCNet(**{**MODEL_DEFAULTS, **section})
