"""MDX23C (TFC-TDF v3 U-Net), as published through ZFTurbo's MSST.

Owns `build(config)` (the whole MSST config: `audio`, `model`, `training` sections) and
`MDX23C`: waveform (batch, channels, samples) -> stems (batch, stems, channels, samples).
The state_dict has the keys and shapes of the published checkpoints (strict load).

Architecture, as the reference computes it:

1. STFT: Hann window (periodic) of `n_fft`, `hop_length`, centred with reflect padding,
   not normalised. Only the first `dim_f` bins are kept (4096 of 4097 for n_fft 8192: the
   Nyquist bin is dropped and comes back as zeros in the inverse). Real and imaginary parts
   become channels: [ch0.re, ch0.im, ch1.re, ch1.im].
2. The frequency axis is cut into `num_subbands` contiguous sub-bands stacked as channels
   (channel index = spectral channel * num_subbands + sub-band), so the U-Net sees
   dim_c = num_subbands * channels * 2 input channels over dim_f / num_subbands rows.
3. A 1x1 conv to `num_channels`, then the map is transposed to (batch, channels, time,
   frequency) for the U-Net: `num_scales` encoder levels, each a TFC-TDF stack followed by a
   strided conv (kernel = stride = `scale`, channels + `growth`); a TFC-TDF bottleneck; and
   mirrored decoder levels (transposed conv, concatenation with the encoder output,
   TFC-TDF). A TFC-TDF block is: shortcut = 1x1 conv(x); x = conv3x3(act(norm(x)));
   x = x + Linear_f(act(norm(Linear_f(act(norm(x)))))) with a bottleneck of
   `bottleneck_factor` on the frequency axis; x = conv3x3(act(norm(x))); x = x + shortcut.
   No conv or linear layer has a bias.
4. Transposed back, multiplied by the first conv's output, concatenated with the input
   sub-band spectrogram and mapped by conv1x1 -> act -> conv1x1 to stems * dim_c channels;
   sub-bands are put back in place and each stem goes through the inverse STFT.

Stems: one per `training.instruments`, or a single one when `training.target_instrument`
is set. The reference always keeps the stem axis ((B, S, 2, T) even for S = 1), and so do we.

Lengths: the U-Net needs the STFT frame count (samples // hop + 1) to be a multiple of
scale[0] ** num_scales (32 for the published configs; chunk_size 261120 gives 256 frames).
The reference fails on other lengths and, for lengths that are not multiples of the hop,
returns hop * (samples // hop) samples. We return exactly `samples` samples for any length:
when the frame count does not fit, the waveform is zero-padded on the right up to the next
length that fits and the output is cropped; for lengths that fit we run the same
computation as the reference (identical output on the samples it returns).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..errors import ModelError
from .precision import autocast_off


def _norm_factory(norm_type: str) -> Callable[[int], nn.Module]:
    """Normalisation layer by the MSST name: BatchNorm, InstanceNorm, GroupNorm<g>, else none."""
    if norm_type == "BatchNorm":
        return nn.BatchNorm2d
    if norm_type == "InstanceNorm":
        return lambda channels: nn.InstanceNorm2d(channels, affine=True)
    if "GroupNorm" in norm_type:
        groups = int(norm_type.replace("GroupNorm", ""))
        return lambda channels: nn.GroupNorm(num_groups=groups, num_channels=channels)
    return lambda channels: nn.Identity()


def _act_factory(act_type: str) -> Callable[[], nn.Module]:
    """Activation by the MSST name: gelu, relu, elu<alpha>."""
    if act_type == "gelu":
        return nn.GELU
    if act_type == "relu":
        return nn.ReLU
    if act_type.startswith("elu"):
        alpha = float(act_type[3:])
        return lambda: nn.ELU(alpha)
    raise ModelError(f"MDX23C config model.act '{act_type}' is not one of gelu, relu, elu<alpha>")


class TfcTdfBlock(nn.Module):
    """One TFC-TDF block on (batch, channels, time, freq); see the module docstring."""

    def __init__(self, in_channels: int, channels: int, freq: int, bottleneck: int, norm, act):
        super().__init__()
        self.tfc1 = nn.Sequential(
            norm(in_channels), act(), nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False)
        )
        self.tdf = nn.Sequential(
            norm(channels),
            act(),
            nn.Linear(freq, freq // bottleneck, bias=False),
            norm(channels),
            act(),
            nn.Linear(freq // bottleneck, freq, bias=False),
        )
        self.tfc2 = nn.Sequential(norm(channels), act(), nn.Conv2d(channels, channels, 3, 1, 1, bias=False))
        self.shortcut = nn.Conv2d(in_channels, channels, 1, 1, 0, bias=False)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(feats)
        feats = self.tfc1(feats)
        feats = feats + self.tdf(feats)
        return self.tfc2(feats) + shortcut


class TfcTdf(nn.Module):
    """`num_blocks` TFC-TDF blocks; the first maps in_channels -> channels."""

    def __init__(
        self, in_channels: int, channels: int, num_blocks: int, freq: int, bottleneck: int, norm, act
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            TfcTdfBlock(in_channels if index == 0 else channels, channels, freq, bottleneck, norm, act)
            for index in range(num_blocks)
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            feats = block(feats)
        return feats


class Resample(nn.Module):
    """norm -> act -> (transposed) conv with kernel = stride = scale, no bias."""

    def __init__(self, in_channels: int, out_channels: int, scale, norm, act, transposed: bool):
        super().__init__()
        conv_class = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.conv = nn.Sequential(
            norm(in_channels),
            act(),
            conv_class(in_channels, out_channels, kernel_size=scale, stride=scale, bias=False),
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.conv(feats)


class _Level(nn.Module):
    """A U-Net level; holds `tfc_tdf` plus `downscale` (encoder) or `upscale` (decoder)."""


class MDX23C(nn.Module):
    """TFC-TDF v3 U-Net on a sub-band complex spectrogram; see the module docstring."""

    def __init__(
        self,
        *,
        stems: list[str],
        audio_channels: int,
        n_fft: int,
        hop_length: int,
        dim_f: int,
        num_subbands: int,
        num_scales: int,
        scale: list[int],
        num_blocks_per_scale: int,
        num_channels: int,
        growth: int,
        bottleneck_factor: int,
        norm: str,
        act: str,
    ):
        super().__init__()
        scale = tuple(int(s) for s in scale)
        if dim_f > n_fft // 2 + 1:
            raise ModelError(f"MDX23C audio.dim_f ({dim_f}) exceeds n_fft // 2 + 1 ({n_fft // 2 + 1})")
        if dim_f % (num_subbands * scale[1] ** num_scales):
            raise ModelError(
                f"MDX23C audio.dim_f ({dim_f}) must be divisible by num_subbands * scale[1] ** num_scales"
            )
        self.stems = tuple(stems)
        self.audio_channels = audio_channels
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.dim_f = dim_f
        self.num_subbands = num_subbands
        self.frames_multiple = scale[0] ** num_scales
        norm_layer = _norm_factory(norm)
        act_layer = _act_factory(act)

        dim_c = num_subbands * audio_channels * 2
        channels = num_channels
        freq = dim_f // num_subbands
        self.first_conv = nn.Conv2d(dim_c, channels, 1, 1, 0, bias=False)

        def tfc_tdf(in_channels: int, out_channels: int, freq: int) -> TfcTdf:
            return TfcTdf(
                in_channels, out_channels, num_blocks_per_scale, freq, bottleneck_factor, norm_layer, act_layer
            )

        def resample(in_channels: int, out_channels: int, transposed: bool) -> Resample:
            return Resample(in_channels, out_channels, scale, norm_layer, act_layer, transposed)

        self.encoder_blocks = nn.ModuleList()
        for _ in range(num_scales):
            level = _Level()
            level.tfc_tdf = tfc_tdf(channels, channels, freq)
            level.downscale = resample(channels, channels + growth, transposed=False)
            self.encoder_blocks.append(level)
            freq //= scale[1]
            channels += growth

        self.bottleneck_block = tfc_tdf(channels, channels, freq)

        self.decoder_blocks = nn.ModuleList()
        for _ in range(num_scales):
            level = _Level()
            level.upscale = resample(channels, channels - growth, transposed=True)
            freq *= scale[1]
            channels -= growth
            level.tfc_tdf = tfc_tdf(2 * channels, channels, freq)
            self.decoder_blocks.append(level)

        self.final_conv = nn.Sequential(
            nn.Conv2d(channels + dim_c, channels, 1, 1, 0, bias=False),
            act_layer(),
            nn.Conv2d(channels, len(self.stems) * dim_c, 1, 1, 0, bias=False),
        )

    # -- lengths --------------------------------------------------------------------------

    def valid_length(self, samples: int) -> int:
        """Smallest length >= samples whose STFT frame count the U-Net accepts."""
        frames = samples // self.hop_length + 1
        frames = -(-frames // self.frames_multiple) * self.frames_multiple
        return max(samples, (frames - 1) * self.hop_length)

    # -- spectrogram <-> network layout ---------------------------------------------------

    def _window(self, device: torch.device) -> torch.Tensor:
        return torch.hann_window(self.n_fft, periodic=True, device=device, dtype=torch.float32)

    def _to_subbands(self, wave: torch.Tensor) -> torch.Tensor:
        """(batch, channels, samples) -> (batch, channels*2*subbands, dim_f/subbands, frames)."""
        batch, channels, samples = wave.shape
        with autocast_off(wave.device):
            spec = torch.stft(
                wave.float().reshape(batch * channels, samples),
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                window=self._window(wave.device),
                center=True,
                return_complex=True,
            )
        frames = spec.shape[-1]
        # (batch*channels, freq, frames, re/im) -> (batch, channel, re/im, dim_f, frames); the
        # sub-band split is then a plain reshape of the (re/im, freq) block.
        spec = torch.view_as_real(spec[:, : self.dim_f]).permute(0, 3, 1, 2)
        return spec.reshape(batch, channels * 2 * self.num_subbands, self.dim_f // self.num_subbands, frames)

    def _from_subbands(self, feats: torch.Tensor, samples: int) -> torch.Tensor:
        """(batch, stems*channels*2*subbands, f, frames) -> waveforms (batch, stems, channels, samples)."""
        batch, _, _, frames = feats.shape
        num_stems = len(self.stems)
        feats = feats.float().reshape(batch * num_stems * self.audio_channels, 2, self.dim_f, frames)
        with autocast_off(feats.device):
            spec = torch.complex(feats[:, 0], feats[:, 1])
            # Bins above dim_f (the Nyquist bin for the published configs) come back as zeros.
            spec = nn.functional.pad(spec, (0, 0, 0, self.n_fft // 2 + 1 - self.dim_f))
            wave = torch.istft(
                spec,
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                window=self._window(feats.device),
                center=True,
                length=samples,
            )
        return wave.view(batch, num_stems, self.audio_channels, samples)

    # -- forward --------------------------------------------------------------------------

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """(batch, channels, samples) -> (batch, stems, channels, samples)."""
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise ModelError(
                f"MDX23C expects audio shaped (batch, {self.audio_channels}, samples), got {tuple(mix.shape)}"
            )
        samples = mix.shape[-1]
        padded = self.valid_length(samples)
        if padded != samples:
            mix = nn.functional.pad(mix, (0, padded - samples))

        spec = self._to_subbands(mix)
        first = self.first_conv(spec)
        # The U-Net runs on (batch, channels, time, freq): the TDF linears act on freq.
        feats = first.transpose(-1, -2)
        skips = []
        for level in self.encoder_blocks:
            feats = level.tfc_tdf(feats)
            skips.append(feats)
            feats = level.downscale(feats)
        feats = self.bottleneck_block(feats)
        for level in self.decoder_blocks:
            feats = level.tfc_tdf(torch.cat([level.upscale(feats), skips.pop()], dim=1))
        feats = feats.transpose(-1, -2) * first
        feats = self.final_conv(torch.cat([spec.to(feats.dtype), feats], dim=1))

        out = self._from_subbands(feats, padded)
        return out[..., :samples] if padded != samples else out


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    section = config.get(name) if isinstance(config, dict) else None
    if not isinstance(section, dict):
        raise ModelError(
            f"MDX23C config needs an '{name}' section (the whole MSST YAML: audio, model, training)"
        )
    return section


def _required(section: dict[str, Any], section_name: str, key: str) -> Any:
    if key not in section:
        raise ModelError(f"MDX23C config is missing '{section_name}.{key}' (see the MSST mdx23c YAMLs)")
    return section[key]


def stem_names(config: dict[str, Any]) -> list[str]:
    """Stems the model outputs: [target_instrument] if set, else training.instruments."""
    training = _section(config, "training")
    target = training.get("target_instrument")
    if target:
        return [target]
    return list(_required(training, "training", "instruments"))


def build(config: dict[str, Any]) -> MDX23C:
    """MDX23C from a whole MSST config (audio, model and training sections)."""
    audio = _section(config, "audio")
    model = _section(config, "model")
    return MDX23C(
        stems=stem_names(config),
        audio_channels=int(_required(audio, "audio", "num_channels")),
        n_fft=int(_required(audio, "audio", "n_fft")),
        hop_length=int(_required(audio, "audio", "hop_length")),
        dim_f=int(_required(audio, "audio", "dim_f")),
        **{key: _required(model, "model", key) for key in (
            "num_subbands", "num_scales", "scale", "num_blocks_per_scale",
            "num_channels", "growth", "bottleneck_factor", "norm", "act",
        )},
    )
