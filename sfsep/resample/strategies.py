"""Resampling strategies: which kernel (or which post-step) turns one rate into another.

Every strategy runs the one polyphase machine of `polyphase.py`; they differ only in the kernel
they hand it, or in what they do to its output:

- "conventional": the Kaiser windowed-sinc kernel of `kernel.py` (torchaudio's
  sinc_interp_kaiser, 24 zero crossings a side, rolloff 0.99).
- "noisy": noisy-kernel resampling (Imamura, Nakamura, Yatabe, Saruwatari, "Dissecting
  performance degradation in audio source separation under sampling frequency mismatch",
  ICASSP 2026): k_noisy[p, k] = k[p, k] + eta[p, k], eta i.i.d. N(0, sigma^2) over every entry
  of the discretised (phases, taps) kernel. When a low-rate signal is upsampled, the
  conventional kernel leaves the band above the input's Nyquist frequency empty; the perturbed
  kernel is no longer a perfect low-pass, so it spreads a little of the signal's own energy,
  shaped by the signal, over the whole output band. The paper's finding is that the *presence*
  of such high-frequency content matters more to a separator than its exact content.
- "noise": the paper's baseline, post-resampling noise addition: conventional output plus white
  Gaussian noise at a fixed signal-to-noise ratio.
- "trainable": a learned kernel (an MLP k(t; theta) evaluated on the kernel's time grid,
  `sfsep.resample.trainable`), passed in as `kernel=`; trained per model and rate by
  `sfsep train-kernel`.
- "none": no resampling at all (the rates must already agree).

Random draws
------------
Both random strategies draw from the `generator` they are given (a torch.Generator; None uses
torch's default generator), so a seed reproduces a run, and draw afresh on every call.

- noisy: ONE kernel perturbation per call. All rows of the input (every channel, and every
  item of a batch) go through the same noisy kernel. For a (channels, samples) signal this
  means its channels share one resampler, as they would in the paper's setting where a signal
  is resampled by one (noisy) filter, and the stereo image is not decorrelated by the kernel.
  To give separate signals independent kernels, call once per signal. The draw is (phases,
  taps) numbers, so the strategy costs the same as "conventional".
- noise: the SNR is exact for each *signal*, where a signal is the last two axes (channels,
  samples) of the output: a (channels, samples) tensor is one signal, a (batch, channels,
  samples) tensor holds `batch` signals, a 1-D tensor is one mono signal. The noise is drawn
  independently for every sample of every channel, then scaled so that
  sum(signal^2) / sum(noise^2) equals 10^(snr_db/10) for each signal; channels of one signal
  share the scale, so a quiet channel gets the same noise level as a loud one (as if the noise
  had been added to the signal as a whole). A silent signal stays silent.

Equal rates
-----------
When input_rate == output_rate every strategy returns its input tensor itself (no copy, no
filtering, no noise), as torchaudio does: there is nothing to resample, and `choose_strategy`
picks "none" there anyway.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

from sfsep.errors import ResampleError
from sfsep.resample.kernel import cached_conventional_kernel, check_rate
from sfsep.resample.polyphase import apply_kernel

METHODS = ("conventional", "noisy", "noise", "trainable", "none")
"""Strategy names accepted by `resample`. "trainable" needs `kernel=` (a learned kernel, see
`sfsep.resample.trainable`): a (phases, taps) tensor or a callable (input_rate, output_rate) ->
such a tensor, e.g. `TrainableKernel.matrix`."""

DEFAULT_SIGMA = 1e-3
"""Standard deviation of the kernel noise of "noisy" (variance 1e-6)."""

DEFAULT_SNR_DB = 20.0
"""Signal-to-noise ratio of "noise", in dB."""


def _check_generator(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ResampleError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )


def _check_sigma(sigma: object) -> None:
    if not (isinstance(sigma, numbers.Real) and not isinstance(sigma, bool)
            and math.isfinite(sigma) and sigma >= 0):
        raise ResampleError(f"sigma (kernel noise std) must be a finite number >= 0, got {sigma!r}")


def _standard_normal(shape: tuple[int, ...], generator: torch.Generator | None,
                     dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """N(0, 1) draws of `shape` on `device`, taken from `generator` (on its own device)."""
    draw_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    draw_device = device if generator is None else generator.device
    draws = torch.randn(shape, generator=generator, dtype=draw_dtype, device=draw_device)
    return draws.to(dtype=dtype, device=device)


def noisy_kernel(
    input_rate: int,
    output_rate: int,
    *,
    sigma: float = DEFAULT_SIGMA,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The conventional (phases, taps) kernel plus i.i.d. N(0, sigma^2) on every entry.

    Each call draws new noise from `generator`. Entries whose time offset lies beyond the
    window (where the conventional kernel is zero) are perturbed too: the paper adds noise to
    the discretised kernel as a whole.
    """
    _check_sigma(sigma)
    _check_generator(generator)
    device = torch.device("cpu") if device is None else torch.device(device)
    kernel = cached_conventional_kernel(input_rate, output_rate, dtype, device)
    noise = _standard_normal(tuple(kernel.shape), generator, dtype, device)
    return _add_scaled(kernel, noise, sigma)


_SERIAL_CHUNK = 16384
"""Elements per CPU add in `_add_scaled`: below torch's parallel grain size (32768)."""


def _add_scaled(base: torch.Tensor, noise: torch.Tensor, scale: float) -> torch.Tensor:
    """base + scale * noise, for kernel-sized tensors.

    On the CPU, torch runs an elementwise op on more than 32768 elements (a kernel has ~57000)
    as a parallel region; on a loaded machine waking the second thread can cost a whole time
    slice (12-24 ms measured at load 5, i.e. 5-8 % of a 180-s resampling) for 0.05 ms of work.
    Adding in chunks below the grain size keeps the noisy kernel as cheap as it should be.
    """
    if base.device.type != "cpu":
        return torch.add(base, noise, alpha=scale)
    result = torch.empty_like(base)
    for out_chunk, base_chunk, noise_chunk in zip(result.view(-1).split(_SERIAL_CHUNK),
                                                  base.reshape(-1).split(_SERIAL_CHUNK),
                                                  noise.reshape(-1).split(_SERIAL_CHUNK)):
        torch.add(base_chunk, noise_chunk, alpha=scale, out=out_chunk)
    return result


def _add_noise_at_snr(signal: torch.Tensor, snr_db: float,
                      generator: torch.Generator | None) -> torch.Tensor:
    """`signal` plus white Gaussian noise scaled to exactly `snr_db` per (channels, samples)."""
    noise = _standard_normal(tuple(signal.shape), generator, signal.dtype, signal.device)
    if signal.numel() == 0:
        return signal + noise
    per_signal = (-1, signal.shape[-2] * signal.shape[-1]) if signal.dim() >= 2 else (1, -1)
    # torch's blocked (cascade) reductions keep float32 energies within ~1e-6 relative, far
    # below the 2e-4 that a 1e-3 dB error would take; the ratio is then formed in float64.
    # Half-precision signals are summed in float32 (their energy would overflow float16).
    accumulate = torch.float64 if signal.dtype == torch.float64 else torch.float32
    signal_energy = torch.linalg.vector_norm(
        signal.reshape(per_signal), dim=1, dtype=accumulate).double() ** 2
    noise_energy = torch.linalg.vector_norm(
        noise.reshape(per_signal), dim=1, dtype=accumulate).double() ** 2
    target_ratio = 10.0 ** (snr_db / 10.0)
    scale = torch.sqrt(signal_energy / (noise_energy.clamp_min(1e-300) * target_ratio))
    scale_shape = signal.shape[:-2] + (1, 1) if signal.dim() >= 2 else (1,)
    noise.mul_(scale.to(signal.dtype).reshape(scale_shape))
    return signal + noise


def resample(
    waveform: torch.Tensor,
    input_rate: int,
    output_rate: int,
    method: str = "conventional",
    *,
    sigma: float = DEFAULT_SIGMA,
    snr_db: float = DEFAULT_SNR_DB,
    generator: torch.Generator | None = None,
    kernel: torch.Tensor | Callable[[int, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Resample `waveform` (..., samples) from `input_rate` to `output_rate` Hz.

    Args:
        waveform: floating-point tensor, any leading shape, any device; dtype is kept.
        input_rate, output_rate: positive whole numbers of Hz.
        method: one of METHODS (see the module docstring).
        sigma: kernel noise std for "noisy"; one kernel is drawn per call and shared by every
            row of `waveform` (call once per signal for independent kernels).
        snr_db: signal-to-noise ratio for "noise", exact for each (channels, samples) signal
            of the output (the last two axes; a 1-D tensor is one signal).
        generator: torch.Generator for the random strategies; None uses the default RNG.
        kernel: for "trainable" only (and required there): the learned (phases, taps) kernel,
            or a callable (input_rate, output_rate) -> that kernel.

    Returns:
        (..., ceil(samples * output_rate / input_rate)) tensor, exact integer ceil. When the
        rates are equal, `waveform` itself.

    Raises:
        ResampleError: unknown method, bad rates or parameters, "none" with different rates.
    """
    input_rate = check_rate(input_rate, "input_rate")
    output_rate = check_rate(output_rate, "output_rate")
    if method not in METHODS:
        raise ResampleError(
            f"unknown resampling method {method!r}; choose one of {', '.join(METHODS)}"
        )
    if method == "none" and input_rate != output_rate:
        raise ResampleError(
            f"resampling method 'none' cannot turn {input_rate} Hz into {output_rate} Hz; "
            "pick 'conventional' or 'noisy' (or let the tool choose)"
        )
    if method == "noisy":
        _check_sigma(sigma)
    if method == "noise" and not (isinstance(snr_db, numbers.Real) and not isinstance(snr_db, bool)
                                  and math.isfinite(snr_db)):
        raise ResampleError(f"snr_db must be a finite number of dB, got {snr_db!r}")
    _check_generator(generator)
    if not isinstance(waveform, torch.Tensor) or not waveform.is_floating_point():
        raise ResampleError(
            "resampling needs a floating-point torch tensor shaped (..., samples); got "
            + (f"dtype {waveform.dtype}" if isinstance(waveform, torch.Tensor)
               else type(waveform).__name__)
        )
    if input_rate == output_rate:
        return waveform
    if method == "trainable" and kernel is None:
        raise ResampleError(
            "resampling method 'trainable' needs a learned kernel (kernel=...); train one with "
            "`sfsep train-kernel --model M --rate R`"
        )

    if method == "trainable":
        if hasattr(kernel, "matrix"):  # a TrainableKernel module
            kernel = kernel.matrix
        learned = kernel(input_rate, output_rate) if callable(kernel) else kernel
        kernel = learned.to(dtype=waveform.dtype, device=waveform.device)
    elif method == "noisy":
        kernel = noisy_kernel(input_rate, output_rate, sigma=sigma, generator=generator,
                              dtype=waveform.dtype, device=waveform.device)
    else:
        kernel = cached_conventional_kernel(input_rate, output_rate, waveform.dtype,
                                            waveform.device)
    resampled = apply_kernel(waveform, kernel, input_rate, output_rate)
    if method == "noise":
        resampled = _add_noise_at_snr(resampled, float(snr_db), generator)
    return resampled


def choose_strategy(input_rate: int, trained_rate: int) -> tuple[str, str]:
    """Pick the strategy for bringing `input_rate` audio to a model trained at `trained_rate`.

    Returns (method, reason), the reason a short sentence the CLI can print as is.
    """
    input_rate = check_rate(input_rate, "input_rate")
    trained_rate = check_rate(trained_rate, "trained_rate")
    if input_rate < trained_rate:
        return (
            "noisy",
            f"input is {input_rate} Hz, below the model's {trained_rate} Hz: upsampling with a "
            f"noisy kernel so the band above {input_rate / 2000:g} kHz is not left empty",
        )
    if input_rate > trained_rate:
        return (
            "conventional",
            f"input is {input_rate} Hz, above the model's {trained_rate} Hz: downsampling with "
            "the conventional windowed-sinc kernel",
        )
    return ("none", f"input is already at the model's {trained_rate} Hz: no resampling")


