"""The windowed-sinc interpolation kernel: its geometry, its time grid and its values.

This file owns the *what* of resampling (which weights the filter has); `polyphase.py` owns the
*how* (running those weights over a signal). The numbers are chosen so that the conventional
kernel is the one torchaudio builds for
``resample(x, input_rate, output_rate, lowpass_filter_width=24, rolloff=0.99,
resampling_method="sinc_interp_kaiser")``, computed here in float64.

The derivation
--------------
Reduce the two rates by their greatest common divisor g::

    input_stride = input_rate // g      (o: input samples per period)
    phases       = output_rate // g     (n: output samples per period)

A *period* is 1/g seconds. In one period the input advances by o samples and the output by n
samples, and after it the pattern of relative positions repeats. So only n distinct filters are
needed, one per output *phase* p = 0..n-1, and we measure time in periods: input sample i sits
at i/o, output sample m = j*n + p at j + p/n (j counts periods, or *frames*).

Ideal band-limited interpolation evaluates the signal between its samples with a low-pass
impulse response. The cut-off must sit below the Nyquist frequency of the slower of the two
rates, or downsampling would alias: with a safety margin `rolloff` (0.99) the cut-off is::

    f_c = rolloff * min(o, n) / 2          (cycles per period)

and the ideal low-pass is h(tau) = 2 f_c sinc(2 f_c tau), sinc(u) = sin(pi u) / (pi u). Writing
``cutoff = 2 f_c = rolloff * min(o, n)``, its zero crossings fall every 1/cutoff periods. It is
convenient to count time in those zero crossings::

    t = tau * cutoff,     h = cutoff * sinc(t)

The sum over input samples spaced 1/o apart approximates the convolution integral, so each tap
carries a factor 1/o: the discrete weight is ``(cutoff / o) * sinc(t)``. This gives each phase a
DC gain of (very nearly) 1, whatever the ratio.

The sinc never ends, so it is cut to ``lowpass_width`` zero crossings on each side (24, i.e. 48
in all) and tapered by a Kaiser window w(t) = I0(beta sqrt(1 - (t/L)^2)) / I0(beta), L the
lowpass width, which falls from 1 at the centre to 1/I0(beta) ~ 4e-6 at |t| = L. Times beyond
that are clamped to +-L, where the sinc is zero (to rounding), so those taps carry no weight.

How many input samples does the kernel need? L zero crossings are L / cutoff periods, i.e.
L * o / cutoff input samples, rounded up::

    width = ceil(L * o / cutoff)

Output phase p sits between the first input sample of its frame and o samples later, so one
kernel row that covers [-width, width + o) input samples around the frame start serves every
phase: ``taps = 2 * width + o``. Tap k of a frame reads input sample ``frame_start + k - width``
and lies ``tau = (k - width)/o - p/n`` periods away from output phase p.

The kernel is therefore an (n, taps) matrix, phase by tap. Its rows are not per-sample: the
same n rows are reused in every frame, which is what keeps large ratios cheap (44100 -> 48000
needs 160 rows of 197 taps, not one row per output sample).

Upsampling by a large factor (8000 -> 44100: o=80, n=441) uses many phases and few input
samples per period; downsampling by a large factor (44100 -> 8000: o=441, n=80) uses a wide
kernel, because the cut-off follows the *low* rate: width = 134 input samples there.

Differences from torchaudio
---------------------------
- Everything here is float64 and cast afterwards; torchaudio builds the kernel in the input's
  dtype (float32 for float32 audio). The two agree to a few 1e-6.
- beta is the Python float 14.769656459379492; torchaudio rounds it to a float32 tensor first
  (a relative change of 1e-8, invisible in the kernel).

The hook for learned kernels
----------------------------
`kernel_time_offsets` returns the clamped grid ``t`` (in zero crossings) before any window is
applied. Any function of ``t`` evaluated on it, multiplied by ``geometry.gain`` if it should keep
unit DC gain, is a valid kernel for `sfsep.resample.polyphase.apply_kernel`; that is how a
trainable (MLP) kernel runs on the same machine. `conventional_kernel` is exactly
``gain * sinc(t) * kaiser(t)``.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import torch

from sfsep.errors import ResampleError

LOWPASS_WIDTH = 24
"""Zero crossings of the sinc kept on each side of the centre (48 in all)."""

ROLLOFF = 0.99
"""Cut-off as a fraction of the lower rate's Nyquist frequency."""

KAISER_BETA = 14.769656459379492
"""Kaiser window shape; torchaudio's default for sinc_interp_kaiser."""


def check_rate(rate: object, name: str) -> int:
    """Return `rate` as a positive int Hz, or raise ResampleError naming `name`.

    Integer-valued floats (44100.0) are accepted; bools, fractions and non-numbers are not.
    """
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise ResampleError(
            f"{name} must be a whole number of Hz (e.g. 44100), got {rate!r} of type "
            f"{type(rate).__name__}"
        )
    if isinstance(rate, numbers.Integral):
        value = int(rate)
    else:
        as_float = float(rate)
        if not math.isfinite(as_float) or not as_float.is_integer():
            raise ResampleError(f"{name} must be a whole number of Hz (e.g. 44100), got {rate!r}")
        value = int(as_float)
    if value <= 0:
        raise ResampleError(f"{name} must be a positive number of Hz, got {value}")
    return value


@dataclass(frozen=True)
class KernelGeometry:
    """Shape of the polyphase machine for one (input_rate, output_rate) pair.

    Attributes:
        input_rate, output_rate: the rates in Hz, as given.
        input_stride: input samples per period (input_rate // gcd); the convolution stride.
        phases: output samples per period (output_rate // gcd); rows of the kernel.
        width: input samples of context (and zero padding) on each side of a frame.
        taps: columns of the kernel, 2 * width + input_stride.
        cutoff: rolloff * min(input_stride, phases): the sinc's zero crossings per period.
        gain: cutoff / input_stride, the factor that gives every phase unit DC gain.
        lowpass_width: zero crossings kept on each side; time offsets are clamped to +-this.
    """

    input_rate: int
    output_rate: int
    input_stride: int
    phases: int
    width: int
    taps: int
    cutoff: float
    gain: float
    lowpass_width: int

    def output_length(self, input_length: int) -> int:
        """Exact ceil(input_length * output_rate / input_rate), in integer arithmetic.

        torchaudio computes this ceil in float32 and can come out one sample short on long
        signals (1440041 samples at 8000 -> 44100: 7938226 instead of 7938227); we do not.
        """
        return -(-self.phases * input_length // self.input_stride)


def kernel_geometry(input_rate: int, output_rate: int) -> KernelGeometry:
    """The geometry of the conventional kernel for a rate pair (see the module docstring)."""
    return _kernel_geometry(check_rate(input_rate, "input_rate"),
                            check_rate(output_rate, "output_rate"))


@functools.lru_cache(maxsize=256)
def _kernel_geometry(input_rate: int, output_rate: int) -> KernelGeometry:
    divisor = math.gcd(input_rate, output_rate)
    input_stride = input_rate // divisor
    phases = output_rate // divisor
    cutoff = min(input_stride, phases) * ROLLOFF
    # Same float expression as torchaudio, so the width (and thus the padding) is identical.
    width = math.ceil(LOWPASS_WIDTH * input_stride / cutoff)
    return KernelGeometry(
        input_rate=input_rate,
        output_rate=output_rate,
        input_stride=input_stride,
        phases=phases,
        width=width,
        taps=2 * width + input_stride,
        cutoff=cutoff,
        gain=cutoff / input_stride,
        lowpass_width=LOWPASS_WIDTH,
    )


# Cached tensors are built outside inference mode: a kernel first made under
# torch.inference_mode() would otherwise be an inference tensor, which autograd refuses to save
# when the same kernel is later used with a signal that requires grad.

@functools.lru_cache(maxsize=32)
@torch.inference_mode(False)
def _time_offsets_float64(input_rate: int, output_rate: int) -> torch.Tensor:
    geometry = _kernel_geometry(input_rate, output_rate)
    # Tap k sits (k - width)/o periods from the frame start, phase p sits p/n periods after it.
    tap_times = (
        torch.arange(-geometry.width, geometry.width + geometry.input_stride, dtype=torch.float64)
        / geometry.input_stride
    )
    phase_times = torch.arange(geometry.phases, dtype=torch.float64) / geometry.phases
    offsets = (tap_times[None, :] - phase_times[:, None]) * geometry.cutoff
    return offsets.clamp_(-geometry.lowpass_width, geometry.lowpass_width)


def kernel_time_offsets(
    input_rate: int,
    output_rate: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The (phases, taps) grid of time offsets at which the kernel is sampled.

    Offsets are in zero crossings of the sinc (tau * cutoff, see the module docstring), already
    clamped to [-lowpass_width, +lowpass_width], and before any window. Entry [p, k] is the
    distance from output phase p to tap k. A new tensor is returned on every call, so callers
    may modify it.
    """
    offsets = _time_offsets_float64(check_rate(input_rate, "input_rate"),
                                    check_rate(output_rate, "output_rate"))
    return offsets.to(dtype=dtype, device=device, copy=True)


def kaiser_window(offsets: torch.Tensor, lowpass_width: int = LOWPASS_WIDTH,
                  beta: float = KAISER_BETA) -> torch.Tensor:
    """Kaiser taper over [-lowpass_width, lowpass_width], 1 at the centre, ~0 at the ends."""
    relative = offsets / lowpass_width
    argument = beta * torch.sqrt((1.0 - relative * relative).clamp_min(0.0))
    return torch.special.i0(argument) / torch.special.i0(
        torch.tensor(beta, dtype=offsets.dtype, device=offsets.device)
    )


@functools.lru_cache(maxsize=32)
@torch.inference_mode(False)
def _conventional_kernel_float64(input_rate: int, output_rate: int) -> torch.Tensor:
    geometry = _kernel_geometry(input_rate, output_rate)
    offsets = _time_offsets_float64(input_rate, output_rate)
    kernel = geometry.gain * torch.sinc(offsets) * kaiser_window(offsets, geometry.lowpass_width)
    return kernel


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)
def _conventional_kernel_cast(input_rate: int, output_rate: int, dtype: torch.dtype,
                              device: torch.device) -> torch.Tensor:
    return _conventional_kernel_float64(input_rate, output_rate).to(dtype=dtype, device=device)


def cached_conventional_kernel(input_rate: int, output_rate: int, dtype: torch.dtype,
                               device: torch.device) -> torch.Tensor:
    """The shared, cached conventional kernel. Read only: do not modify it in place."""
    input_rate = check_rate(input_rate, "input_rate")
    output_rate = check_rate(output_rate, "output_rate")
    return _conventional_kernel_cast(input_rate, output_rate, dtype, torch.device(device))


def conventional_kernel(
    input_rate: int,
    output_rate: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The (phases, taps) Kaiser windowed-sinc kernel, built in float64 and cast to `dtype`.

    Matches torchaudio's `_get_sinc_resample_kernel(..., lowpass_filter_width=24,
    rolloff=0.99, resampling_method="sinc_interp_kaiser")` with the channel axis dropped.
    Returns a fresh copy that the caller owns.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    return cached_conventional_kernel(input_rate, output_rate, dtype, device).clone()
