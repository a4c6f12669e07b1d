"""A local equivariance error (LEE) for rate changes: our own definition.

The idea follows the LEE-based sampling-frequency-independence metrics of Imamura, Nakamura,
Takamune, Yatabe and Saruwatari (EUSIPCO 2025, arXiv:2506.03550): measure how much a network's
prediction changes under a resampling of its input. Their exact definitions were not
available to us; what follows is ours, and results are not comparable with the paper's.

Definition. Let R be the model's trained rate (the file's rate for any-rate models), x the
file brought to R (conventional kernel), and for a rate r < R let

    x_r = up_R(down_r(x))      conventional round trip: x with its band above r/2 removed

Let S(.) be the magnitude STFT of the model's output stems, all stems and channels: a Hann
window of 2^ceil(log2(0.046 R)) samples (2048 at 44.1 kHz), hop a quarter of it, and keep
only the bins whose frequency is below PASSBAND * r/2, PASSBAND = 0.75 (written S_r). The
margin leaves out the resampler's own transition band: the Kaiser kernel (24 zero crossings a
side, cut-off 0.99 r/2) starts attenuating at about 0.8 r/2, so closer to r/2 the round trip
itself changes the input and even a model that ignores the high band would score > 0 (a
linear band-split model scored 0.15 up to r/2 and 0.008 with the margin, r = 4 kHz). Then for one file

    LEE(r) = || S_r(model(x_r)) - S_r(model(x)) ||_F / || S_r(model(x)) ||_F

and the reported LEE(r) is the mean over files. It is 0 for a model whose output below r/2
does not depend on the input's band above r/2 (what a sampling-frequency-independent model
would do) and grows with that dependence. Per stem, the same ratio over that stem alone.

The issue asks for the models' time-frequency masks where the architecture predicts masks.
sfsep's model contract is waveform to waveform and no module exposes its masks through it, so
this version uses the output spectrograms for every model (the "otherwise" case).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from sfsep.diagnose.common import check_rates, full_band, reference_rate, stems_at
from sfsep.pipeline import Separator, Settings
from sfsep.resample import resample

PASSBAND = 0.75
"""Fraction of r/2 below which outputs are compared (the round trip's passband)."""


@dataclass
class LeeResult:
    rate: int
    lee: float  # mean over files
    per_stem: dict[str, float] = field(default_factory=dict)  # mean over files
    per_file: list[float] = field(default_factory=list)


def window_length(rate: int) -> int:
    """2^ceil(log2(0.046 * rate)): 2048 at 44.1 kHz, 512 at 8 kHz."""
    return 2 ** max(4, math.ceil(math.log2(0.046 * rate)))


def band_magnitudes(stems: torch.Tensor, rate: int, cutoff_hz: float) -> torch.Tensor:
    """|STFT| of stems (S, C, T), bins below `cutoff_hz` only: (S, C, bins, frames)."""
    n_fft = window_length(rate)
    flat = stems.reshape(-1, stems.shape[-1]).double()
    if flat.shape[-1] < n_fft:
        flat = torch.nn.functional.pad(flat, (0, n_fft - flat.shape[-1]))
    spectrum = torch.stft(flat, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft, dtype=flat.dtype),
                          return_complex=True).abs()
    frequencies = torch.arange(spectrum.shape[-2], dtype=torch.float64) * rate / n_fft
    kept = spectrum[:, frequencies < cutoff_hz]
    return kept.reshape(*stems.shape[:2], *kept.shape[-2:])


def local_equivariance_error(separator: Separator, files: Sequence[tuple[torch.Tensor, int]],
                             rates: Sequence[int], *, settings: Settings | None = None) -> list[LeeResult]:
    """LEE(r) for every rate, averaged over `files` ((channels, samples) audio, rate) pairs."""
    per_rate: dict[int, list[tuple[float, dict[str, float]]]] = {}
    for audio, file_rate in files:
        full_rate = reference_rate(separator, file_rate)
        checked = check_rates(rates, full_rate)
        signal = full_band(audio, file_rate, full_rate)
        stems, names = stems_at(separator, signal, full_rate, "none", settings)
        for rate in checked:
            round_trip = resample(resample(signal, full_rate, rate), rate, full_rate)[..., : signal.shape[-1]]
            changed, _ = stems_at(separator, round_trip, full_rate, "none", settings)
            reference = band_magnitudes(stems, full_rate, PASSBAND * rate / 2)
            moved = band_magnitudes(changed, full_rate, PASSBAND * rate / 2)
            difference = (moved - reference).square()
            energy = reference.square()
            total = math.sqrt(float(difference.sum()) / max(float(energy.sum()), 1e-30))
            per_stem = {name: math.sqrt(float(difference[i].sum()) / max(float(energy[i].sum()), 1e-30))
                        for i, name in enumerate(names)}
            per_rate.setdefault(rate, []).append((total, per_stem))
    results = []
    for rate in sorted(per_rate):
        values = per_rate[rate]
        stems = values[0][1].keys()
        results.append(LeeResult(
            rate=rate, lee=sum(v for v, _ in values) / len(values),
            per_stem={stem: sum(s[stem] for _, s in values) / len(values) for stem in stems},
            per_file=[v for v, _ in values]))
    return results
