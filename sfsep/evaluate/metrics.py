"""Whole-signal separation metrics: "utterance" SDR and SI-SDR.

These are the single-number-per-track scores that the MDX challenges and ZFTurbo's
Music-Source-Separation-Training (MSST `valid.py`) report, as opposed to museval's framewise
BSSEval v4 (see `sfsep.evaluate.bsseval`). Both take signals shaped (..., channels, samples),
sum the energies over channels *and* samples (one score per source, not per channel) and
compute in float64 on the inputs' device.

Utterance SDR (MSST `utils/metrics.py:sdr`, the MDX'21/'23 "SDR"):

    SDR = 10 log10( (sum ref^2 + eps) / (sum (ref - est)^2 + eps) ),   eps = 1e-8

The eps on both sides keeps a silent reference with a silent estimate at 0 dB and a perfect
estimate finite (10 log10(1 + sum ref^2 / 1e-8)) instead of +inf. It is not a BSSEval number:
no distortion filter is allowed, so a gain or delay error counts fully as distortion.

SI-SDR (Le Roux et al., "SDR - half-baked or well done?", ICASSP 2019): the reference is
scaled by the least-squares gain alpha = <est, ref> / <ref, ref>, then

    SI-SDR = 10 log10( |alpha ref|^2 / |alpha ref - est|^2 )

with eps = 1e-8 added to the denominators of alpha and of the ratio and to the ratio itself
(so a perfect estimate gives a large finite value). MSST's `si_sdr` differs: it adds its eps
to every sample inside the sums (eps * number of samples), which shifts long tracks slightly;
we keep the textbook definition. Neither metric removes the mean.
"""

from __future__ import annotations

import torch

__all__ = ["utterance_sdr", "si_sdr", "UTTERANCE_SDR_EPS", "SI_SDR_EPS"]

#: eps added to both energies of the utterance SDR (MSST's value).
UTTERANCE_SDR_EPS = 1e-8
#: eps of the SI-SDR denominators.
SI_SDR_EPS = 1e-8


#: samples per piece: the sums run over float64 pieces of this length, not over whole-track
#: float64 copies (a 60-s 4-source stereo track would need several 170 MB temporaries, and
#: their fresh pages cost more time than the arithmetic)
_PIECE = 1 << 16


def _as_pair(reference, estimate) -> tuple[torch.Tensor, torch.Tensor]:
    reference = torch.as_tensor(reference)
    estimate = torch.as_tensor(estimate)
    if reference.shape != estimate.shape:
        raise ValueError(
            f"reference and estimate shapes differ: {tuple(reference.shape)} vs "
            f"{tuple(estimate.shape)}"
        )
    if reference.ndim < 2:
        raise ValueError("signals must be (..., channels, samples)")
    return reference, estimate.to(reference.device)


def _pieces(reference: torch.Tensor, estimate: torch.Tensor):
    """(reference, estimate) in float64 pieces along the samples."""
    for start in range(0, max(1, reference.shape[-1]), _PIECE):
        piece = (..., slice(start, start + _PIECE))
        yield reference[piece].to(torch.float64), estimate[piece].to(torch.float64)


def _sum_over_pieces(reference: torch.Tensor, estimate: torch.Tensor, terms) -> torch.Tensor:
    """sum over channels and samples of each of `terms(ref_piece, est_piece)` (a tuple of
    same-shaped tensors) -> (len(terms), ...) float64."""
    total = None
    for ref_piece, est_piece in _pieces(reference, estimate):
        sums = torch.stack([term.sum(dim=(-2, -1)) for term in terms(ref_piece, est_piece)])
        total = sums if total is None else total + sums
    return total


def utterance_sdr(
    reference: torch.Tensor, estimate: torch.Tensor, eps: float = UTTERANCE_SDR_EPS
) -> torch.Tensor:
    """Whole-signal SDR in dB over (..., channels, samples) -> (...)."""
    reference, estimate = _as_pair(reference, estimate)
    signal, error = _sum_over_pieces(
        reference, estimate, lambda ref, est: (ref.square(), (ref - est).square())
    )
    return 10 * torch.log10((signal + eps) / (error + eps))


def si_sdr(reference: torch.Tensor, estimate: torch.Tensor, eps: float = SI_SDR_EPS) -> torch.Tensor:
    """Scale-invariant SDR in dB over (..., channels, samples) -> (...)."""
    reference, estimate = _as_pair(reference, estimate)
    product, energy = _sum_over_pieces(
        reference, estimate, lambda ref, est: (est * ref, ref.square())
    )
    gain = (product / (energy + eps))[..., None, None]
    # the error is summed from the samples (a second pass), not expanded into energies,
    # which would cancel when the estimate is close to the scaled reference
    signal, error = _sum_over_pieces(
        reference, estimate, lambda ref, est: ((gain * ref).square(), (gain * ref - est).square())
    )
    return 10 * torch.log10(signal / (error + eps) + eps)
