"""BS-RoFormer and Mel-Band RoFormer: band-split transformers that estimate complex STFT masks.

Both models (Lu et al. 2023; Wang et al. 2023) as published in ZFTurbo's
Music-Source-Separation-Training (MSST), rewritten so that their checkpoints load with no key
renaming and give the same numbers. The shared pipeline:

1. STFT of every channel (Hann window, centred frames), always in float32 or wider, outside
   autocast. Stereo is folded into the frequency axis: the bin order is (frequency, channel),
   so bin f of the left channel is followed by bin f of the right one.
2. The bins are grouped into bands. BS-RoFormer uses explicit, contiguous band widths
   (`freqs_per_bands`). Mel-Band RoFormer uses the supports of a Slaney mel filterbank
   (sfsep.models.melscale): neighbouring bands overlap, so a bin may appear in two bands.
   Each band's (bins x channels x re/im) vector goes through RMSNorm and a Linear to `dim`.
3. `depth` blocks of axial attention over the (time, band) grid: a transformer along time for
   each band, then one along the bands for each frame. Attention has rotary position
   embeddings (one table for time and one for bands, shared by all blocks) and a sigmoid gate
   per head; the feed-forward is RMSNorm, Linear(dim, 4 dim), GELU, Linear(4 dim, dim).
   BS-RoFormer ends with one RMSNorm; Mel-Band RoFormer normalises the output of every
   transformer instead.
4. One mask estimator per stem: per band, an MLP (tanh hidden layers) followed by a GLU gives
   the complex mask of that band's bins. BS-RoFormer's MLP has `mask_estimator_depth - 1`
   hidden layers, Mel-Band RoFormer's has `mask_estimator_depth` (as in the reference code).
   Mel-Band RoFormer averages the masks of the bands that share a bin.
5. Masked STFT, DC bin set to zero (`zero_dc`), inverse STFT.

Output contract: `forward(mix (B, C, T)) -> (B, S, C, T)`, with a stem axis even for one stem.
The reference Mel-Band RoFormer returns hop * floor(T / hop) samples (its inverse STFT gets no
length) and squeezes a single stem; here the inverse STFT is asked for T samples, so the first
hop * floor(T / hop) samples are exactly the reference's and the remaining < hop samples are the
ordinary overlap-add of the last frames instead of missing. MSST's chunked inference only ever
feeds chunks whose length is a multiple of the hop, where the two agree everywhere.

Not supported (no published checkpoint uses them; building such a config raises ModelError):
linear-attention layers (`linear_transformer_depth` > 0), `skip_connection`, `use_pope`.
Options that only matter for training (multi-resolution STFT loss, gradient checkpointing)
are accepted and ignored; the attention kernel is always F.scaled_dot_product_attention.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .melscale import mel_band_membership

# BS-RoFormer's band widths when a config gives none: 62 bands over the 1025 bins of a
# 2048-point STFT (24 x 2, 12 x 4, 8 x 12, 8 x 24, 8 x 48, 128, 129).
DEFAULT_FREQS_PER_BANDS: tuple[int, ...] = (
    (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)
)

# Model keys of MSST configs that do not change inference: the training loss, gradient
# checkpointing, and the choice of attention kernel.
_TRAINING_ONLY_KEYS = frozenset(
    {
        "dim_freqs_in",
        "flash_attn",
        "sage_attention",
        "use_torch_checkpoint",
        "multi_stft_resolution_loss_weight",
        "multi_stft_resolutions_window_sizes",
        "multi_stft_hop_size",
        "multi_stft_normalized",
        "match_input_audio_length",
    }
)

# Defaults of the reference constructors for everything a config may omit.
_COMMON_DEFAULTS: dict[str, Any] = {
    "stereo": False,
    "num_stems": 1,
    "time_transformer_depth": 2,
    "freq_transformer_depth": 2,
    "linear_transformer_depth": 0,
    "dim_head": 64,
    "heads": 8,
    "stft_n_fft": 2048,
    "stft_hop_length": 512,
    "stft_win_length": 2048,
    "stft_normalized": False,
    "zero_dc": True,
    "mlp_expansion_factor": 4,
    "skip_connection": False,
    "use_pope": False,
}
_BS_DEFAULTS: dict[str, Any] = {
    **_COMMON_DEFAULTS,
    "freqs_per_bands": DEFAULT_FREQS_PER_BANDS,
    "attn_dropout": 0.0,
    "ff_dropout": 0.0,
    "mask_estimator_depth": 2,
}
_MEL_DEFAULTS: dict[str, Any] = {
    **_COMMON_DEFAULTS,
    "num_bands": 60,
    "sample_rate": 44100,
    "attn_dropout": 0.1,
    "ff_dropout": 0.1,
    "mask_estimator_depth": 1,
}


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / ||x|| * sqrt(dim) * gamma (L2 normalisation, clamped at 1e-12, as F.normalize does)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with interleaved pairs.

    Feature pairs (2i, 2i+1) of a query or key at position p are rotated by the angle
    p * freqs[i], freqs[i] = 10000 ** (-2i / dim). `freqs` is a (frozen) parameter because the
    published checkpoints store it under every attention layer that uses the table.
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        exponents = torch.arange(0, dim, 2)[: dim // 2].float() / dim
        self.freqs = nn.Parameter(1.0 / (theta**exponents), requires_grad=False)

    def rotate(self, x: torch.Tensor, seq_dim: int = -2) -> torch.Tensor:
        """Rotate x (..., dim) by the position of each vector along axis `seq_dim`.

        Each pair is treated as a complex number a + ib and multiplied by exp(i p freqs[i]),
        which is the rotation (a cos - b sin, b cos + a sin) in one pass over x.
        """
        seq_dim = seq_dim % x.ndim
        length = x.shape[seq_dim]
        positions = torch.arange(length, device=x.device, dtype=self.freqs.dtype)
        angles = torch.outer(positions, self.freqs)  # (length, dim / 2)
        turns = torch.complex(angles.cos(), angles.sin())
        turns = turns.view([length if axis == seq_dim else 1 for axis in range(x.ndim - 1)] + [-1])
        # Half precision has no usable complex type: rotate in float32, as the reference does.
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        # A complex view needs unit stride inside each pair and even strides elsewhere.
        strides_ok = work.stride(-1) == 1 and all(step % 2 == 0 for step in work.stride()[:-1])
        if not strides_ok or work.storage_offset() % 2:
            work = work.contiguous()
        pairs = torch.view_as_complex(work.unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs * turns).flatten(-2).to(x.dtype)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with rotary embeddings and a sigmoid gate per head."""

    def __init__(
        self, dim: int, heads: int, dim_head: int, dropout: float, rotary_embed: RotaryEmbedding
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = dropout
        inner_dim = heads * dim_head
        self.rotary_embed = rotary_embed
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * inner_dim, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim, bias=False), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        x = self.norm(x)
        # (batch, length, 3 * heads * dim_head) -> (batch, length, 3, heads, dim_head), a view;
        # queries and keys are rotated together, and attention reads (batch, heads, length,
        # dim_head) strided views, so nothing is transposed in memory.
        qkv = self.to_qkv(x).view(batch, length, 3, self.heads, self.dim_head)
        query_key = self.rotary_embed.rotate(qkv[:, :, :2], seq_dim=1)
        out = F.scaled_dot_product_attention(
            query_key[:, :, 0].transpose(1, 2),
            query_key[:, :, 1].transpose(1, 2),
            qkv[:, :, 2].transpose(1, 2),
            dropout_p=self.dropout if self.training else 0.0,
        )
        gates = self.to_gates(x).sigmoid()  # (batch, length, heads)
        out = out.transpose(1, 2) * gates.unsqueeze(-1)  # (batch, length, heads, dim_head)
        return self.to_out(out.reshape(batch, length, self.heads * self.dim_head))


class FeedForward(nn.Module):
    """RMSNorm, Linear(dim, mult * dim), GELU, Linear back (dropout after each Linear)."""

    def __init__(self, dim: int, dropout: float, mult: int = 4) -> None:
        super().__init__()
        hidden = dim * mult
        self.net = nn.Sequential(
            RMSNorm(dim),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """`depth` residual (attention, feed-forward) pairs, optionally followed by an RMSNorm."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        attn_dropout: float,
        ff_dropout: float,
        rotary_embed: RotaryEmbedding,
        norm_output: bool,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Attention(dim, heads, dim_head, attn_dropout, rotary_embed),
                    FeedForward(dim, ff_dropout),
                ]
            )
            for _ in range(depth)
        )
        self.norm = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Residual sums go into the sublayer's fresh output (no new allocation); autograd allows
        # it because a Linear's backward does not need its own output.
        for attention, feed_forward in self.layers:
            x = attention(x).add_(x)
            x = feed_forward(x).add_(x)
        return self.norm(x)


class BandSplit(nn.Module):
    """Cuts the last axis into bands of the given widths; each band -> RMSNorm -> Linear(dim).

    (batch, frames, sum(widths)) -> (batch, frames, bands, dim).
    """

    def __init__(self, dim: int, band_widths: tuple[int, ...]) -> None:
        super().__init__()
        self.band_widths = band_widths
        self.to_features = nn.ModuleList(
            nn.Sequential(RMSNorm(width), nn.Linear(width, dim)) for width in band_widths
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = x.split(self.band_widths, dim=-1)
        return torch.stack(
            [to_feature(band) for band, to_feature in zip(bands, self.to_features)], dim=-2
        )


class MaskEstimator(nn.Module):
    """Per band: MLP (tanh between Linears) to 2 * width values, then a GLU to `width` values.

    (batch, frames, bands, dim) -> (batch, frames, sum(widths)).
    """

    def __init__(
        self, dim: int, band_widths: tuple[int, ...], hidden_dim: int, hidden_layers: int
    ) -> None:
        super().__init__()
        self.to_freqs = nn.ModuleList(
            nn.Sequential(_tanh_mlp(dim, 2 * width, hidden_dim, hidden_layers), nn.GLU(dim=-1))
            for width in band_widths
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = x.unbind(dim=-2)
        return torch.cat([to_freq(band) for band, to_freq in zip(bands, self.to_freqs)], dim=-1)


def _tanh_mlp(dim_in: int, dim_out: int, hidden_dim: int, hidden_layers: int) -> nn.Sequential:
    sizes = [dim_in] + [hidden_dim] * hidden_layers + [dim_out]
    layers: list[nn.Module] = []
    for index, (size_in, size_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if index > 0:
            layers.append(nn.Tanh())
        layers.append(nn.Linear(size_in, size_out))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# The two models
# ---------------------------------------------------------------------------------------------


class _BandRoformer(nn.Module):
    """What BS-RoFormer and Mel-Band RoFormer share: STFT, axial transformer, masking, iSTFT.

    Subclasses define the bands: `_band_inputs` turns the folded spectrogram into the band-split
    input, `_bin_masks` turns the estimators' band masks back into one mask per bin.
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        stereo: bool,
        num_stems: int,
        time_transformer_depth: int,
        freq_transformer_depth: int,
        dim_head: int,
        heads: int,
        attn_dropout: float,
        ff_dropout: float,
        stft_n_fft: int,
        stft_hop_length: int,
        stft_win_length: int,
        stft_normalized: bool,
        zero_dc: bool,
        mlp_expansion_factor: int,
        band_widths: tuple[int, ...],
        per_transformer_norm: bool,
        mask_hidden_layers: int,
    ) -> None:
        super().__init__()
        self.audio_channels = 2 if stereo else 1
        self.num_stems = num_stems
        # Names of the output stems, in order; the builders set them from the config.
        self.stems: tuple[str, ...] = tuple(f"stem{index}" for index in range(num_stems))
        self.n_fft = stft_n_fft
        self.hop_length = stft_hop_length
        self.win_length = stft_win_length
        self.stft_normalized = stft_normalized
        self.zero_dc = zero_dc

        time_rotary = RotaryEmbedding(dim_head)
        freq_rotary = RotaryEmbedding(dim_head)

        def transformer(transformer_depth: int, rotary: RotaryEmbedding) -> Transformer:
            return Transformer(
                dim,
                transformer_depth,
                heads,
                dim_head,
                attn_dropout,
                ff_dropout,
                rotary,
                norm_output=per_transformer_norm,
            )

        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    transformer(time_transformer_depth, time_rotary),
                    transformer(freq_transformer_depth, freq_rotary),
                ]
            )
            for _ in range(depth)
        )
        # BS-RoFormer normalises once after the last block instead of after every transformer.
        self.final_norm = None if per_transformer_norm else RMSNorm(dim)
        self.band_split = BandSplit(dim, band_widths)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, band_widths, dim * mlp_expansion_factor, mask_hidden_layers)
            for _ in range(num_stems)
        )

    # -- hooks -----------------------------------------------------------------------------

    def _band_inputs(self, folded: torch.Tensor) -> torch.Tensor:
        """(B, frames, bins * channels, 2) -> (B, frames, sum of band widths)."""
        raise NotImplementedError

    def _bin_masks(self, band_masks: torch.Tensor) -> torch.Tensor:
        """(B, S, frames, sum of band widths) -> (B, S, frames, bins * channels, 2)."""
        raise NotImplementedError

    # -- forward ---------------------------------------------------------------------------

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Waveforms (B, C, T) -> stems (B, S, C, T)."""
        if mix.ndim != 3 or mix.shape[1] != self.audio_channels:
            raise ModelError(
                f"{type(self).__name__} expects audio shaped (batch, {self.audio_channels}, "
                f"samples), got {tuple(mix.shape)}; convert the input to "
                f"{'stereo' if self.audio_channels == 2 else 'mono'} first"
            )
        batch, channels, length = mix.shape
        with torch.autocast(mix.device.type, enabled=False):
            audio = mix.reshape(batch * channels, length)
            audio = audio.to(torch.promote_types(audio.dtype, torch.float32))
            window = torch.hann_window(self.win_length, device=audio.device, dtype=audio.dtype)
            spec = torch.stft(
                audio,
                self.n_fft,
                self.hop_length,
                self.win_length,
                window,
                normalized=self.stft_normalized,
                return_complex=True,
            )
        num_bins, num_frames = spec.shape[-2:]
        # Fold channels into frequency: (B, frames, bins, channels, 2) -> (B, frames, bins*C, 2).
        folded = torch.view_as_real(spec).view(batch, channels, num_bins, num_frames, 2)
        folded = folded.permute(0, 3, 2, 1, 4).reshape(batch, num_frames, num_bins * channels, 2)

        x = self.band_split(self._band_inputs(folded))
        x = self._axial_transformers(x)
        band_masks = torch.stack([estimator(x) for estimator in self.mask_estimators], dim=1)

        with torch.autocast(mix.device.type, enabled=False):
            masks = self._bin_masks(band_masks.to(folded.dtype))
            # (B, S, frames, bins, C, 2) -> complex (B, S, C, bins, frames); a strided view.
            masks = masks.view(batch, self.num_stems, num_frames, num_bins, channels, 2)
            masks = torch.view_as_complex(masks.permute(0, 1, 4, 3, 2, 5))
            stems_spec = spec.view(batch, 1, channels, num_bins, num_frames) * masks
            if self.zero_dc:
                stems_spec[..., 0, :] = 0
            stems = torch.istft(
                stems_spec.reshape(-1, num_bins, num_frames),
                self.n_fft,
                self.hop_length,
                self.win_length,
                window,
                normalized=self.stft_normalized,
                length=length,
            )
        return stems.view(batch, self.num_stems, channels, length)

    def _axial_transformers(self, x: torch.Tensor) -> torch.Tensor:
        """(B, frames, bands, dim): attention along frames per band, then along bands per frame."""
        batch, frames, bands, dim = x.shape
        for time_transformer, freq_transformer in self.layers:
            x = x.transpose(1, 2).reshape(batch * bands, frames, dim)
            x = time_transformer(x)
            x = x.view(batch, bands, frames, dim).transpose(1, 2)
            x = x.reshape(batch * frames, bands, dim)
            x = freq_transformer(x)
            x = x.view(batch, frames, bands, dim)
        return x if self.final_norm is None else self.final_norm(x)


class BSRoformer(_BandRoformer):
    """BS-RoFormer: contiguous bands of explicit widths, one RMSNorm after the last block."""

    def __init__(self, *, dim: int, freqs_per_bands: tuple[int, ...], mask_estimator_depth: int,
                 **shared: Any) -> None:
        channels = 2 if shared["stereo"] else 1
        num_bins = shared["stft_n_fft"] // 2 + 1
        if sum(freqs_per_bands) != num_bins:
            raise ModelError(
                f"bs_roformer: freqs_per_bands sums to {sum(freqs_per_bands)} but an STFT of "
                f"stft_n_fft={shared['stft_n_fft']} has {num_bins} bins; fix model.freqs_per_bands"
            )
        band_widths = tuple(2 * channels * width for width in freqs_per_bands)
        super().__init__(
            dim=dim,
            band_widths=band_widths,
            per_transformer_norm=False,
            mask_hidden_layers=mask_estimator_depth - 1,
            **shared,
        )
        self.freqs_per_bands = tuple(freqs_per_bands)

    def _band_inputs(self, folded: torch.Tensor) -> torch.Tensor:
        return folded.flatten(-2)

    def _bin_masks(self, band_masks: torch.Tensor) -> torch.Tensor:
        return band_masks.unflatten(-1, (-1, 2))


class MelBandRoformer(_BandRoformer):
    """Mel-Band RoFormer: overlapping mel bands, a normalised output for every transformer."""

    def __init__(self, *, dim: int, num_bands: int, sample_rate: int, mask_estimator_depth: int,
                 **shared: Any) -> None:
        channels = 2 if shared["stereo"] else 1
        try:
            membership = mel_band_membership(sample_rate, shared["stft_n_fft"], num_bands)
        except ValueError as exc:
            raise ModelError(f"mel_band_roformer: {exc}; use fewer model.num_bands") from exc
        bins_per_band = membership.sum(axis=1)
        band_widths = tuple(int(2 * channels * count) for count in bins_per_band)
        super().__init__(
            dim=dim,
            band_widths=band_widths,
            per_transformer_norm=True,
            mask_hidden_layers=mask_estimator_depth,
            **shared,
        )
        self.bins_per_band = tuple(int(count) for count in bins_per_band)

        # Bins of every band, band after band, in the folded (bin, channel) numbering.
        band_bins = np.concatenate([np.flatnonzero(row) for row in membership])
        folded_bins = (band_bins[:, None] * channels + np.arange(channels)).reshape(-1)
        # For the way back, each folded bin lists the positions (in band order) holding it,
        # padded with its first position at weight 0; weights 1 / (number of bands holding it).
        num_folded_bins = membership.shape[1] * channels
        covering = [np.flatnonzero(folded_bins == index) for index in range(num_folded_bins)]
        max_cover = max(len(positions) for positions in covering)
        sources = np.zeros((max_cover, len(covering)), dtype=np.int64)
        weights = np.zeros((max_cover, len(covering)), dtype=np.float32)
        for index, positions in enumerate(covering):
            sources[:, index] = positions[0]
            sources[: len(positions), index] = positions
            weights[: len(positions), index] = 1.0 / len(positions)
        self.register_buffer("band_bin_index", torch.from_numpy(folded_bins), persistent=False)
        self.register_buffer("mask_source_index", torch.from_numpy(sources), persistent=False)
        self.register_buffer("mask_source_weight", torch.from_numpy(weights), persistent=False)

    def _band_inputs(self, folded: torch.Tensor) -> torch.Tensor:
        return folded.index_select(2, self.band_bin_index).flatten(-2)

    def _bin_masks(self, band_masks: torch.Tensor) -> torch.Tensor:
        band_masks = band_masks.unflatten(-1, (-1, 2))  # (B, S, frames, band bins, 2)
        weights = self.mask_source_weight.to(band_masks.dtype)
        masks = band_masks.index_select(3, self.mask_source_index[0]) * weights[0, :, None]
        for sources, weight in zip(self.mask_source_index[1:], weights[1:]):
            masks = masks + band_masks.index_select(3, sources) * weight[:, None]
        return masks


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------


def _model_settings(
    config: dict[str, Any], family: str, defaults: dict[str, Any]
) -> dict[str, Any]:
    """The `model` section of an MSST config, completed with the reference defaults."""
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ModelError(
            f"{family}: the config must be an MSST config with a 'model' section "
            "(a mapping of the model's constructor arguments)"
        )
    given = {key: value for key, value in config["model"].items() if key not in _TRAINING_ONLY_KEYS}
    known = set(defaults) | {"dim", "depth"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ModelError(
            f"{family}: unknown model option(s) {unknown} in the config's 'model' section"
        )
    missing = sorted({"dim", "depth"} - set(given))
    if missing:
        raise ModelError(f"{family}: the config's 'model' section lacks {missing}")
    settings = {**defaults, **given}
    if settings.pop("linear_transformer_depth"):
        raise ModelError(f"{family}: linear_transformer_depth > 0 is not supported by sfsep")
    if settings.pop("skip_connection"):
        raise ModelError(f"{family}: skip_connection is not supported by sfsep")
    if settings.pop("use_pope"):
        raise ModelError(f"{family}: use_pope is not supported by sfsep")
    return settings


def _stem_names(config: dict[str, Any], num_stems: int, family: str) -> tuple[str, ...]:
    """Output stem names as MSST orders them: (target_instrument,) if set, else instruments."""
    training = config.get("training") or {}
    target = training.get("target_instrument")
    names = (target,) if target else tuple(training.get("instruments") or ())
    if not names:
        return tuple(f"stem{index}" for index in range(num_stems))
    if len(names) != num_stems:
        raise ModelError(
            f"{family}: model.num_stems is {num_stems} but the training section names "
            f"{len(names)} output stem(s) {list(names)}; set training.target_instrument or "
            "training.instruments to match"
        )
    return tuple(str(name) for name in names)


def build_bs_roformer(config: dict[str, Any]) -> BSRoformer:
    """BS-RoFormer from a whole MSST config (uses its `model` and `training` sections)."""
    settings = _model_settings(config, "bs_roformer", _BS_DEFAULTS)
    settings["freqs_per_bands"] = tuple(int(width) for width in settings["freqs_per_bands"])
    stems = _stem_names(config, settings["num_stems"], "bs_roformer")
    model = BSRoformer(**settings)
    model.stems = stems
    return model


def build_mel_band_roformer(config: dict[str, Any]) -> MelBandRoformer:
    """Mel-Band RoFormer from a whole MSST config (uses its `model` and `training` sections)."""
    settings = _model_settings(config, "mel_band_roformer", _MEL_DEFAULTS)
    stems = _stem_names(config, settings["num_stems"], "mel_band_roformer")
    model = MelBandRoformer(**settings)
    model.stems = stems
    return model


__all__ = [
    "BSRoformer",
    "MelBandRoformer",
    "RMSNorm",
    "RotaryEmbedding",
    "build_bs_roformer",
    "build_mel_band_roformer",
]
