"""The polyphase machine: run a (phases, taps) kernel over a signal as one strided convolution.

`kernel.py` says which weights to use; this file applies any such kernel (conventional, noisy,
or one produced by a trainable module) the same way, so that every strategy shares one code
path and gradients flow into the kernel when it requires them.

How the convolution realises the resampler
------------------------------------------
With o = input_stride, n = phases and K = taps (see `kernel.py`), output sample m = j*n + p
(frame j, phase p) is::

    y[j*n + p] = sum_k kernel[p, k] * x[j*o + k - width]

with x taken as zero outside [0, T). Zero-pad the input by `width` on the left and by
`width + o` on the right; then frame j reads the K padded samples starting at j*o. That is a
1-D convolution (cross-correlation) of the padded signal with n output channels (one per
phase), one input channel, kernel length K and stride o. Its result, shaped (batch, n, frames),
holds the phases of a frame in a column; transposing to (batch, frames, n) and flattening puts
the outputs in time order. Output sample 0 lands exactly on input sample 0: there is no delay.

The convolution produces floor(T/o) + 1 frames, i.e. at least ceil(n*T/o) samples; we keep
exactly ceil(n*T/o) (integer arithmetic) and skip frames that would be cut off anyway.

Memory
------
Nothing is materialised per output sample: the kernel is (n, K) whatever the signal length.
oneDNN's CPU convolution does not unfold the input, but other backends may (im2col makes a
(batch, K, frames) buffer, ~50x the input for 48000 -> 8000 where o = 6 and K = 298), so long
signals are processed in blocks of frames whose unfolded size stays under `UNFOLD_BUDGET`
and whose output stays under `OUTPUT_BUDGET` (which is also faster on CPU, see there).
Blocks overlap by K - o input samples and write into one preallocated output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sfsep.errors import ResampleError
from sfsep.resample.kernel import kernel_geometry

UNFOLD_BUDGET = 1 << 25
"""Most input-window elements, batch * taps * frames, one conv1d call may see (128 MB in f32).

oneDNN (CPU float32) never builds them, but PyTorch's fallback convolution (float64 on CPU,
some other backends) unfolds the input into a (taps, frames) matrix first."""

OUTPUT_BUDGET = 1 << 22
"""Most output elements, batch * phases * frames, one conv1d call produces (16 MB in f32).

Smaller blocks keep the convolution's output in cache while it is transposed into place: on
a quiet 2-core machine, 180 s of stereo 8000 -> 44100 takes 0.05 s with blocks of 2**20
outputs, 0.07 s with 2**22 and 0.19 s in one call. But every call is a parallel region, and on
a loaded machine a 2-thread region can wait a whole time slice for a descheduled thread: with
blocks of 441 frames (2**20 window elements), 60 s of stereo 192000 -> 8000 took 37 s at load
10 instead of 2.2 s in one call. Blocks of 2**22 outputs, made smaller only where the unfold
budget demands it (14122 frames there), keep most of the cache benefit with few calls."""


def apply_kernel(
    waveform: torch.Tensor,
    kernel: torch.Tensor,
    input_rate: int,
    output_rate: int,
    *,
    block_frames: int | None = None,
) -> torch.Tensor:
    """Resample `waveform` (..., samples) with a (phases, taps) kernel.

    The kernel must have the shape `kernel_geometry(input_rate, output_rate)` gives; it is cast
    to the waveform's dtype and device (differentiably). Returns (..., ceil(samples *
    output_rate / input_rate)) in the waveform's dtype. Autograd flows to both the waveform and
    the kernel. `block_frames` overrides the number of frames (periods) per convolution call;
    by default it follows `UNFOLD_BUDGET` and `OUTPUT_BUDGET`.
    """
    geometry = kernel_geometry(input_rate, output_rate)
    if not isinstance(waveform, torch.Tensor) or not waveform.is_floating_point():
        raise ResampleError(
            "resampling needs a floating-point torch tensor shaped (..., samples); got "
            f"{type(waveform).__name__}"
            + (f" of dtype {waveform.dtype}" if isinstance(waveform, torch.Tensor) else "")
            + ": convert it with .float() first"
        )
    if waveform.dim() == 0:
        raise ResampleError("resampling needs a tensor with a samples axis, got a scalar")
    expected = (geometry.phases, geometry.taps)
    if tuple(kernel.shape) != expected:
        raise ResampleError(
            f"a {input_rate} -> {output_rate} Hz kernel must be shaped (phases, taps) = "
            f"{expected}, got {tuple(kernel.shape)}"
        )
    if block_frames is not None and block_frames < 1:
        raise ValueError("block_frames must be positive")

    leading = waveform.shape[:-1]
    input_length = waveform.shape[-1]
    target = geometry.output_length(input_length)
    if waveform.numel() == 0:  # no samples, or no rows: nothing to convolve
        return waveform.new_zeros(*leading, target)
    flat = waveform.reshape(-1, input_length)

    stride, phases = geometry.input_stride, geometry.phases
    weight = kernel.to(dtype=waveform.dtype, device=waveform.device)
    padded = F.pad(flat, (geometry.width, geometry.width + stride))
    frames = -(-target // phases)  # frames that contribute at least one kept sample
    interleaved = convolve_frames(padded, weight, stride, frames, block_frames=block_frames)
    return interleaved[:, :target].reshape(*leading, target)


def convolve_frames(
    padded: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    frames: int,
    *,
    block_frames: int | None = None,
) -> torch.Tensor:
    """Frames 0..frames-1 of the polyphase machine, interleaved in time order.

    `padded` (batch, samples) is the input already shifted by the kernel's `width` (frame j reads
    padded[j*stride : j*stride + taps]) and must hold at least (frames - 1) * stride + taps
    samples; `weight` is the (phases, taps) kernel in `padded`'s dtype and device. Returns
    (batch, frames * phases). `apply_kernel` pads a whole signal and calls this once; the
    streaming resampler (`stream.py`) calls it on each stretch of input it has gathered.
    """
    batch = padded.shape[0]
    phases, taps = weight.shape
    weight = weight.unsqueeze(1)
    padded = padded.unsqueeze(1)
    if block_frames is None:
        block_frames = max(1, min(UNFOLD_BUDGET // (batch * taps),
                                  OUTPUT_BUDGET // (batch * phases)))
    block = block_frames

    if frames <= block:
        used = padded[..., : (frames - 1) * stride + taps]
        by_phase = F.conv1d(used, weight, stride=stride)  # (batch, phases, frames)
        return by_phase.transpose(1, 2).reshape(batch, frames * phases)

    needs_graph = torch.is_grad_enabled() and (weight.requires_grad or padded.requires_grad)
    pieces = []
    result = None
    if not needs_graph:
        result = padded.new_empty(batch, frames, phases)
    for start in range(0, frames, block):
        stop = min(frames, start + block)
        segment = padded[..., start * stride : (stop - 1) * stride + taps]
        by_phase = F.conv1d(segment, weight, stride=stride)
        if needs_graph:
            pieces.append(by_phase.transpose(1, 2))
        else:
            result[:, start:stop].copy_(by_phase.transpose(1, 2))
    if needs_graph:
        result = torch.cat(pieces, dim=1)
    return result.reshape(batch, frames * phases)
