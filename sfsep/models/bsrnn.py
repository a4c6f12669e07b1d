"""BSRNN: the band-split RNN separator (Luo & Yu, 2022) as amanteur/BandSplitRNN-PyTorch trains it.

This file owns the architecture, its spectrogram front end and the reference's own chunked
waveform separator. The module's state_dict has the keys of the published checkpoint
(`bandsplit.*`, `bandsequence.bsrnn.{layer}.{0,1}.*`, `maskest.*`), so the published vocals
weights load strictly. The reference implementation is the one after its 2023-07-27 fix of the
mask estimation (the published epoch-139 vocals checkpoint was trained with it).

The network works on a complex STFT (batch, channels, bins, frames):

1. The spectrogram is normalised per item by its complex mean and its (real, unbiased) standard
   deviation over channels, bins and frames.
2. Band split: the bins are cut into bands whose edges are given in Hz by `bandsplits`, a list
   of (end_frequency, step) pairs: from the previous end up to `end_frequency`, one band every
   `step` Hz, and a last band from the final edge up to Nyquist. A band of `width` bins becomes
   `channels * 2 * width` real features per frame (order: channel, real/imaginary, bin), is
   normalised by a LayerNorm over features *and frames jointly*, and projected to `fc_dim`.
3. Band sequence: `num_layers` pairs of residual RNN blocks; the first of a pair runs along the
   frames of each band, the second along the bands of each frame. A block is a GroupNorm with one
   group per feature (each feature normalised over the sequence), a (bi)directional RNN of
   `rnn_dim` units, a Linear back to `fc_dim`, and a residual sum.
4. Mask estimation: per band, a LayerNorm over (frames, features), Linear -> tanh -> Linear to
   the band's `channels * 2 * width` features, then a gated linear unit with its own square-ish
   Linear (first half times the sigmoid of the second half). The features are read back as a
   complex mask in the band-split order.
5. The output is mask * normalised spectrogram (or the mask itself when `return_mask`), then
   de-normalised with the same mean and standard deviation.

Fixed number of frames. Both LayerNorms carry elementwise weights shaped with `t_timesteps`
frames, so the network only accepts spectrograms of exactly that many frames. The STFT is
centred (reflect padding of n_fft // 2 on each side), so a waveform of T samples gives
1 + T // hop frames, and the iSTFT of F frames gives (F - 1) * hop samples. The one chunk length
that maps to `t_timesteps` frames and back to itself is therefore

    chunk_samples = (t_timesteps - 1) * hop_length        (263 frames, hop 512 -> 134144)

`forward` only takes waveforms of that length; longer signals are cut into chunks of it, either
by `separate_waveform` (the reference's separator, see below) or by `sfsep.inference.demix`.

The reference separator (its `Separator` class) does not match any of the generic chunking
styles of `sfsep.inference`, so it lives here as `separate_waveform`:
- audio parameters `win_size` and `hop_size` (seconds, 3 and 0.5 for the vocals model) give
  `chunk_size = int(win_size * sr)` and `chunk_step = int(hop_size * sr)`;
- the chunk is padded to the model's window, `window = chunk_size + win_length - chunk_size %
  hop_length` (134144 samples), and the hop between chunks is enlarged by the same amount
  (`chunk_step + window - chunk_size` = 23894 samples);
- the signal is zero-padded by `chunk_size - chunk_step` (110250) on both sides, plus on the
  right `hop - (length + 2 * edge - window) % hop` (a whole hop even when that is 0);
- every chunk output is divided by the constant `window / hop` (about 5.614; the true overlap
  count alternates between 5 and 6, so the reference's output has a periodic gain of 0.89 or
  1.07 (-1.0 / +0.6 dB) with hard steps at chunk edges; the published scores include it),
  or multiplied by a Hann window of the chunk length when `window: hann` is configured; the
  chunks are overlap-added and the padding cut off.

Configuration (`build(config)`): the model hparams as the reference's `hparams.yaml` `model:`
section (`sr`, `n_fft`, `bandsplits`, `t_timesteps`, `bottleneck_layer`, `fc_dim`, `rnn_dim`,
`rnn_type`, `bidirectional`, `num_layers`, `mlp_dim`, `return_mask`, `complex_as_channel`,
`is_mono`), plus optional underscore keys: `_featurizer` (the STFT settings; without it
win_length = n_fft and hop_length = n_fft // 4 as in the reference's featurizer config),
`_audio_params` (`target`, `win_size`, `hop_size`, `window`, `batch_size`) and `_band_indices`
(checked against the computed bands). Only the published variant is supported: the RNN
bottleneck with complex-as-channel input.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ModelError
from ..inference import RunContract, run_whole
from .precision import run_rnn

MODEL_KEYS = (
    "sr",
    "n_fft",
    "bandsplits",
    "t_timesteps",
    "bottleneck_layer",
    "fc_dim",
    "rnn_dim",
    "rnn_type",
    "bidirectional",
    "num_layers",
    "mlp_dim",
    "return_mask",
    "complex_as_channel",
    "is_mono",
)
REQUIRED_KEYS = ("sr", "n_fft", "bandsplits", "t_timesteps", "fc_dim", "rnn_dim", "num_layers", "mlp_dim")
RNN_TYPES = ("LSTM", "GRU", "RNN")
NORM_EPS = 1e-5  # added to the spectrogram's standard deviation before dividing


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class StftSettings:
    """The STFT of the reference's featurizer: periodic Hann, centred, reflect, not normalised."""

    n_fft: int
    win_length: int
    hop_length: int


def stft_settings(config: dict[str, Any]) -> StftSettings:
    """STFT sizes from the config's `_featurizer` section, or the reference defaults for n_fft."""
    n_fft = int(config["n_fft"])
    featurizer = config.get("_featurizer") or {}
    direct = featurizer.get("direct_transform") or {}
    inverse = featurizer.get("inverse_transform") or {}
    win_length = int(direct.get("win_length") or n_fft)
    hop_length = int(direct.get("hop_length") or n_fft // 4)
    if int(direct.get("n_fft", n_fft)) != n_fft:
        raise ModelError(
            f"BSRNN config: _featurizer n_fft {direct.get('n_fft')} differs from the model's n_fft {n_fft}"
        )
    for name, value in (("n_fft", n_fft), ("win_length", win_length), ("hop_length", hop_length)):
        if name in inverse and int(inverse[name]) != value:
            raise ModelError(
                f"BSRNN config: the inverse transform's {name} {inverse[name]} differs from the "
                f"direct transform's {value}; the model needs one STFT for both"
            )
    if not 0 < hop_length <= win_length <= n_fft:
        raise ModelError(
            f"BSRNN config: STFT sizes need 0 < hop_length <= win_length <= n_fft, got "
            f"hop {hop_length}, window {win_length}, n_fft {n_fft}"
        )
    return StftSettings(n_fft=n_fft, win_length=win_length, hop_length=hop_length)


def chunk_samples(config: dict[str, Any]) -> int:
    """The waveform length the network accepts: (t_timesteps - 1) * hop_length samples.

    A centred STFT of that many samples has exactly `t_timesteps` frames, the number the
    LayerNorm weights are shaped with, and the iSTFT of those frames gives the same length back.
    134144 samples (3.04 s at 44.1 kHz) for the published vocals model.
    """
    return (int(config["t_timesteps"]) - 1) * stft_settings(config).hop_length


def band_indices(sr: int, n_fft: int, bandsplits: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """[start, end) bin ranges of the bands described in Hz by (end_frequency, step) pairs.

    The bin frequencies are those of a one-sided FFT, k * sr / n_fft, with the top bin set to
    sr // 2; they are computed in float32 as the reference does, so that an edge falling on a
    bin frequency lands on the same side. A band ends before the first bin whose frequency
    reaches its upper edge. After the last pair, one band runs up to Nyquist.
    """
    n_bins = n_fft // 2 + 1
    # Plain data, computed on the CPU even while a model is being built on another device.
    bin_frequencies = sr * torch.fft.fftfreq(n_fft, device="cpu")[:n_bins]
    bin_frequencies[-1] = sr // 2
    bands: list[tuple[int, int]] = []
    band_start_frequency, band_start_index = 0, 0
    for end_frequency, step in bandsplits:
        if step <= 0 or end_frequency <= band_start_frequency:
            raise ModelError(
                f"BSRNN config: bandsplits must be increasing (end_hz, step_hz) pairs with a positive "
                f"step, got {[list(pair) for pair in bandsplits]}"
            )
        edges = torch.arange(band_start_frequency + step, end_frequency + step, step, device="cpu")
        for edge in edges:
            end_index = int((bin_frequencies < edge).sum())
            bands.append((band_start_index, end_index))
            band_start_index = end_index
        band_start_frequency = end_frequency
    bands.append((band_start_index, n_bins))
    empty = [band for band in bands if band[1] <= band[0]]
    if empty:
        raise ModelError(
            f"BSRNN config: bandsplits {[list(pair) for pair in bandsplits]} give empty bands "
            f"{empty} at sr {sr}, n_fft {n_fft}; use coarser steps or a larger n_fft"
        )
    return bands


def _checked_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The model hparams with the reference's defaults filled in, or a ModelError."""
    if not isinstance(config, dict):
        raise ModelError(f"BSRNN config must be a mapping of hparams, got {type(config).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ModelError(f"BSRNN config is missing {', '.join(missing)} (see the reference's hparams.yaml)")
    unknown = [key for key in config if key not in MODEL_KEYS and not str(key).startswith("_")]
    if unknown:
        raise ModelError(f"BSRNN config has unknown keys {', '.join(map(str, unknown))}")
    hparams = {
        "bottleneck_layer": "rnn",
        "rnn_type": "LSTM",
        "bidirectional": True,
        "return_mask": False,
        "complex_as_channel": True,
        "is_mono": False,
        **{key: config[key] for key in MODEL_KEYS if key in config},
    }
    if hparams["bottleneck_layer"] != "rnn":
        raise ModelError(
            f"BSRNN config: bottleneck_layer '{hparams['bottleneck_layer']}' is not supported "
            "(sfsep implements the published 'rnn' bottleneck)"
        )
    if not hparams["complex_as_channel"]:
        raise ModelError(
            "BSRNN config: complex_as_channel false (magnitude masks) is not supported: the reference "
            "has no waveform path for it; sfsep implements the published complex-as-channel model"
        )
    if hparams["rnn_type"] not in RNN_TYPES:
        raise ModelError(f"BSRNN config: rnn_type '{hparams['rnn_type']}' is not one of {', '.join(RNN_TYPES)}")
    return hparams


# --------------------------------------------------------------------------------------------
# Network parts (submodule and attribute names follow the published state_dict keys)


class BandSplit(nn.Module):
    """Per band: LayerNorm over (features, frames), then Linear(features -> fc_dim)."""

    def __init__(self, bands: list[tuple[int, int]], features_per_bin: int, frames: int, fc_dim: int):
        super().__init__()
        self.bands = bands
        self.layernorms = nn.ModuleList(
            nn.LayerNorm([(end - start) * features_per_bin, frames]) for start, end in bands
        )
        self.fcs = nn.ModuleList(nn.Linear((end - start) * features_per_bin, fc_dim) for start, end in bands)

    def forward(self, spec_parts: torch.Tensor) -> torch.Tensor:
        """(batch, channels, 2 re/im, bins, frames) real -> (batch, bands, frames, fc_dim)."""
        batch, frames = spec_parts.shape[0], spec_parts.shape[-1]
        band_features = []
        for (start, end), norm, projection in zip(self.bands, self.layernorms, self.fcs):
            features = spec_parts[:, :, :, start:end].reshape(batch, -1, frames)
            band_features.append(projection(norm(features).transpose(1, 2)))
        return torch.stack(band_features, dim=1)


class SequenceBlock(nn.Module):
    """Residual RNN along the sequence axis (dim 2) of (batch, groups, sequence, features)."""

    def __init__(self, features: int, hidden: int, rnn_type: str, bidirectional: bool):
        super().__init__()
        self.groupnorm = nn.GroupNorm(features, features)
        self.rnn = getattr(nn, rnn_type)(features, hidden, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, groups, length, features = x.shape
        sequences = x.reshape(batch * groups, length, features)
        # One group per feature: each feature is normalised over the sequence.
        normalised = self.groupnorm(sequences.transpose(1, 2)).transpose(1, 2)
        residual = self.fc(run_rnn(self.rnn, normalised))
        return x + residual.reshape(batch, groups, length, features)


class BandSequence(nn.Module):
    """`num_layers` pairs of SequenceBlocks: along frames (`.0`), then along bands (`.1`)."""

    def __init__(self, features: int, hidden: int, rnn_type: str, bidirectional: bool, num_layers: int):
        super().__init__()
        self.bsrnn = nn.ModuleList(
            nn.ModuleList(
                [
                    SequenceBlock(features, hidden, rnn_type, bidirectional),
                    SequenceBlock(features, hidden, rnn_type, bidirectional),
                ]
            )
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, bands, frames, features) -> same shape."""
        for across_frames, across_bands in self.bsrnn:
            x = across_frames(x)
            x = across_bands(x.transpose(1, 2).contiguous()).transpose(1, 2).contiguous()
        return x


class GatedLinear(nn.Module):
    """Linear(d -> 2d), then first half * sigmoid(second half)."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.linear = nn.Linear(features, 2 * features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        doubled = self.linear(x)
        return doubled[..., : self.features] * torch.sigmoid(doubled[..., self.features :])


class MaskHead(nn.Module):
    """One band's mask MLP: Linear -> tanh -> Linear -> GatedLinear (keys `mlp.{0,2,3}`)."""

    def __init__(self, fc_dim: int, mlp_dim: int, out_features: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(fc_dim, mlp_dim),
            nn.Tanh(),
            nn.Linear(mlp_dim, out_features),
            GatedLinear(out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class MaskEstimation(nn.Module):
    """Per band: LayerNorm over (frames, fc_dim), MaskHead, read back as a complex mask."""

    def __init__(
        self, bands: list[tuple[int, int]], features_per_bin: int, frames: int, fc_dim: int, mlp_dim: int
    ):
        super().__init__()
        self.bands = bands
        self.layernorms = nn.ModuleList(nn.LayerNorm([frames, fc_dim]) for _ in bands)
        self.mlp = nn.ModuleList(
            MaskHead(fc_dim, mlp_dim, (end - start) * features_per_bin) for start, end in bands
        )

    def forward(self, band_features: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
        """(batch, bands, frames, fc_dim) -> complex mask (batch, channels, bins, frames) whose
        real and imaginary parts have `dtype` (the spectrogram's, also under autocast)."""
        batch, _, frames, _ = band_features.shape
        masks = []
        for index, ((start, end), norm, head) in enumerate(zip(self.bands, self.layernorms, self.mlp)):
            out = head(norm(band_features[:, index]))  # (batch, frames, channels * 2 * width)
            # Features are ordered (channel, real/imaginary, bin), as the band split reads them.
            parts = out.transpose(1, 2).reshape(batch, channels, 2, end - start, frames).to(dtype)
            masks.append(torch.complex(parts[:, :, 0], parts[:, :, 1]))
        return torch.cat(masks, dim=2)


# --------------------------------------------------------------------------------------------
# The model


class BSRNN(nn.Module):
    """Band-split RNN for one target. `forward` is waveform to waveform on one chunk.

    forward_spectrogram(spec (B, C, bins, t_timesteps) complex) -> same shape, the reference
    network. forward(mix (B, C, chunk_samples)) -> (B, 1, C, chunk_samples): STFT, network,
    iSTFT. See the file docstring for the chunk length and `separate_waveform` for long signals.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        hparams = _checked_hparams(config)
        self.config = dict(config)
        self.sample_rate = int(hparams["sr"])
        self.stft = stft_settings(config)
        self.frames = int(hparams["t_timesteps"])
        self.chunk_samples = chunk_samples(config)
        self.channels = 1 if hparams["is_mono"] else 2
        self.return_mask = bool(hparams["return_mask"])
        audio_params = config.get("_audio_params") or {}
        self.stems = (str(audio_params.get("target", "vocals")),)

        bands = band_indices(self.sample_rate, self.stft.n_fft, hparams["bandsplits"])
        expected = config.get("_band_indices")
        if expected is not None and [list(band) for band in expected] != [list(band) for band in bands]:
            raise ModelError(
                "BSRNN config: _band_indices do not match the bands computed from sr, n_fft and "
                f"bandsplits ({bands}); remove _band_indices or fix the hparams"
            )
        self.bands = bands
        features_per_bin = 2 * self.channels  # real and imaginary part of each channel
        fc_dim = int(hparams["fc_dim"])
        self.bandsplit = BandSplit(bands, features_per_bin, self.frames, fc_dim)
        self.bandsequence = BandSequence(
            fc_dim, int(hparams["rnn_dim"]), hparams["rnn_type"], bool(hparams["bidirectional"]),
            int(hparams["num_layers"]),
        )
        self.maskest = MaskEstimation(bands, features_per_bin, self.frames, fc_dim, int(hparams["mlp_dim"]))

    # Spectrogram domain ------------------------------------------------------------------

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        """The reference forward: complex (B, C, bins, frames) -> complex estimate, same shape."""
        if not torch.is_complex(spec) or spec.dim() != 4:
            raise ModelError(
                f"BSRNN expects a complex spectrogram (batch, channels, bins, frames), got "
                f"{'complex' if torch.is_complex(spec) else 'real'} shape {tuple(spec.shape)}"
            )
        batch, channels, bins, frames = spec.shape
        expected = (self.channels, self.stft.n_fft // 2 + 1, self.frames)
        if (channels, bins, frames) != expected:
            raise ModelError(
                f"BSRNN expects spectrograms of {expected[0]} channel(s), {expected[1]} bins and exactly "
                f"{expected[2]} frames (its LayerNorms are shaped with them), got {channels}, {bins}, "
                f"{frames}; cut the audio into chunks of {self.chunk_samples} samples"
            )
        mean = spec.mean(dim=(1, 2, 3), keepdim=True)
        std = spec.std(dim=(1, 2, 3), keepdim=True)
        normalised = (spec - mean) / (std + NORM_EPS)

        parts = torch.stack((normalised.real, normalised.imag), dim=2)  # (B, C, 2, bins, frames)
        band_features = self.bandsplit(parts)
        band_features = self.bandsequence(band_features)
        mask = self.maskest(band_features, channels, normalised.real.dtype)

        estimate = mask if self.return_mask else mask * normalised
        return estimate * std + mean

    # Waveform domain ---------------------------------------------------------------------

    def _window(self, reference: torch.Tensor) -> torch.Tensor:
        return torch.hann_window(self.stft.win_length, periodic=True, device=reference.device, dtype=reference.dtype)

    def spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """(..., samples) real -> (..., bins, frames) complex, the reference featurizer's STFT."""
        leading = waveform.shape[:-1]
        spec = torch.stft(
            waveform.reshape(-1, waveform.shape[-1]),
            n_fft=self.stft.n_fft,
            hop_length=self.stft.hop_length,
            win_length=self.stft.win_length,
            window=self._window(waveform),
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        return spec.reshape(*leading, *spec.shape[-2:])

    def waveform(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """(..., bins, frames) complex -> (..., length) real, the inverse of `spectrogram`."""
        leading = spec.shape[:-2]
        real_dtype = spec.real.dtype
        audio = torch.istft(
            spec.reshape(-1, *spec.shape[-2:]),
            n_fft=self.stft.n_fft,
            hop_length=self.stft.hop_length,
            win_length=self.stft.win_length,
            window=torch.hann_window(self.stft.win_length, periodic=True, device=spec.device, dtype=real_dtype),
            center=True,
            normalized=False,
            onesided=True,
            length=length,
        )
        return audio.reshape(*leading, length)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """(batch, channels, chunk_samples) -> (batch, 1, channels, chunk_samples)."""
        if mix.dim() != 3:
            raise ModelError(f"BSRNN expects a waveform batch (batch, channels, samples), got shape {tuple(mix.shape)}")
        batch, channels, length = mix.shape
        if channels != self.channels:
            raise ModelError(
                f"BSRNN model is {'mono' if self.channels == 1 else 'stereo'} ({self.channels} channel(s)) "
                f"but got {channels}; mix down or duplicate channels first (separate_waveform does it "
                "as the reference's loader does)"
            )
        if length != self.chunk_samples:
            raise ModelError(
                f"BSRNN takes chunks of exactly {self.chunk_samples} samples "
                f"((t_timesteps {self.frames} - 1) * hop {self.stft.hop_length}), got {length}; "
                "use bsrnn.separate_waveform or chunk with bsrnn.chunk_samples(config)"
            )
        estimate = self.forward_spectrogram(self.spectrogram(mix))
        return self.waveform(estimate, length).unsqueeze(1)


def build(config: dict[str, Any]) -> BSRNN:
    """A BSRNN from its hparams (see the file docstring); random weights."""
    return BSRNN(config)


# --------------------------------------------------------------------------------------------
# The reference's chunked separator


@dataclass(frozen=True)
class SeparatorLayout:
    """Where the reference separator puts its chunks on a signal of `length` samples."""

    length: int
    window: int  # chunk length fed to the model (= chunk_samples)
    hop: int  # distance between chunk starts
    edge_padding: int  # zeros added on both sides
    tail_padding: int  # extra zeros on the right so that the chunks tile the padded signal
    chunks: int

    @property
    def padded_length(self) -> int:
        return self.length + 2 * self.edge_padding + self.tail_padding

    @property
    def gain(self) -> float:
        """The constant each chunk output is divided by (without a synthesis window)."""
        return self.window / self.hop


def separator_layout(
    config: dict[str, Any], length: int, chunk_size: int | None = None, chunk_step: int | None = None
) -> SeparatorLayout:
    """The reference separator's chunk plan for a signal of `length` samples.

    `chunk_size` and `chunk_step` (samples) default to `_audio_params` win_size and hop_size
    (seconds; 3 and 0.5 when absent) times the model's rate.
    """
    audio_params = config.get("_audio_params") or {}
    sample_rate = int(config["sr"])
    if chunk_size is None:
        chunk_size = int(float(audio_params.get("win_size", 3)) * sample_rate)
    if chunk_step is None:
        chunk_step = int(float(audio_params.get("hop_size", 0.5)) * sample_rate)
    if not 0 < chunk_step <= chunk_size:
        raise ModelError(f"BSRNN separator: need 0 < chunk step <= chunk size, got {chunk_step} and {chunk_size}")
    stft = stft_settings(config)
    # The chunk is grown to a whole number of STFT hops plus one window; the hop grows alike.
    window = chunk_size + stft.win_length - chunk_size % stft.hop_length
    if window != chunk_samples(config):
        raise ModelError(
            f"BSRNN separator: chunks of {chunk_size} samples become {window}-sample windows, but the "
            f"model takes {chunk_samples(config)} (t_timesteps {config['t_timesteps']}); set "
            "_audio_params win_size to match the model"
        )
    hop = chunk_step + window - chunk_size
    edge_padding = chunk_size - chunk_step
    tail_padding = hop - (length + 2 * edge_padding - window) % hop
    padded_length = length + 2 * edge_padding + tail_padding
    chunks = (padded_length - window) // hop + 1
    return SeparatorLayout(length, window, hop, edge_padding, tail_padding, chunks)


def reference_contract(config: dict[str, Any], chunk_size: int | None = None, chunk_step: int | None = None,
                       batch_size: int | None = None) -> RunContract:
    """The reference separator's chunking as a run-time contract (sfsep.inference style "bsrnn"):
    windows of the model's fixed chunk length every `hop` samples, `edge_padding` zeros on both
    sides, summed with a constant 1 / (window / hop) or a Hann window (`_audio_params` win_size,
    hop_size, batch_size and window, or the arguments)."""
    audio_params = config.get("_audio_params") or {}
    layout = separator_layout(config, 0, chunk_size, chunk_step)
    window_name = audio_params.get("window")
    if window_name not in (None, "hann"):
        raise ModelError(f"BSRNN config: _audio_params window '{window_name}' is not supported (null or hann)")
    return RunContract(style="bsrnn", segment=layout.window, hop=layout.hop, edge_padding=layout.edge_padding,
                       synthesis_window=window_name, batch_size=int(batch_size or audio_params.get("batch_size", 8)))


def run_contract(spec, module: BSRNN) -> RunContract:
    """How the pipeline runs a loaded BSRNN: its reference separator's chunking."""
    return replace(reference_contract(module.config), normalize=spec.normalize, residual_stem=spec.residual_stem)


def fit_channels(mix: torch.Tensor, model_channels: int) -> torch.Tensor:
    """Channels as the reference's loader prepares them: mean for a mono model, mono repeated
    for a stereo one. (channels, samples) -> (model_channels, samples)."""
    channels = mix.shape[0]
    if model_channels == 1:
        return mix.mean(dim=0, keepdim=True)
    if channels == model_channels:
        return mix
    if channels == 1:
        return mix.repeat(model_channels, 1)
    raise ModelError(
        f"BSRNN model takes {model_channels} channels, got {channels}; mix the input down to stereo first"
    )


def separate_waveform(
    model: BSRNN,
    mix: torch.Tensor,
    *,
    chunk_size: int | None = None,
    chunk_step: int | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The reference separator: mix (channels, samples) -> stems (1, model channels, samples).

    Chunks follow `separator_layout` (zero padding, constant 1 / (window / hop) weighting or a Hann
    window when `_audio_params.window` is 'hann'), run by sfsep.inference's "bsrnn" style (the
    streaming pipeline runs the same plan block by block); chunks run `batch_size` at a time
    (default `_audio_params.batch_size`, else 8) on `device` (default: where the model is). A
    mono input to a stereo model is duplicated, as the reference's loader does, so the stems
    then have two channels.
    """
    if mix.dim() != 2:
        raise ModelError(f"BSRNN separate_waveform expects (channels, samples), got shape {tuple(mix.shape)}")
    contract = reference_contract(model.config, chunk_size, chunk_step, batch_size)
    mix = fit_channels(mix, model.channels)
    if device is None:
        device = next(model.parameters()).device
    return run_whole(model, mix, contract, device=device, progress=progress).to(mix.dtype)
