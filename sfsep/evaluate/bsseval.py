"""BSSEval v4 (the museval "images" metrics) in torch, and museval-format score files.

This file owns four things:

1. `bss_eval_v4`: framewise SDR / ISR / SIR / SAR exactly as museval 0.4.1 computes them
   with `museval.evaluate(refs, ests, win, hop)` (mode "v4", images version, 512-tap filters),
   written from the definitions, not from museval's code.
2. `TrackScores`: one track's framewise scores, written as the JSON file museval's
   `TrackStore` writes (same layout, values quantized to 1e-5, +-inf written as NaN).
3. Aggregation: the median over frames of each track, then the median (and the mean and its
   standard error) over tracks: the "median of medians" that MUSDB results are quoted in.
4. `evaluate_track`: one track scored with museval's `eval_mus_track` target grouping.

The math
--------
Shapes follow sfsep's convention: references and estimates are (S, C, T) = (sources,
channels, samples). Write r[j,c] for reference j, channel c, and L for `filters_len` (512).

Distortion filters, once per track (this is what makes it "v4"; v3 refits them per window).
Estimate channel e[i,d] is approximated by the least-squares combination of all references
delayed by 0..L-1 samples:

    e[i,d](n) ~ sum_{j,c,a} F_i[j,c,a,d] r[j,c](n - a)

The normal equations G F_i = D_i use the Gram matrix of the delayed references

    G[(j,c,a), (k,c',b)] = sum_n r[j,c](n-a) r[k,c'](n-b) = R_rr[(j,c),(k,c')](a - b)
    D_i[(j,c,a), d]      = sum_n r[j,c](n-a) e[i,d](n)    = R_re[(j,c),(i,d)](a)

with the cross-correlations R_xy(k) = sum_m x(m) y(m + k) over the whole zero-padded track,
needed only for |k| < L, and only for k >= 0 (R_pq(-k) = R_qp(k)). We get them block by
block: the track is cut into blocks of B samples, each zero-padded to an FFT of size
N >= B + L-1 (no circular wrap-around in lags 0..L-1); the products conj(X) Y are summed
over blocks and one inverse FFT per pair gives the pairs of samples inside a block. The
pairs that straddle a block boundary (the L-1 samples of x before it with the L-1 samples
of y after it) are added from short FFTs of those edge samples. One solve with all S*C
estimate channels as right-hand sides gives every F_i (museval factors G once per
estimate). As museval, we solve (G + eps I) F = D with eps = float64 machine epsilon and
fall back to least squares when the solve fails; like museval we factor with LU (in
place). G is exactly symmetric (both triangles are filled from the same computed lags).
The per-source filters F'_j (estimate j projected on reference j alone) solve the diagonal
blocks of the same system.

Numerical caveat (museval's as much as ours): with tonal or band-limited sources G is
numerically singular (condition numbers ~1e21 on the test fixture), the filters are then
round-off, and so are ISR/SIR/SAR (not SDR, which does not depend on the filters). museval
0.4.1 itself then moves by several dB on the same input when BLAS uses another thread
count or all signals are scaled by 3. On well-conditioned input we match museval to 1e-10
dB.

Per window [s, s+W), the references are cut to the window (zero outside it) and filtered,
giving signals of W + L - 1 samples:

    s_true = r[j] on the window                  (the reference image)
    P_j    = filter r[j]-window with F'_j         (projection on source j's own subspace)
    P_all  = filter all r-windows with F_j        (projection on all references)
    est    = e[j] on the window

    SDR = 10 log10(|s_true|^2 / |est - s_true|^2)
    ISR = 10 log10(|s_true|^2 / |P_j - s_true|^2)
    SIR = 10 log10(|P_j|^2    / |P_all - P_j|^2)
    SAR = 10 log10(|P_all|^2  / |est - P_all|^2)

(these are museval's e_spat = P_j - s_true, e_interf = P_all - P_j, e_artif = est - P_all;
 a zero denominator gives +inf). The windows are not filtered one by one: by linearity,
filtering a window's references equals filtering the whole track (done once, by
overlap-save FFT blocks), minus what the L-1 samples before the window add to its first
L-1 outputs and what the L-1 samples after it add to its last L-1 outputs (short FFT
convolutions of those edge samples). The energies are then plain time-domain sums.

Framing as museval: with W < T there are floor((T - W + hop) / hop) windows starting at
t*hop, so a trailing partial window is dropped; with W >= T there is one window, the whole
track. A window is NaN for every source when any reference or any estimate is silent in it,
where "silent" means the per-sample sum over channels is zero everywhere in the window
(so a stereo source with L = -R counts as silent, as in museval). A source silent over the
whole track makes the metric undefined and raises `SilentSourceError`.
"""

from __future__ import annotations

import decimal
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from sfsep import __version__ as _sfsep_version
from sfsep.audio import write_text_atomic
from sfsep.errors import SfsepError

__all__ = [
    "METRIC_NAMES",
    "MUSEVAL_COMPAT_VERSION",
    "BSSEvalResult",
    "SilentSourceError",
    "TrackScores",
    "TrackAggregate",
    "bss_eval_v4",
    "aggregate_tracks",
    "evaluate_track",
    "nanmedian",
]

#: Metric names in the order `bss_eval_v4` returns them (museval's order).
METRIC_NAMES = ("SDR", "ISR", "SIR", "SAR")

#: The museval release whose v4 definition and JSON layout this file reproduces; checked
#: against museval 0.4.1 output (shared/fixtures/bsseval_museval*.json/npz).
MUSEVAL_COMPAT_VERSION = "0.4.1"

# Order of the metrics inside a museval JSON frame.
_JSON_METRIC_ORDER = ("SDR", "SIR", "SAR", "ISR")


class SilentSourceError(SfsepError, ValueError):
    """A reference or estimate that is all zeros over the whole track (BSSEval is undefined)."""


@dataclass
class BSSEvalResult:
    """Framewise BSSEval v4 scores, each (sources, windows) float64, NaN in silent windows.

    `window` and `hop` are in samples. `source_names` is whatever the caller passed (may be
    empty). Scores can be +inf (a zero error energy) exactly as museval returns them.
    """

    sdr: torch.Tensor
    isr: torch.Tensor
    sir: torch.Tensor
    sar: torch.Tensor
    window: int
    hop: int
    source_names: tuple[str, ...] = ()

    def __iter__(self):
        # Allows `sdr, isr, sir, sar = bss_eval_v4(...)`.
        return iter((self.sdr, self.isr, self.sir, self.sar))

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Metric name -> (sources, windows) tensor."""
        return {"SDR": self.sdr, "ISR": self.isr, "SIR": self.sir, "SAR": self.sar}

    def median(self) -> dict[str, torch.Tensor]:
        """Metric name -> (sources,) median over windows, ignoring NaN (numpy's nanmedian:
        the mean of the two middle values for an even count; NaN if every window is NaN)."""
        return {name: nanmedian(values, dim=-1) for name, values in self.as_dict().items()}


# ----------------------------------------------------------------------------------------
# BSSEval v4
# ----------------------------------------------------------------------------------------


def bss_eval_v4(
    references: torch.Tensor,
    estimates: torch.Tensor,
    window: int = 44100,
    hop: int = 44100,
    filters_len: int = 512,
    source_names: Sequence[str] | None = None,
    frames_per_batch: int = 1,
) -> BSSEvalResult:
    """Framewise BSSEval v4 images metrics, as `museval.evaluate(refs, ests, win, hop)`.

    references, estimates: (sources, channels, samples), or (sources, samples) for mono.
    Estimates are zero-padded or truncated to the references' length. The computation runs
    in float64 on the references' device. `window` and `hop` are in samples (museval's
    1-s default at 44.1 kHz is 44100). `source_names` only serves error messages and the
    result. `frames_per_batch` windows are projected together (it bounds memory; 1 is the
    fastest on a 2-core CPU with 1-s windows: larger groups allocate temporaries that the
    C allocator hands back to the system and then faults in again, group after group).
    Returns a `BSSEvalResult` (iterable as sdr, isr, sir, sar), each (sources, windows).
    """
    references, estimates = _prepare_inputs(references, estimates)
    num_sources, num_channels, length = references.shape
    names = tuple(source_names) if source_names is not None else ()
    if names and len(names) != num_sources:
        raise ValueError(f"{len(names)} source names for {num_sources} sources")
    window, hop = int(window), int(hop)
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive samples (got {window}, {hop})")
    if filters_len <= 0:
        raise ValueError(f"filters_len must be positive (got {filters_len})")
    # (2, S, T): where the channel sum of each reference / estimate is not zero
    active = torch.stack((_active_samples(references), _active_samples(estimates)))
    _check_not_silent(active[0], "reference", names)
    _check_not_silent(active[1], "estimate", names)

    filters_all, filters_own = _distortion_filters(references, estimates, filters_len)

    if window < length:
        num_windows = (length - window + hop) // hop
        window_len = window
    else:
        num_windows, window_len = 1, length
    scores = _framewise_scores(
        references, estimates, filters_all, filters_own, window_len, hop, num_windows,
        frames_per_batch,
    )
    # a window is NaN for every source when any reference or estimate is silent in it
    used = active[..., : (num_windows - 1) * hop + window_len]
    silent = ~used.unfold(-1, window_len, hop).any(dim=-1)  # (2, S, num_windows)
    scores.masked_fill_(silent.flatten(0, 1).any(dim=0), math.nan)
    sdr, isr, sir, sar = scores.unbind(0)
    return BSSEvalResult(sdr, isr, sir, sar, window=window, hop=hop, source_names=names)


def _prepare_inputs(references, estimates) -> tuple[torch.Tensor, torch.Tensor]:
    references = torch.as_tensor(references)
    estimates = torch.as_tensor(estimates)
    if references.ndim == 2:
        references = references[:, None]
    if estimates.ndim == 2:
        estimates = estimates[:, None]
    if references.ndim != 3 or estimates.ndim != 3:
        raise ValueError(
            "references and estimates must be (sources, channels, samples); got "
            f"{tuple(references.shape)} and {tuple(estimates.shape)}"
        )
    if references.shape[:2] != estimates.shape[:2]:
        raise ValueError(
            "references and estimates must have the same sources and channels; got "
            f"{tuple(references.shape)} and {tuple(estimates.shape)}"
        )
    if references.shape[-1] == 0:
        raise ValueError("references are empty (0 samples)")
    device = references.device
    # float16/32/64 inputs keep their dtype: every float16/32 value is exactly a float64, so
    # the pieces the computation reads are converted to float64 where they are used (the
    # same numbers as a float64 copy, without whole-track float64 copies whose fresh pages
    # cost time on every call). Other dtypes become float64 here. The layout is made
    # contiguous (S, C, T) in the same pass: the computation reads every signal many times,
    # and reading a channels-last view piece by piece costs more than this one copy.
    exact = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

    def on_device(signals: torch.Tensor) -> torch.Tensor:
        dtype = signals.dtype if signals.dtype in exact else torch.float64
        # (one pass: `to` converts straight into the contiguous layout, and `contiguous`
        # then has nothing to do; for a matching dtype `to` returns the view itself,
        # which `contiguous` copies)
        return signals.to(device=device, dtype=dtype, memory_format=torch.contiguous_format).contiguous()

    references, estimates = on_device(references), on_device(estimates)
    length = references.shape[-1]
    if estimates.shape[-1] > length:
        estimates = estimates[..., :length]
    elif estimates.shape[-1] < length:
        estimates = torch.nn.functional.pad(estimates, (0, length - estimates.shape[-1]))
    return references, estimates


def _active_samples(signals: torch.Tensor) -> torch.Tensor:
    """(S, T) True where the sum over channels of a (S, C, T) signal is not zero (the
    channels added in order, as numpy sums a short axis)."""
    active = torch.empty(signals.shape[0], signals.shape[2], dtype=torch.bool, device=signals.device)
    step = 1 << 16  # (pieces keep the temporaries small: large ones cost fresh pages each call)
    for start in range(0, signals.shape[2], step):
        piece = signals[..., start : start + step].to(torch.float64)
        total = piece[:, 0]
        for channel in range(1, signals.shape[1]):
            total = total + piece[:, channel]
        torch.ne(total, 0, out=active[:, start : start + step])
    return active


def _check_not_silent(active: torch.Tensor, kind: str, names: tuple[str, ...]) -> None:
    silent = ~active.any(dim=-1)
    if bool(silent.any()):
        index = int(torch.nonzero(silent)[0])
        label = f"'{names[index]}' (source {index})" if names else f"source {index}"
        raise SilentSourceError(
            f"The {kind} {label} is silent over the whole track (its channel sum is zero "
            "everywhere), so BSSEval is undefined for it. Leave that source out of the "
            "evaluation or check the file it came from."
        )


def _next_fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (sizes every FFT library handles quickly)."""
    best = 1 << max(0, (n - 1).bit_length())
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35
            while candidate < n:
                candidate *= 2
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def _segments_into(
    out: torch.Tensor, signals: torch.Tensor, first: int, step: int, width: int
) -> None:
    """out[..., i, :] = signals[..., s : s + width] with s = first + i * step, converted to
    out's dtype, zeros past the end of the track. signals: (..., T) in any layout; out: a
    (..., count, width) view with the same leading dimensions."""
    count, length = out.shape[-2], signals.shape[-1]
    inside = count  # the segments lying wholly inside the track, gathered as one view
    while inside and first + (inside - 1) * step + width > length:
        inside -= 1
    if inside:
        out[..., :inside, :] = signals[..., first : first + (inside - 1) * step + width].unfold(
            -1, width, step
        )
    for index in range(inside, count):
        begin = first + index * step
        piece = signals[..., begin : max(begin, min(begin + width, length))]
        out[..., index, : piece.shape[-1]] = piece
        out[..., index, piece.shape[-1] :] = 0


def _add_conj_products(products: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """products[f] += conj(left[f])^T right[f]: (F, P, Q) complex sums over b of
    conj(left[f, b, p]) right[f, b, q], for left (F, b, P) and right (F, b, Q) complex.

    One complex batched product (batch = frequency); the conjugate transpose is a flag
    of the BLAS call, not a copy."""
    products.baddbmm_(left.transpose(1, 2).conj(), right)


def _cross_correlations(
    left: torch.Tensor, others: torch.Tensor, max_lag: int, block_fft: int
) -> torch.Tensor:
    """R[p, q, k] = sum_m left[p](m) right[q](m + k) for 0 <= k <= max_lag, where right =
    left followed by others.

    left: (..., T) with P signals in its leading dimensions, others: (..., T) with Q - P,
    in any memory layout, all zero outside [0, T). Returns (P, Q, max_lag + 1)
    float64. Computed block by block (see the module docstring) so memory does not grow
    with T: the sums over pairs inside each block of B = block_fft - max_lag samples, plus
    the sums over the pairs that straddle a boundary between two blocks.
    """
    length = left.shape[-1]
    num_left = left.shape[:-1].numel()
    num_right = num_left + others.shape[:-1].numel()
    block = block_fft - max_lag  # N >= B + max_lag: no circular wrap-around in lags 0..max_lag
    num_blocks = -(-length // block)
    num_bins = block_fft // 2 + 1
    float64 = {"dtype": torch.float64, "device": left.device}
    complex128 = {"dtype": torch.complex128, "device": left.device}
    groups = ((left, slice(0, num_left)), (others, slice(num_left, num_right)))

    # Pairs inside a block. A group of blocks is copied time-major into a buffer whose rows
    # [B, N) stay zero (the FFT's padding); the FFT along time writes the spectra straight
    # into the (F, block, signal) layout the batched products read.
    products = torch.zeros(num_bins, num_left, num_right, **complex128)
    blocks_per_step = max(1, min(num_blocks, (1 << 20) // (block_fft * num_right)))
    buffer = torch.zeros(blocks_per_step, block_fft, num_right, **float64)
    spectra = torch.empty(num_bins * blocks_per_step * num_right, **complex128)
    for first in range(0, num_blocks, blocks_per_step):
        count = min(num_blocks, first + blocks_per_step) - first
        for signals, columns in groups:
            target = buffer[:count, :block, columns].permute(2, 0, 1)  # (signal, block, time)
            _segments_into(
                target.unflatten(0, signals.shape[:-1]), signals, first * block, block, block
            )
        spectrum = spectra[: num_bins * count * num_right].view(num_bins, count, num_right)
        torch.fft.rfft(buffer[:count], dim=1, out=spectrum.transpose(0, 1))
        _add_conj_products(products, spectrum[..., :num_left], spectrum)
    correlations = torch.fft.irfft(products.permute(1, 2, 0), n=block_fft)
    correlations = correlations[..., : max_lag + 1].contiguous()
    if num_blocks == 1 or max_lag == 0:
        return correlations

    # Pairs across the boundary s = b*B: x on [s - max_lag, s), y on [s, s + max_lag).
    # With x' = x[s - max_lag + u] and y' = y[s + v], the pair at lag k has v = u + k -
    # max_lag: lags 1..max_lag are lags 1-max_lag..0 of the short correlation of x', y'.
    boundary_fft = _next_fast_len(2 * max_lag)  # >= 2*max_lag - 1: no wrap-around
    boundary_bins = boundary_fft // 2 + 1
    boundaries = num_blocks - 1
    products = torch.zeros(boundary_bins, num_left, num_right, **complex128)
    per_step = max(1, min(boundaries, (1 << 20) // (boundary_fft * num_right)))
    tails = torch.empty(num_left, per_step, max_lag, **float64)
    heads = torch.empty(num_right, per_step, max_lag, **float64)
    tail_spectra = torch.empty(boundary_bins, per_step, num_left, **complex128)
    head_spectra = torch.empty(boundary_bins, per_step, num_right, **complex128)
    for first in range(0, boundaries, per_step):
        count = min(boundaries, first + per_step) - first
        boundary = (first + 1) * block  # position of this step's first boundary
        _segments_into(
            tails[:, :count].unflatten(0, left.shape[:-1]), left, boundary - max_lag, block, max_lag
        )
        for signals, rows in groups:
            _segments_into(
                heads[rows, :count].unflatten(0, signals.shape[:-1]), signals, boundary, block, max_lag
            )
        tail_spectrum, head_spectrum = tail_spectra[:, :count], head_spectra[:, :count]
        torch.fft.rfft(tails[:, :count], n=boundary_fft, out=tail_spectrum.permute(2, 1, 0))
        torch.fft.rfft(heads[:, :count], n=boundary_fft, out=head_spectrum.permute(2, 1, 0))
        _add_conj_products(products, tail_spectrum, head_spectrum)
    circular = torch.fft.irfft(products.permute(1, 2, 0), n=boundary_fft)
    # short-correlation lag l sits at index l mod N: lags 1-max_lag..-1, then lag 0
    correlations[..., 1:-1] += circular[..., boundary_fft - max_lag + 1 :]
    correlations[..., -1] += circular[..., 0]
    return correlations


def _solve_regularized(
    gram: torch.Tensor, rebuild: Callable[[], torch.Tensor], rhs: torch.Tensor
) -> torch.Tensor:
    """Solve (gram + eps I) x = rhs, eps = float64 machine epsilon, as museval does: LU with
    partial pivoting (numpy.linalg.solve), and least squares on the gram without eps
    (numpy.linalg.lstsq) if LU fails.

    gram (exactly symmetric, contiguous) is overwritten: LU runs in place, because a copy
    of a 4096 x 4096 matrix is 128 MB of fresh memory whose page faults cost as much as a
    tenth of the factorization. `rebuild()` returns the same matrix anew for the fallback.
    (Cholesky would do half the work on a positive definite gram, but the grams of tonal or
    band-limited sources are numerically singular, and a Cholesky that breaks down late
    costs its own time plus the LU's: on a synthetic 60-s track whose per-source blocks factored
    fine, the whole solve took 1.1-1.3 s that way against 0.55 s with LU alone.)
    """
    gram.diagonal().add_(torch.finfo(torch.float64).eps)
    # (no batched LU: it is broken on CPU in torch 2.13 for 256 rows and more)
    # gram is exactly symmetric: its transpose, a column-major view, is the same matrix in
    # the layout LAPACK factors in place
    pivots = torch.empty(gram.shape[0], dtype=torch.int32, device=gram.device)
    info = torch.empty((), dtype=torch.int32, device=gram.device)
    factors, pivots, _ = torch.linalg.lu_factor_ex(gram.mT, out=(gram.mT, pivots, info))
    if int(info) == 0:
        solution = torch.linalg.lu_solve(factors, pivots, rhs)
        if bool(torch.isfinite(solution).all()):
            return solution
    # numpy's lstsq, which museval calls, is LAPACK gelsd (SVD, singular values below
    # eps * max(m, n) * the largest one taken as zero); torch's CPU default, gelsy, returns
    # garbage on some of these matrices. CUDA has only gels.
    driver = "gelsd" if gram.device.type == "cpu" else None
    return torch.linalg.lstsq(rebuild(), rhs, driver=driver).solution


def _block_toeplitz(ref_ref: torch.Tensor, filters_len: int) -> torch.Tensor:
    """gram[(p, a), (q, b)] = R_pq(a - b) = ref_ref[p, q, a - b + L-1], as a (P*L, P*L) matrix.

    That is a strided view of ref_ref with a negative stride along b. numpy allows one,
    so on CPU the matrix is gathered in a single pass; torch does not, so elsewhere the
    view is taken with b reversed (b' = L-1 - b: ref_ref[p, q, a + b']) and flipped back,
    which costs a second pass over the 4096 x 4096 matrix.
    """
    num_signals = ref_ref.shape[0]
    size = num_signals * filters_len
    ref_ref = ref_ref.contiguous()
    if ref_ref.device.type == "cpu":
        lags = ref_ref.numpy()
        stride_p, stride_q, stride_k = lags.strides
        view = np.lib.stride_tricks.as_strided(
            lags[:, :, filters_len - 1 :],
            (num_signals, filters_len, num_signals, filters_len),
            (stride_p, stride_k, stride_q, -stride_k),
        )
        # (into torch's memory: numpy asks the kernel for huge pages for an array this
        # large, and compacting memory for them stalled some calls by up to 0.3 s)
        gram = torch.empty(size, size, dtype=ref_ref.dtype)
        np.copyto(gram.numpy().reshape(view.shape), view)
        return gram
    stride_p, stride_q, stride_k = ref_ref.stride()
    return ref_ref.as_strided(
        (num_signals, filters_len, num_signals, filters_len),
        (stride_p, stride_k, stride_q, stride_k),
    ).flip(-1).reshape(size, size)


def _distortion_filters(
    references: torch.Tensor, estimates: torch.Tensor, filters_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-track least-squares filters.

    Returns filters_all (S_est, S_ref, C_ref, C_est, L): estimate i from all references, and
    filters_own (S, C_ref, C_est, L): estimate j from reference j alone.
    """
    num_sources, num_channels, _ = references.shape
    num_signals = num_sources * num_channels
    lags = filters_len - 1
    block_fft = max(8192, 1 << (8 * lags).bit_length())
    correlations = _cross_correlations(references, estimates, lags, block_fft)  # (P, 2P, L)
    ref_est = correlations[:, num_signals:]  # (P, P, L), lag a >= 0
    # R_pq at lags -(L-1)..L-1, index k + L-1: the negative lags are R_pq(-k) = R_qp(k).
    # So both symmetric positions of a gram entry read the same computed value (lag 0 of
    # R_pq and R_qp, equal in exact arithmetic, are averaged): the gram is exactly
    # symmetric, and its transpose is the same matrix (see _solve_regularized).
    positive = correlations[:, :num_signals]
    ref_ref = torch.cat((positive.transpose(0, 1).flip(-1)[..., :lags], positive), dim=-1)
    ref_ref[..., lags] = 0.5 * (positive[..., 0] + positive[..., 0].T)
    gram = _block_toeplitz(ref_ref, filters_len)
    rhs = ref_est.permute(0, 2, 1).reshape(num_signals * filters_len, num_signals)

    # Each source alone (its diagonal block), then the whole system.
    block = num_channels * filters_len
    own_solutions = []
    for j in range(num_sources):
        rows = slice(j * block, (j + 1) * block)

        def own_block(rows: slice = rows) -> torch.Tensor:
            return gram[rows, rows].clone()

        own_solutions.append(  # (C*L, C): rows (c, a), columns d
            _solve_regularized(own_block(), own_block, rhs[rows, j * num_channels : (j + 1) * num_channels])
        )
    filters_own = torch.stack(own_solutions).reshape(num_sources, num_channels, filters_len, num_channels)
    filters_own = filters_own.permute(0, 1, 3, 2)  # (j, c, d, a)

    # the whole system, factored in the gram built above (rebuilt from the lags if need be)
    solution = _solve_regularized(gram, lambda: _block_toeplitz(ref_ref, filters_len), rhs)
    filters_all = solution.reshape(num_sources, num_channels, filters_len, num_sources, num_channels)
    filters_all = filters_all.permute(3, 0, 1, 4, 2)  # (i, j, c, d, a), rows were (j, c, a)
    return filters_all.contiguous(), filters_own.contiguous()


def _framewise_scores(
    references: torch.Tensor,
    estimates: torch.Tensor,
    filters_all: torch.Tensor,
    filters_own: torch.Tensor,
    window_len: int,
    hop: int,
    num_windows: int,
    frames_per_batch: int,
) -> torch.Tensor:
    """(4, S, num_windows) scores (silent windows not masked yet); see the module
    docstring for the definitions.

    The projections of a window are not filtered window by window. By linearity, filtering
    the window's references (zero outside the window) equals filtering the whole track,
    minus what the L-1 samples just before the window add to its first L-1 outputs, minus
    what the L-1 samples just after it add to its last L-1 outputs. So the whole track is
    filtered once (overlap-save FFT blocks, a group of windows at a time to bound memory),
    the two edge corrections come from short FFT convolutions of all windows at once, and
    the energies are time-domain sums: plain window sums inside, corrected values at the
    edges.
    """
    num_sources, num_channels, length = references.shape
    num_signals = num_sources * num_channels
    filters_len = filters_all.shape[-1]
    edge = filters_len - 1  # outputs a filter adds past its input; taps that reach back
    head = min(edge, window_len)  # window-local samples that need the "before" correction
    inner = window_len - head  # samples inside the window that need no correction
    contiguous = torch.contiguous_format

    # One kernel bank, outputs x inputs x taps: rows 0..P-1 are the all-references
    # projections (i, d), rows P..2P-1 the own-reference ones (j, d), columns the
    # references (j, c).
    kernels = filters_all.new_zeros(2 * num_signals, num_signals, filters_len)
    kernels[:num_signals] = filters_all.permute(0, 3, 1, 2, 4).reshape(
        num_signals, num_signals, filters_len
    )
    for j in range(num_sources):
        rows = slice(j * num_channels, (j + 1) * num_channels)
        kernels[num_signals + j * num_channels : num_signals + (j + 1) * num_channels, rows] = (
            filters_own[j].permute(1, 0, 2)  # (c, d, a) -> (d, c, a)
        )
    track_fft = _next_fast_len(max(4096, 8 * filters_len))
    track_step = track_fft - edge
    # (F, P, 2P) complex: row p of bin f takes input p to every output
    track_kernels = torch.fft.rfft(kernels, n=track_fft).permute(2, 1, 0).contiguous()
    edge_fft = _next_fast_len(max(1, 2 * edge))  # full convolution of edge samples: 2L-2
    edge_kernels = torch.fft.rfft(kernels, n=edge_fft).permute(2, 1, 0).contiguous()

    def track_piece(signals: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """(S, C, T) signals[..., start:stop] as (P, stop - start) float64 with zeros outside
        the track."""
        inside = signals[..., max(start, 0) : min(stop, length)]
        inside = inside.to(torch.float64, memory_format=contiguous).flatten(0, 1)
        before, after = max(0, -start), max(0, stop - max(start, length))
        if before or after:
            inside = torch.nn.functional.pad(inside, (before, after))
        return inside

    def apply_kernels(pieces: torch.Tensor, spectra: torch.Tensor, fft_size: int) -> torch.Tensor:
        """Circular convolution of (P, n, fft_size) pieces -> (2P, n, fft_size)."""
        # the spectra are written straight into the (F, n, P) layout the product reads
        # (rfft's own output is frequency-contiguous and would need a transposing copy)
        num_bins, num_pieces = fft_size // 2 + 1, pieces.shape[1]
        spectrum = torch.empty(
            num_bins, num_pieces, num_signals, dtype=torch.complex128, device=pieces.device
        )
        torch.fft.rfft(pieces, n=fft_size, out=spectrum.permute(2, 1, 0))
        product = torch.bmm(spectrum, spectra)  # (F, n, 2P), one complex product per bin
        # the inverse FFT along the frequency axis reads this layout as it is and returns
        # a (time, n, 2P) view of time-contiguous memory
        result = torch.fft.irfft(product, n=fft_size, dim=0)
        return result.permute(2, 1, 0)

    def channel_sum(power: torch.Tensor) -> torch.Tensor:  # (..., P, windows) -> (..., S, windows)
        return power.unflatten(-2, (num_sources, num_channels)).sum(dim=-2)

    sums = filters_all.new_zeros(7, num_sources, num_windows)
    for first in range(0, num_windows, frames_per_batch):
        count = min(num_windows, first + frames_per_batch) - first
        origin = first * hop  # track position of the group's first window
        covered = (count - 1) * hop + window_len  # window samples of the group
        outputs = covered + edge  # projection samples of the group
        # Whole-track filtering on [origin, origin + outputs) by overlap-save: block b reads
        # the input from origin - edge + b*step on, its last `step` outputs are kept.
        num_blocks = -(-outputs // track_step)
        source = track_piece(references, origin - edge, origin + num_blocks * track_step)
        filtered = apply_kernels(source.unfold(-1, track_fft, track_step), track_kernels, track_fft)
        filtered = filtered[..., edge:].reshape(2 * num_signals, -1)[:, :outputs]

        # Edge corrections: the edge samples before and after every window, filtered.
        spans = source.unfold(-1, window_len + 2 * edge, hop)[:, :count]  # (P, count, W + 2 edge)
        outside = torch.cat((spans[..., :edge], spans[..., window_len + edge :]), dim=1)
        corrections = apply_kernels(outside, edge_kernels, edge_fft)  # (2P, 2 count, N)
        before = corrections[:, :count, edge : 2 * edge]  # at window samples 0 .. edge-1
        after = corrections[:, count:, :edge]  # at window samples W .. W+edge-1
        if window_len < edge:  # the "before" correction also reaches past the window
            after = after + torch.nn.functional.pad(before[..., window_len:], (0, window_len))

        # per-sample powers of the group's windows (r and e are zero past a window's end)
        ref_part = track_piece(references, origin, origin + covered)
        est_part = track_piece(estimates, origin, origin + covered)
        frames = filtered.unfold(-1, window_len + edge, hop)  # (2P, count, W + edge)
        ref_frames = ref_part.unfold(-1, window_len, hop)
        est_frames = est_part.unfold(-1, window_len, hop)
        norms = [
            torch.linalg.vector_norm(values, dim=-1)
            for values in (ref_frames, est_frames - ref_frames)
        ]
        sums[:2, :, first : first + count] = channel_sum(torch.stack(norms).square())
        pieces = []
        if inner > 0:
            pieces.append(
                (frames[:, :, head:window_len], ref_frames[..., head:], est_frames[..., head:])
            )
        if head > 0:
            pieces.append(
                (frames[:, :, :head] - before[..., :head], ref_frames[..., :head], est_frames[..., :head])
            )
        if edge > 0:
            pieces.append((frames[:, :, window_len:] - after, None, None))
        for projected, ref_piece, est_piece in pieces:
            proj_all, proj_own = projected[:num_signals], projected[num_signals:]
            own_error = proj_own if ref_piece is None else proj_own - ref_piece
            artifacts = proj_all if est_piece is None else est_piece - proj_all
            norms = [
                torch.linalg.vector_norm(values, dim=-1)
                for values in (own_error, proj_own, proj_all - proj_own, proj_all, artifacts)
            ]
            sums[2:, :, first : first + count] += channel_sum(torch.stack(norms).square())

    true_energy, sdr_den, isr_den, sir_num, sir_den, sar_num, sar_den = sums.unbind(0)
    scores = torch.stack(
        (
            _ratio_db(true_energy, sdr_den),
            _ratio_db(true_energy, isr_den),
            _ratio_db(sir_num, sir_den),
            _ratio_db(sar_num, sar_den),
        )
    )
    return scores


def _ratio_db(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """10 log10(num / den), +inf where den == 0 (as museval)."""
    ratio = 10 * torch.log10(numerator / denominator)
    return torch.where(denominator == 0, torch.full_like(ratio, math.inf), ratio)


# ----------------------------------------------------------------------------------------
# Medians
# ----------------------------------------------------------------------------------------


def nanmedian(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Median along `dim` ignoring NaN, numpy style: the mean of the two middle values for
    an even count (torch.nanmedian takes the lower one), NaN when every value is NaN."""
    values = torch.as_tensor(values, dtype=torch.float64)
    values = values.movedim(dim, -1)
    ordered, _ = torch.sort(values, dim=-1)  # NaN sort last
    count = (~torch.isnan(values)).sum(dim=-1, keepdim=True)
    lower = ((count - 1).clamp(min=0)) // 2
    upper = count // 2
    upper = torch.where(count == 0, torch.zeros_like(upper), upper)
    low_value = torch.gather(ordered, -1, lower)
    high_value = torch.gather(ordered, -1, upper.clamp(max=values.shape[-1] - 1))
    median = torch.where(upper == lower, low_value, 0.5 * (low_value + high_value))
    median = torch.where(count == 0, torch.full_like(median, math.nan), median)
    return median.squeeze(-1)


# ----------------------------------------------------------------------------------------
# museval-format track scores
# ----------------------------------------------------------------------------------------

_QUANTUM = decimal.Decimal("0.00001")


def _quantize(value: float) -> decimal.Decimal | None:
    """museval's storage rule: the exact binary value rounded half-even to 1e-5; +-inf and
    NaN become NaN (returned as None)."""
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return None
    return decimal.Decimal(value).quantize(_QUANTUM, context=decimal.Context(prec=60))


@dataclass
class TrackScores:
    """One track's framewise scores in museval's `TrackStore` layout.

    `targets` maps target name -> metric name -> framewise values, already quantized to
    1e-5 with +-inf stored as NaN (the values museval writes and aggregates). Window and hop
    are in seconds (the JSON's `time` = i * hop, `duration` = win).

    The JSON's "museval_version" is `MUSEVAL_COMPAT_VERSION` + "+sfsep.<version>", e.g.
    "0.4.1+sfsep.0.1.0": a PEP 440 local version that tools comparing versions read as the
    museval release whose metric and format this file follows, while saying who wrote it.
    """

    track_name: str
    win: float = 1.0
    hop: float = 1.0
    targets: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    museval_version: str = f"{MUSEVAL_COMPAT_VERSION}+sfsep.{_sfsep_version}"

    def add_target(self, name: str, sdr, isr, sir, sar) -> None:
        """Add one target's framewise values (any 1-D sequences or tensors of equal length)."""
        columns = {"SDR": sdr, "ISR": isr, "SIR": sir, "SAR": sar}
        lists = {}
        for metric, values in columns.items():
            flat = torch.as_tensor(values, dtype=torch.float64).flatten().tolist()
            lists[metric] = [math.nan if q is None else float(q) for q in map(_quantize, flat)]
        lengths = {len(v) for v in lists.values()}
        if len(lengths) != 1:
            raise ValueError(f"target {name!r}: metrics have different frame counts {lengths}")
        if name in self.targets:
            raise ValueError(f"target {name!r} is already in the scores of {self.track_name!r}")
        self.targets[name] = lists

    @classmethod
    def from_result(
        cls,
        track_name: str,
        result: BSSEvalResult,
        rate: int,
        target_names: Sequence[str] | None = None,
    ) -> "TrackScores":
        """Scores of every source of `result`; names from `target_names` or the result."""
        names = tuple(target_names) if target_names is not None else result.source_names
        if len(names) != result.sdr.shape[0]:
            raise ValueError(f"{len(names)} target names for {result.sdr.shape[0]} sources")
        scores = cls(track_name, win=result.window / rate, hop=result.hop / rate)
        for index, name in enumerate(names):
            scores.add_target(
                name, result.sdr[index], result.isr[index], result.sir[index], result.sar[index]
            )
        return scores

    def frame_medians(self) -> dict[str, dict[str, float]]:
        """target -> metric -> median over frames ignoring NaN (museval's frames_agg)."""
        return {
            target: {m: _nan_median_list(values) for m, values in metrics.items()}
            for target, metrics in self.targets.items()
        }

    def to_json(self) -> str:
        """The JSON text museval writes (indent 2, bare NaN, values with 5 decimals)."""
        numbers: list[str] = []

        def token(value: float) -> str:
            quantized = _quantize(value)
            numbers.append("NaN" if quantized is None else str(quantized))
            return f"@@{len(numbers) - 1}@@"

        document = {
            "targets": [
                {
                    "name": name,
                    "frames": [
                        {
                            "time": index * float(self.hop),
                            "duration": float(self.win),
                            "metrics": {m: token(metrics[m][index]) for m in _JSON_METRIC_ORDER},
                        }
                        for index in range(len(metrics["SDR"]))
                    ],
                }
                for name, metrics in self.targets.items()
            ],
            "museval_version": self.museval_version,
        }
        text = json.dumps(document, indent=2)
        return re.sub(r'"@@(\d+)@@"', lambda match: numbers[int(match.group(1))], text)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON to `path` (folders created; written to a temporary name, then renamed)."""
        return write_text_atomic(path, self.to_json())

    @classmethod
    def from_json(cls, text: str, track_name: str) -> "TrackScores":
        """Read museval's JSON text (bare NaN tokens allowed)."""
        document = json.loads(text)
        scores = cls(track_name, museval_version=str(document.get("museval_version", "")))
        for target in document.get("targets", []):
            frames = target.get("frames", [])
            if frames:
                scores.win = float(frames[0]["duration"])
                # time = i * hop; with one frame the hop is not recorded, take the window
                later = frames[1]["time"] if len(frames) > 1 else frames[0]["duration"]
                scores.hop = float(later) - float(frames[0]["time"])
            scores.targets[target["name"]] = {
                m: [_json_number(frame["metrics"][m]) for frame in frames] for m in METRIC_NAMES
            }
        return scores

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrackScores":
        """Read a museval JSON file; the track name is the file name without `.json`."""
        path = Path(path)
        return cls.from_json(path.read_text(encoding="utf-8"), track_name=path.stem)


def _json_number(value) -> float:
    return math.nan if value is None else float(value)


def _nan_median_list(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan
    return float(np.median(np.asarray(finite, dtype=np.float64)))


# ----------------------------------------------------------------------------------------
# One track, museval's target grouping
# ----------------------------------------------------------------------------------------


def evaluate_track(
    track_name: str,
    references: dict[str, torch.Tensor],
    estimates: dict[str, torch.Tensor],
    rate: int,
    win: float = 1.0,
    hop: float = 1.0,
    filters_len: int = 512,
) -> TrackScores:
    """Score one track the way museval's `eval_mus_track` does, as `TrackScores`.

    references / estimates: target name -> (channels, samples). Targets are the estimate
    names that have a reference, in the references' order. As in museval, when both
    "vocals" and "accompaniment" are given they are scored as a separate two-source problem,
    and the other targets (vocals included, accompaniment left out) are scored jointly, the
    vocals' joint scores being discarded; a joint group needs at least two targets. Window
    and hop are in seconds; in samples they are int(seconds * rate), as in museval.
    """
    targets = [name for name in references if name in estimates]
    has_accompaniment = "vocals" in targets and "accompaniment" in targets
    joint = [name for name in targets if not (has_accompaniment and name == "accompaniment")]
    window, hop_samples = int(win * rate), int(hop * rate)
    scores = TrackScores(track_name, win=float(win), hop=float(hop))

    def score(group: list[str], keep: list[str]) -> None:
        result = bss_eval_v4(
            torch.stack([torch.as_tensor(references[name]) for name in group]),
            torch.stack([_to_length(estimates[name], references[name]) for name in group]),
            window, hop_samples, filters_len=filters_len, source_names=group,
        )
        for index, name in enumerate(group):
            if name in keep:
                scores.add_target(
                    name, result.sdr[index], result.isr[index], result.sir[index], result.sar[index]
                )

    if len(joint) >= 2:
        score(joint, [name for name in joint if not (has_accompaniment and name == "vocals")])
    elif not has_accompaniment:
        raise ValueError(
            f"track {track_name!r}: BSSEval needs at least two targets to score jointly (got "
            f"{targets}); add the complement, e.g. 'accompaniment' = mixture - vocals"
        )
    if has_accompaniment:
        score(["vocals", "accompaniment"], ["vocals", "accompaniment"])
    return scores


def _to_length(estimate, reference) -> torch.Tensor:
    """Zero-pad or truncate an estimate to its reference's length (stacking needs it)."""
    estimate = torch.as_tensor(estimate)
    length = torch.as_tensor(reference).shape[-1]
    if estimate.shape[-1] >= length:
        return estimate[..., :length]
    return torch.nn.functional.pad(estimate, (0, length - estimate.shape[-1]))


# ----------------------------------------------------------------------------------------
# Aggregation over tracks
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackAggregate:
    """One (target, metric) over tracks, from each track's median over frames.

    median: the median over tracks (the MUSDB headline "median of frame medians");
    mean, stderr: mean over tracks and its standard error (sample std / sqrt(n));
    count: tracks that had a value (tracks whose frames are all NaN are left out, as pandas
    does in museval's EvalStore). NaN when count is 0 (stderr also when count is 1).
    """

    median: float
    mean: float
    stderr: float
    count: int


def aggregate_tracks(tracks: Iterable[TrackScores]) -> dict[str, dict[str, TrackAggregate]]:
    """target -> metric -> `TrackAggregate` over tracks (median over frames first)."""
    per_target: dict[str, dict[str, list[float]]] = {}
    for track in tracks:
        for target, metrics in track.frame_medians().items():
            for metric, value in metrics.items():
                per_target.setdefault(target, {}).setdefault(metric, []).append(value)
    result: dict[str, dict[str, TrackAggregate]] = {}
    for target, metrics in per_target.items():
        result[target] = {}
        for metric in METRIC_NAMES:
            values = np.asarray(
                [v for v in metrics.get(metric, []) if not math.isnan(v)], dtype=np.float64
            )
            count = int(values.size)
            if count == 0:
                result[target][metric] = TrackAggregate(math.nan, math.nan, math.nan, 0)
                continue
            stderr = float(values.std(ddof=1) / math.sqrt(count)) if count > 1 else math.nan
            result[target][metric] = TrackAggregate(
                float(np.median(values)), float(values.mean()), stderr, count
            )
    return result
