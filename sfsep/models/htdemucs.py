"""HT-Demucs (Hybrid Transformer Demucs, demucs v4) as a plain nn.Module.

Owns: the network that loads the published `htdemucs`, `htdemucs_ft` and `htdemucs_6s` weights
(and MSST's `model_type: htdemucs` checkpoints) with no key renaming, and `build_htdemucs`, which
turns either an MSST config or a demucs package's constructor kwargs into that module.

The network in one paragraph. A stereo mixture goes down two parallel U-Nets. The frequency
branch works on a normalised STFT (n_fft = `nfft`, hop = nfft/4) whose complex values are laid
out as channels ("complex as channels", CaC): [ch0.re, ch0.im, ch1.re, ch1.im]. Each of its
encoder layers is a strided convolution over the frequency axis only (kernel [8, 1], stride
[4, 1]), followed by GELU, a small residual branch of dilated convolutions along time (DConv),
and a 1x1 "rewrite" convolution with a GLU. The time branch does the same with 1-D
convolutions on the waveform. At the bottom, both branches are projected to `bottom_channels`
and go through a transformer whose layers alternate between self-attention within a branch and
cross-attention between the branches. The decoders mirror the encoders (the frequency
decoder's rewrite is a 3x3 convolution), the frequency output is turned back into a waveform
with the inverse STFT, and the two waveforms are summed.

Which lengths it accepts. The demucs checkpoints carry `segment` (7.8 s for the v4 models); with
`use_train_segment` (the demucs class default) an input shorter than the training length is
zero-padded on the right to that length and the output is cut back. Longer inputs are
processed at their own length (demucs itself would fail; MSST runs these weights at 11 s). MSST
builds the class with `use_train_segment` off, so nothing is padded.

Only the options the published models use are implemented: CaC spectrograms, `t_emb = "sin"`,
dense attention, no band splitting (`multi_freqs`), and no merge of the two branches inside the
U-Net (which only happens when the frequency axis shrinks to the kernel size). Other values
raise a ModelError that names the option.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ModelError

# ---------------------------------------------------------------------------------------------
# Configuration


# Constructor arguments of demucs' HTDemucs (plus MSST's `num_subbands`) and their defaults.
# A demucs package stores the kwargs it was built with; build_htdemucs fills the rest from here.
HTDEMUCS_DEFAULTS: dict[str, Any] = {
    "audio_channels": 2,
    "channels": 48,
    "channels_time": None,
    "growth": 2,
    "num_subbands": 1,
    "nfft": 4096,
    "wiener_iters": 0,
    "end_iters": 0,
    "wiener_residual": False,
    "cac": True,
    "depth": 4,
    "rewrite": True,
    "multi_freqs": None,
    "multi_freqs_depth": 3,
    "freq_emb": 0.2,
    "emb_scale": 10,
    "emb_smooth": True,
    "kernel_size": 8,
    "time_stride": 2,
    "stride": 4,
    "context": 1,
    "context_enc": 0,
    "norm_starts": 4,
    "norm_groups": 4,
    "dconv_mode": 1,
    "dconv_depth": 2,
    "dconv_comp": 8,
    "dconv_init": 1e-3,
    "bottom_channels": 0,
    "t_layers": 5,
    "t_emb": "sin",
    "t_hidden_scale": 4.0,
    "t_heads": 8,
    "t_dropout": 0.0,
    "t_max_positions": 10000,
    "t_norm_in": True,
    "t_norm_in_group": False,
    "t_group_norm": False,
    "t_norm_first": True,
    "t_norm_out": True,
    "t_max_period": 10000.0,
    "t_weight_decay": 0.0,
    "t_lr": None,
    "t_layer_scale": True,
    "t_gelu": True,
    "t_weight_pos_embed": 1.0,
    "t_sin_random_shift": 0,
    "t_cape_mean_normalize": True,
    "t_cape_augment": True,
    "t_cape_glob_loc_scale": [5000.0, 1.0, 1.4],
    "t_sparse_self_attn": False,
    "t_sparse_cross_attn": False,
    "t_mask_type": "diag",
    "t_mask_random_seed": 42,
    "t_sparse_attn_window": 500,
    "t_global_window": 100,
    "t_sparsity": 0.95,
    "t_auto_sparsity": False,
    "t_cross_first": False,
    "rescale": 0.1,
    "samplerate": 44100,
    "segment": 10,
    "use_train_segment": True,
}


def parse_segment(value: Any) -> Fraction:
    """A segment length in seconds as an exact Fraction: accepts 7.8, 11, '39/5' or Fraction."""
    try:
        if isinstance(value, Fraction):
            return value
        if isinstance(value, str):
            return Fraction(value.strip())
        if isinstance(value, float):
            # 7.8 -> 39/5, not the binary expansion of 7.8.
            return Fraction(value).limit_denominator(1_000_000)
        return Fraction(value)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ModelError(
            f"htdemucs config: segment {value!r} is not a number of seconds (e.g. 7.8 or '39/5')"
        ) from exc


def htdemucs_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """Full constructor kwargs from an MSST config or a demucs package's kwargs.

    MSST config: a dict with an `htdemucs` section (the network) and a `training` section
    (`instruments`, `channels`, `samplerate`, `segment`); MSST's class does not pad to the
    training length, so `use_train_segment` defaults to False there. demucs kwargs: a flat dict
    with `sources`; `use_train_segment` defaults to True as in demucs. Keys starting with '_'
    are notes and are ignored; other unknown keys are dropped with a warning (as demucs'
    `load_model` does).
    """
    if not isinstance(config, dict):
        raise ModelError(f"htdemucs config must be a dict, got {type(config).__name__}")
    if "htdemucs" in config:
        section = dict(config["htdemucs"] or {})
        training = config.get("training") or {}
        if "instruments" not in training:
            raise ModelError("htdemucs MSST config: `training.instruments` is missing")
        kwargs = {
            "sources": list(training["instruments"]),
            "audio_channels": training.get("channels", 2),
            "samplerate": training.get("samplerate", 44100),
            "segment": training.get("segment", 10),
            "use_train_segment": False,
        }
        kwargs.update(section)
    elif "sources" in config:
        kwargs = dict(config)
    else:
        raise ModelError(
            "htdemucs config: expected an MSST config (with `htdemucs` and `training` sections) "
            "or demucs constructor kwargs (with `sources`)"
        )
    full: dict[str, Any] = dict(HTDEMUCS_DEFAULTS)
    unknown = []
    for key, value in kwargs.items():
        if key.startswith("_"):
            continue
        if key != "sources" and key not in HTDEMUCS_DEFAULTS:
            unknown.append(key)
            continue
        full[key] = value
    if unknown:
        warnings.warn(f"htdemucs config: ignoring unknown options {sorted(unknown)}", stacklevel=3)
    full["sources"] = [str(name) for name in kwargs["sources"]]
    full["segment"] = parse_segment(full["segment"])
    _check_supported(full)
    return full


def _check_supported(kwargs: dict[str, Any]) -> None:
    """Refuse options that no published model uses and that this module does not implement."""
    def refuse(option: str, value: Any, hint: str) -> None:
        raise ModelError(f"htdemucs config: {option}={value!r} is not supported ({hint})")

    if not kwargs["cac"]:
        refuse("cac", kwargs["cac"], "only complex-as-channels models are implemented")
    if kwargs["multi_freqs"]:
        refuse("multi_freqs", kwargs["multi_freqs"], "frequency band splitting is not implemented")
    if kwargs["t_layers"] > 0:
        if kwargs["t_emb"] != "sin":
            refuse("t_emb", kwargs["t_emb"], "only 'sin' positional embeddings are implemented")
        for option in ("t_sparse_self_attn", "t_sparse_cross_attn", "t_auto_sparsity",
                       "t_norm_in_group", "t_group_norm"):
            if kwargs[option]:
                refuse(option, kwargs[option], "set it to false")
        if not kwargs["t_norm_first"]:
            refuse("t_norm_first", False, "only pre-norm transformer layers are implemented")
        if kwargs["t_sin_random_shift"]:
            refuse("t_sin_random_shift", kwargs["t_sin_random_shift"], "it is a training option; use 0")
    if kwargs["num_subbands"] < 1:
        refuse("num_subbands", kwargs["num_subbands"], "use 1 or more")
    freqs = kwargs["nfft"] // 2
    for _ in range(kwargs["depth"]):
        if freqs <= kwargs["kernel_size"]:
            refuse("depth", kwargs["depth"],
                   "the frequency axis would shrink to the kernel size and the branches would "
                   "merge, which no published HT-Demucs does")
        freqs //= kwargs["stride"]


# ---------------------------------------------------------------------------------------------
# Building blocks


class LayerScale(nn.Module):
    """Learnt per-channel gain on a residual branch (`scale`, initialised small)."""

    def __init__(self, channels: int, init: float, channel_last: bool) -> None:
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_last:
            return self.scale * x
        return self.scale[:, None] * x


class DConv(nn.Module):
    """Residual branch of dilated 1-D convolutions along time, on (batch, channels, time).

    Each of `depth` layers: conv k=3 (dilation 2^d) down to channels/compress -> GroupNorm(1)
    -> GELU -> 1x1 conv up to 2*channels -> GroupNorm(1) -> GLU -> LayerScale, added to its
    input. The Sequential indices (0, 1, 3, 4, 6) are the state-dict names.
    """

    def __init__(self, channels: int, compress: float, depth: int, init: float) -> None:
        super().__init__()
        hidden = int(channels / compress)
        self.layers = nn.ModuleList()
        for index in range(depth):
            dilation = 2 ** index
            self.layers.append(nn.Sequential(
                nn.Conv1d(channels, hidden, 3, dilation=dilation, padding=dilation),
                nn.GroupNorm(1, hidden),
                nn.GELU(),
                nn.Conv1d(hidden, 2 * channels, 1),
                nn.GroupNorm(1, 2 * channels),
                nn.GLU(dim=1),
                LayerScale(channels, init, channel_last=False),
            ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


def _run_dconv_per_frequency(dconv: DConv, x: torch.Tensor) -> torch.Tensor:
    """Apply a DConv to every frequency row of (B, C, F, T) independently."""
    batch, channels, freqs, frames = x.shape
    rows = x.permute(0, 2, 1, 3).reshape(batch * freqs, channels, frames)
    rows = dconv(rows)
    return rows.view(batch, freqs, channels, frames).permute(0, 2, 1, 3)


def _norm_or_identity(use_norm: bool, groups: int, channels: int) -> nn.Module:
    return nn.GroupNorm(groups, channels) if use_norm else nn.Identity()


class EncoderLayer(nn.Module):
    """One encoder level: strided conv -> GELU -> DConv -> rewrite conv + GLU.

    Frequency layers (`freq`) are 2-D with kernels [k, 1] (they stride the frequency axis only);
    time layers are 1-D and first right-pad their input to a multiple of the stride.
    """

    def __init__(self, chin: int, chout: int, *, kernel_size: int, stride: int, freq: bool,
                 norm: bool, norm_groups: int, rewrite: bool, context: int,
                 dconv: bool, dconv_kw: dict[str, Any]) -> None:
        super().__init__()
        self.freq = freq
        self.stride = stride
        pad = kernel_size // 4
        if freq:
            self.conv = nn.Conv2d(chin, chout, (kernel_size, 1), (stride, 1), (pad, 0))
            conv_class = nn.Conv2d
        else:
            self.conv = nn.Conv1d(chin, chout, kernel_size, stride, pad)
            conv_class = nn.Conv1d
        self.norm1 = _norm_or_identity(norm, norm_groups, chout)
        self.rewrite = None
        if rewrite:
            # With an int kernel a Conv2d rewrite is square (context 0 -> 1x1).
            self.rewrite = conv_class(chout, 2 * chout, 1 + 2 * context, 1, context)
            self.norm2 = _norm_or_identity(norm, norm_groups, 2 * chout)
        self.dconv = DConv(chout, **dconv_kw) if dconv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.freq:
            remainder = x.shape[-1] % self.stride
            if remainder:
                x = F.pad(x, (0, self.stride - remainder))
        y = F.gelu(self.norm1(self.conv(x)))
        if self.dconv is not None:
            y = _run_dconv_per_frequency(self.dconv, y) if self.freq else self.dconv(y)
        if self.rewrite is not None:
            y = F.glu(self.norm2(self.rewrite(y)), dim=1)
        return y


class DecoderLayer(nn.Module):
    """One decoder level: add skip -> rewrite conv + GLU -> DConv -> transposed conv -> crop.

    The frequency rewrite has a 3x3 kernel (context 1 over both time and frequency). The
    transposed convolution's output is cropped by kernel_size/4 on each side of the frequency
    axis, or to the encoder's input length on the time axis. GELU follows, except on the last
    (outermost) layer.
    """

    def __init__(self, chin: int, chout: int, *, last: bool, kernel_size: int, stride: int,
                 freq: bool, norm: bool, norm_groups: int, rewrite: bool, context: int,
                 dconv: bool, dconv_kw: dict[str, Any]) -> None:
        super().__init__()
        self.freq = freq
        self.last = last
        self.pad = kernel_size // 4
        if freq:
            self.conv_tr = nn.ConvTranspose2d(chin, chout, (kernel_size, 1), (stride, 1))
            conv_class = nn.Conv2d
        else:
            self.conv_tr = nn.ConvTranspose1d(chin, chout, kernel_size, stride)
            conv_class = nn.Conv1d
        self.norm2 = _norm_or_identity(norm, norm_groups, chout)
        self.rewrite = None
        if rewrite:
            self.rewrite = conv_class(chin, 2 * chin, 1 + 2 * context, 1, context)
            self.norm1 = _norm_or_identity(norm, norm_groups, 2 * chin)
        self.dconv = DConv(chin, **dconv_kw) if dconv else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor, length: int) -> torch.Tensor:
        y = x + skip
        if self.rewrite is not None:
            y = F.glu(self.norm1(self.rewrite(y)), dim=1)
        if self.dconv is not None:
            y = _run_dconv_per_frequency(self.dconv, y) if self.freq else self.dconv(y)
        z = self.norm2(self.conv_tr(y))
        if self.freq:
            z = z[..., self.pad:z.shape[-2] - self.pad, :]
        else:
            z = z[..., self.pad:self.pad + length]
        if not self.last:
            z = F.gelu(z)
        return z


class FrequencyEmbedding(nn.Module):
    """Learnt embedding of the frequency row, added after the first frequency encoder.

    The weight is stored divided by `scale` (a learning-rate trick); its effective value is
    `embedding.weight * scale`.
    """

    def __init__(self, num_rows: int, channels: int, scale: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_rows, channels)
        self.scale = scale

    def forward(self, num_rows: int) -> torch.Tensor:
        """(channels, rows) effective embedding of the first `num_rows` rows."""
        return (self.embedding.weight[:num_rows] * self.scale).t()


# ---------------------------------------------------------------------------------------------
# Cross-domain transformer


def sin_embedding_1d(length: int, dim: int, max_period: float,
                     device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(length, dim) positions as [cos(phase), sin(phase)], phase = pos / P^(k / (dim/2 - 1))."""
    half = dim // 2
    positions = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    exponents = torch.arange(half, device=device, dtype=torch.float32)[None, :] / (half - 1)
    phase = positions / (max_period ** exponents)
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1).to(dtype)


def sin_embedding_2d(dim: int, rows: int, frames: int, max_period: float,
                     device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(dim, rows, frames) 2-D sinusoidal positions.

    The first dim/2 channels encode the frame (time) index, interleaved sin/cos; the last dim/2
    encode the frequency row, interleaved sin/cos; frequencies 1 / P^(2i / (dim/2)).
    """
    half = dim // 2
    inverse_periods = torch.exp(
        torch.arange(0.0, half, 2, device=device) * -(math.log(max_period) / half))
    frame_phase = torch.arange(0.0, frames, device=device)[:, None] * inverse_periods  # (T, h/2)
    row_phase = torch.arange(0.0, rows, device=device)[:, None] * inverse_periods  # (F, h/2)
    table = torch.zeros(dim, rows, frames, device=device)
    table[0:half:2] = torch.sin(frame_phase).t()[:, None, :]
    table[1:half:2] = torch.cos(frame_phase).t()[:, None, :]
    table[half::2] = torch.sin(row_phase).t()[:, :, None]
    table[half + 1::2] = torch.cos(row_phase).t()[:, :, None]
    return table.to(dtype)


class PackedAttention(nn.Module):
    """Multi-head attention with torch's packed parameter layout (in_proj_weight [3C, C])."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """query (B, Nq, C) attends to context (B, Nk, C)."""
        batch, num_queries, dim = query.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)

        def heads_first(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, x.shape[1], self.heads, dim // self.heads).transpose(1, 2)

        q = heads_first(F.linear(query, w_q, b_q))
        k = heads_first(F.linear(context, w_k, b_k))
        v = heads_first(F.linear(context, w_v, b_v))
        attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.transpose(1, 2).reshape(batch, num_queries, dim)
        return self.out_proj(attended)


class TokenGroupNorm(nn.Module):
    """GroupNorm(1) over all tokens and channels of (B, N, C), with per-channel affine."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.transpose(1, 2), 1, self.weight, self.bias, 1e-5).transpose(1, 2)


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: attention then feed-forward, each with LayerScale.

    Self-attention layers (`cross=False`) name their attention `self_attn`; cross-attention
    layers name it `cross_attn`, normalise the other branch with `norm2` and the feed-forward
    input with `norm3`. `norm_out` (GroupNorm over tokens and channels) ends the layer.
    """

    def __init__(self, dim: int, heads: int, hidden: int, *, cross: bool, gelu: bool,
                 layer_scale: bool, norm_out: bool) -> None:
        super().__init__()
        self.cross = cross
        attention = PackedAttention(dim, heads)
        if cross:
            self.cross_attn = attention
        else:
            self.self_attn = attention
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        if cross:
            self.norm3 = nn.LayerNorm(dim)
        self.norm_out = TokenGroupNorm(dim) if norm_out else None
        self.gamma_1 = LayerScale(dim, 1e-4, channel_last=True) if layer_scale else nn.Identity()
        self.gamma_2 = LayerScale(dim, 1e-4, channel_last=True) if layer_scale else nn.Identity()
        self.activation = F.gelu if gelu else F.relu

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        if self.cross:
            x = x + self.gamma_1(self.cross_attn(self.norm1(x), self.norm2(other)))
            ff_input = self.norm3(x)
        else:
            normed = self.norm1(x)
            x = x + self.gamma_1(self.self_attn(normed, normed))
            ff_input = self.norm2(x)
        x = x + self.gamma_2(self.linear2(self.activation(self.linear1(ff_input))))
        if self.norm_out is not None:
            x = self.norm_out(x)
        return x


class CrossTransformer(nn.Module):
    """The bottleneck: `layers` (frequency tokens) and `layers_t` (time tokens) side by side.

    Frequency tokens are the (F, T) grid in time-major order (token t*F + f) with a 2-D sin
    embedding; time tokens get a 1-D sin embedding. Layers alternate self-attention and
    cross-attention (cross-attention first if `cross_first`); in a cross layer each branch
    queries the other branch's input to that layer.
    """

    def __init__(self, dim: int, *, num_layers: int, heads: int, hidden_scale: float,
                 cross_first: bool, norm_in: bool, norm_out: bool, layer_scale: bool,
                 gelu: bool, max_period: float, weight_pos_embed: float) -> None:
        super().__init__()
        self.max_period = max_period
        self.weight_pos_embed = weight_pos_embed
        self.self_parity = 1 if cross_first else 0
        self.norm_in = nn.LayerNorm(dim) if norm_in else nn.Identity()
        self.norm_in_t = nn.LayerNorm(dim) if norm_in else nn.Identity()
        hidden = int(dim * hidden_scale)
        self.layers = nn.ModuleList()
        self.layers_t = nn.ModuleList()
        for index in range(num_layers):
            cross = index % 2 != self.self_parity
            for stack in (self.layers, self.layers_t):
                stack.append(TransformerLayer(dim, heads, hidden, cross=cross, gelu=gelu,
                                              layer_scale=layer_scale, norm_out=norm_out))

    def forward(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, dim, rows, frames = x.shape
        grid = sin_embedding_2d(dim, rows, frames, self.max_period, x.device, x.dtype)
        grid = grid.permute(2, 1, 0).reshape(1, frames * rows, dim)
        x = x.permute(0, 3, 2, 1).reshape(batch, frames * rows, dim)
        x = self.norm_in(x) + self.weight_pos_embed * grid

        time_tokens = xt.shape[-1]
        xt = xt.transpose(1, 2)
        line = sin_embedding_1d(time_tokens, dim, self.max_period, xt.device, xt.dtype)
        xt = self.norm_in_t(xt) + self.weight_pos_embed * line[None]

        for layer, layer_t in zip(self.layers, self.layers_t):
            if layer.cross:
                x, xt = layer(x, xt), layer_t(xt, x)
            else:
                x, xt = layer(x), layer_t(xt)

        x = x.view(batch, frames, rows, dim).permute(0, 3, 2, 1)
        return x, xt.transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# The model


class HTDemucs(nn.Module):
    """Hybrid Transformer Demucs. `forward(mix (B, C, T)) -> (B, S, C, T)`.

    Attributes a caller may use: `sources`, `samplerate`, `audio_channels`, `segment`
    (Fraction, seconds), `training_length` (samples), `use_train_segment`,
    `valid_length(length)`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        kw = dict(HTDEMUCS_DEFAULTS)
        kw.update(kwargs)
        self.sources: list[str] = list(kw["sources"])
        self.audio_channels = int(kw["audio_channels"])
        self.samplerate = int(kw["samplerate"])
        self.segment = parse_segment(kw["segment"])
        self.use_train_segment = bool(kw["use_train_segment"])
        self.nfft = int(kw["nfft"])
        self.hop_length = self.nfft // 4
        self.num_subbands = int(kw["num_subbands"])
        self.depth = int(kw["depth"])
        self.bottom_channels = int(kw["bottom_channels"] or 0)

        dconv_kw = {"depth": kw["dconv_depth"], "compress": kw["dconv_comp"],
                    "init": kw["dconv_init"]}
        stride, kernel_size = kw["stride"], kw["kernel_size"]
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.tencoder = nn.ModuleList()
        self.tdecoder = nn.ModuleList()
        chin_time = self.audio_channels
        chin_freq = self.audio_channels * 2 * self.num_subbands
        chout_time = kw["channels_time"] or kw["channels"]
        chout_freq = kw["channels"]
        self.freq_emb = None
        for index in range(self.depth):
            common = {"kernel_size": kernel_size, "stride": stride,
                      "norm": index >= kw["norm_starts"], "norm_groups": kw["norm_groups"],
                      "rewrite": kw["rewrite"], "dconv_kw": dconv_kw}
            self.encoder.append(EncoderLayer(chin_freq, chout_freq, freq=True,
                                             context=kw["context_enc"],
                                             dconv=bool(kw["dconv_mode"] & 1), **common))
            self.tencoder.append(EncoderLayer(chin_time, chout_time, freq=False,
                                              context=kw["context_enc"],
                                              dconv=bool(kw["dconv_mode"] & 1), **common))
            if index == 0:
                chin_time = self.audio_channels * len(self.sources)
                chin_freq = chin_time * 2 * self.num_subbands
            # Decoders are listed outermost last: decoder[0] is the deepest level.
            self.decoder.insert(0, DecoderLayer(chout_freq, chin_freq, last=index == 0,
                                                freq=True, context=kw["context"],
                                                dconv=bool(kw["dconv_mode"] & 2), **common))
            self.tdecoder.insert(0, DecoderLayer(chout_time, chin_time, last=index == 0,
                                                 freq=False, context=kw["context"],
                                                 dconv=bool(kw["dconv_mode"] & 2), **common))
            chin_time, chin_freq = chout_time, chout_freq
            chout_time = int(kw["growth"] * chout_time)
            chout_freq = int(kw["growth"] * chout_freq)
            if index == 0 and kw["freq_emb"]:
                rows = self.nfft // 2 // stride
                self.freq_emb = FrequencyEmbedding(rows, chin_freq, kw["emb_scale"])
                self.freq_emb_scale = float(kw["freq_emb"])

        transformer_channels = kw["channels"] * kw["growth"] ** (self.depth - 1)
        if self.bottom_channels:
            self.channel_upsampler = nn.Conv1d(transformer_channels, self.bottom_channels, 1)
            self.channel_downsampler = nn.Conv1d(self.bottom_channels, transformer_channels, 1)
            self.channel_upsampler_t = nn.Conv1d(transformer_channels, self.bottom_channels, 1)
            self.channel_downsampler_t = nn.Conv1d(self.bottom_channels, transformer_channels, 1)
            transformer_channels = self.bottom_channels
        self.crosstransformer = None
        if kw["t_layers"] > 0:
            self.crosstransformer = CrossTransformer(
                transformer_channels, num_layers=kw["t_layers"], heads=kw["t_heads"],
                hidden_scale=kw["t_hidden_scale"], cross_first=kw["t_cross_first"],
                norm_in=kw["t_norm_in"], norm_out=kw["t_norm_out"],
                layer_scale=kw["t_layer_scale"], gelu=kw["t_gelu"],
                max_period=kw["t_max_period"], weight_pos_embed=kw["t_weight_pos_embed"])

    # -- lengths ------------------------------------------------------------------------------

    @property
    def training_length(self) -> int:
        """The segment the model was trained on, in samples (int(segment * samplerate))."""
        return int(self.segment * self.samplerate)

    def valid_length(self, length: int) -> int:
        """Length a chunk should be padded to before `forward` (demucs' apply contract)."""
        if self.use_train_segment and length <= self.training_length:
            return self.training_length
        return length

    # -- spectrograms -------------------------------------------------------------------------

    def _window(self, like: torch.Tensor) -> torch.Tensor:
        return torch.hann_window(self.nfft, device=like.device, dtype=like.real.dtype)

    def spectrogram(self, mix: torch.Tensor) -> torch.Tensor:
        """Complex STFT (B, C, nfft/2, frames) with frames = ceil(T / hop).

        The signal is reflect-padded by 3/2 hop on the left and 3/2 hop plus the rounding up to
        a whole hop on the right; after torch's own centring (nfft/2 = 2 hops) and dropping two
        frames on each side, frame k is centred on sample k*hop + hop/2, the middle of the k-th
        block of `hop` samples. The top bin (Nyquist) is dropped. The STFT is normalised
        (divided by sqrt(nfft)).
        """
        hop = self.hop_length
        length = mix.shape[-1]
        frames = math.ceil(length / hop)
        pad = hop // 2 * 3
        padded = _reflect_pad(mix, pad, pad + frames * hop - length)
        flat = padded.reshape(-1, padded.shape[-1])
        spec = torch.stft(flat, self.nfft, hop, window=self._window(flat), win_length=self.nfft,
                          normalized=True, center=True, pad_mode="reflect", return_complex=True)
        spec = spec.view(*mix.shape[:-1], spec.shape[-2], spec.shape[-1])
        return spec[..., :-1, 2:2 + frames]

    def inverse_spectrogram(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse of `spectrogram`: (..., nfft/2, frames) complex -> (..., length) real."""
        hop = self.hop_length
        spec = F.pad(spec, (2, 2, 0, 1))
        pad = hop // 2 * 3
        padded_length = hop * math.ceil(length / hop) + 2 * pad
        flat = spec.reshape(-1, spec.shape[-2], spec.shape[-1])
        wave = torch.istft(flat, self.nfft, hop, window=self._window(flat), win_length=self.nfft,
                           normalized=True, center=True, length=padded_length)
        wave = wave.view(*spec.shape[:-2], padded_length)
        return wave[..., pad:pad + length]

    # -- forward ------------------------------------------------------------------------------

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise ModelError(
                f"htdemucs expects a (batch, {self.audio_channels}, samples) waveform, "
                f"got shape {tuple(mix.shape)}")
        length = mix.shape[-1]
        if self.use_train_segment and length < self.training_length:
            mix = F.pad(mix, (0, self.training_length - length))
        padded_length = mix.shape[-1]

        spec = self.spectrogram(mix)
        batch, channels, bins, frames = spec.shape
        # Complex as channels: (B, C, F, T) complex -> (B, C*2, F, T), [re, im] per channel;
        # with sub-bands, the frequency axis is folded into channels as well.
        x = torch.view_as_real(spec).permute(0, 1, 4, 2, 3).reshape(batch, channels * 2, bins, frames)
        if self.num_subbands > 1:
            k = self.num_subbands
            x = x.reshape(batch, channels * 2 * k, bins // k, frames)

        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (1e-5 + std)
        mean_t = mix.mean(dim=(1, 2), keepdim=True)
        std_t = mix.std(dim=(1, 2), keepdim=True)
        xt = (mix - mean_t) / (1e-5 + std_t)

        skips, skips_t, lengths_t = [], [], []
        for index, (encode, encode_t) in enumerate(zip(self.encoder, self.tencoder)):
            lengths_t.append(xt.shape[-1])
            xt = encode_t(xt)
            skips_t.append(xt)
            x = encode(x)
            if index == 0 and self.freq_emb is not None:
                x = x + self.freq_emb_scale * self.freq_emb(x.shape[-2])[None, :, :, None]
            skips.append(x)

        if self.crosstransformer is not None:
            if self.bottom_channels:
                b, c, rows, cols = x.shape
                x = self.channel_upsampler(x.reshape(b, c, rows * cols)).view(b, -1, rows, cols)
                xt = self.channel_upsampler_t(xt)
            x, xt = self.crosstransformer(x, xt)
            if self.bottom_channels:
                b, c, rows, cols = x.shape
                x = self.channel_downsampler(x.reshape(b, c, rows * cols)).view(b, -1, rows, cols)
                xt = self.channel_downsampler_t(xt)

        for decode, decode_t in zip(self.decoder, self.tdecoder):
            x = decode(x, skips.pop(), 0)
            xt = decode_t(xt, skips_t.pop(), lengths_t.pop())

        num_sources = len(self.sources)
        if self.num_subbands > 1:
            x = x.reshape(batch, -1, bins, frames)
        x = x.view(batch, num_sources, -1, bins, frames) * std[:, None] + mean[:, None]
        x = x.view(batch, num_sources, -1, 2, bins, frames).permute(0, 1, 2, 4, 5, 3)
        spec_out = torch.view_as_complex(x.contiguous())
        wave = self.inverse_spectrogram(spec_out, padded_length)
        wave_t = xt.view(batch, num_sources, -1, padded_length) * std_t[:, None] + mean_t[:, None]
        return (wave_t + wave)[..., :length]


def _reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect padding that also works when the signal is not longer than the padding.

    Reflection needs length > pad; for shorter signals zeros are first appended on the right
    (and on the left if the right padding is too small) so that the reflection is defined.
    """
    length = x.shape[-1]
    widest = max(left, right)
    if length <= widest:
        extra = widest - length + 1
        extra_right = min(right, extra)
        extra_left = extra - extra_right
        left, right = left - extra_left, right - extra_right
        x = F.pad(x, (extra_left, extra_right))
    return F.pad(x, (left, right), mode="reflect")


def build_htdemucs(config: dict[str, Any]) -> HTDemucs:
    """HTDemucs from an MSST config or a demucs package's kwargs (see `htdemucs_kwargs`)."""
    return HTDemucs(**htdemucs_kwargs(config))
