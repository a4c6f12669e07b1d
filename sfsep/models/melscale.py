"""Mel filterbank on the Slaney scale, and the overlapping frequency bands derived from it.

Mel-Band RoFormer groups STFT bins into bands given by the support of a mel filterbank. The
published checkpoints were trained with the filterbank of librosa's defaults (Slaney mel scale,
area ("slaney") normalisation, fmin 0, fmax = sample_rate / 2), so the band layout of a
checkpoint depends on which bins get a strictly positive weight. This module computes that
filterbank itself, in float64 numpy, with the same formulas and the same order of operations, so
that the set of positive weights (the only thing the model uses) is the same.

The Slaney scale is linear below 1 kHz (200/3 Hz per mel) and logarithmic above (27 mels per
factor 6.4 in frequency):

    mel(f) = f / (200/3)                                   for f <  1000 Hz
    mel(f) = 15 + 27 * ln(f / 1000) / ln(6.4)               for f >= 1000 Hz

Filter m is a triangle over the fft-bin frequencies, rising from the mel point m to the point
m + 1 and falling to the point m + 2 (points equally spaced in mel between fmin and fmax). The
Slaney normalisation scales each triangle by 2 / (width in Hz) so every filter has unit area.

Computed once when a model is built, never inside a forward pass.
"""

from __future__ import annotations

import numpy as np

# Linear part of the Slaney scale: Hz per mel below the break frequency.
_HZ_PER_MEL = 200.0 / 3.0
# Frequency where the scale turns logarithmic, and its mel value.
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _HZ_PER_MEL
# Mels per natural-log unit of frequency above the break: 27 mels per factor 6.4.
_LOG_STEP = float(np.log(6.4)) / 27.0


def hz_to_mel(frequencies: np.ndarray | float) -> np.ndarray:
    """Slaney mel value of each frequency in Hz (float64)."""
    hz = np.asarray(frequencies, dtype=np.float64)
    mels = hz / _HZ_PER_MEL
    above = hz >= _BREAK_HZ
    if mels.ndim == 0:
        if above:
            return np.asarray(_BREAK_MEL + np.log(hz / _BREAK_HZ) / _LOG_STEP)
        return mels
    mels = mels.copy()
    mels[above] = _BREAK_MEL + np.log(hz[above] / _BREAK_HZ) / _LOG_STEP
    return mels


def mel_to_hz(mels: np.ndarray | float) -> np.ndarray:
    """Frequency in Hz of each Slaney mel value (float64); inverse of `hz_to_mel`."""
    mel = np.asarray(mels, dtype=np.float64)
    hz = _HZ_PER_MEL * mel
    above = mel >= _BREAK_MEL
    if hz.ndim == 0:
        if above:
            return np.asarray(_BREAK_HZ * np.exp(_LOG_STEP * (mel - _BREAK_MEL)))
        return hz
    hz = hz.copy()
    hz[above] = _BREAK_HZ * np.exp(_LOG_STEP * (mel[above] - _BREAK_MEL))
    return hz


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    num_mels: int,
    min_hz: float = 0.0,
    max_hz: float | None = None,
) -> np.ndarray:
    """Slaney-normalised triangular mel filters, shape (num_mels, n_fft // 2 + 1), float32.

    Same values as `librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=num_mels)` with its
    defaults (htk=False, norm="slaney").
    """
    if max_hz is None:
        max_hz = sample_rate / 2.0
    num_bins = 1 + n_fft // 2
    bin_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    # num_mels + 2 points equally spaced in mel: filter m spans points m, m+1, m+2.
    mel_points = np.linspace(hz_to_mel(min_hz), hz_to_mel(max_hz), num_mels + 2)
    point_hz = mel_to_hz(mel_points)
    point_gap_hz = np.diff(point_hz)
    # offset[p, k] = point p minus bin k, in Hz.
    offset = np.subtract.outer(point_hz, bin_hz)
    weights = np.zeros((num_mels, num_bins), dtype=np.float32)
    for mel in range(num_mels):
        rising = -offset[mel] / point_gap_hz[mel]
        falling = offset[mel + 2] / point_gap_hz[mel + 1]
        weights[mel] = np.maximum(0.0, np.minimum(rising, falling))
    area_scale = 2.0 / (point_hz[2 : num_mels + 2] - point_hz[:num_mels])
    weights *= area_scale[:, np.newaxis]
    return weights


def mel_band_membership(sample_rate: int, n_fft: int, num_bands: int) -> np.ndarray:
    """Boolean (num_bands, n_fft // 2 + 1): True where a bin belongs to a band.

    A bin belongs to a band when the band's mel filter weight is positive. The DC bin is put in
    the first band and the Nyquist bin in the last one: the first filter is exactly zero at DC
    and the last one is zero (or a rounding residue) at Nyquist, and Mel-Band RoFormer needs
    every bin in at least one band.
    """
    weights = mel_filterbank(sample_rate, n_fft, num_bands)
    weights[0, 0] = 1.0
    weights[-1, -1] = 1.0
    membership = weights > 0
    if not membership.any(axis=0).all():
        uncovered = np.flatnonzero(~membership.any(axis=0))
        raise ValueError(
            f"{num_bands} mel bands at n_fft {n_fft}, {sample_rate} Hz leave bins "
            f"{uncovered.tolist()} outside every band"
        )
    return membership
