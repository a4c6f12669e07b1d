"""Resampling a signal that arrives in blocks, with the same result as resampling it whole.

`StreamResampler` is the polyphase machine of `polyphase.py` with a memory: it keeps the last
input samples that the next output frames still read, so a long file can be resampled block by
block in bounded memory. The output equals `apply_kernel` on the whole signal (the same
convolution over the same samples; only the grouping of frames into calls differs).

Why it can be exact
-------------------
Output frame j reads padded input [j*o, j*o + taps), where the padded input is the signal
shifted right by `width` zeros (see `polyphase.py`). After `pushed` real samples the padded
input is known up to width + pushed, so every frame with j*o + taps <= width + pushed can be
computed, and no later input changes it. The samples before (next frame)*o are never read
again and are dropped.

Which outputs are final before the end
--------------------------------------
The whole-signal output has exactly ceil(n*T/o) samples (T input samples, n phases, o input
stride). While the stream runs, T is not known, but it is at least `pushed`, so the first
ceil(n*pushed/o) samples of the computed frames are certainly kept; a computed sample beyond
that waits in `_pending` until more input or `finish()` settles the length. `finish()`
appends the right padding (width + o zeros, as `apply_kernel` does) and emits the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sfsep.resample.kernel import kernel_geometry
from sfsep.resample.polyphase import convolve_frames


class StreamResampler:
    """Resample (..., samples) blocks from `input_rate` to `output_rate` with a fixed kernel.

    `kernel` is the (phases, taps) kernel of `kernel_geometry(input_rate, output_rate)` (the
    conventional one, a noisy draw, a learned one): one kernel for the whole stream, so a
    noisy kernel is drawn once per file. With equal rates blocks pass through unchanged
    (`kernel` may then be None). Every block must have the same leading shape. Use::

        stream = StreamResampler(kernel, 8000, 44100)
        for block in blocks:
            out = stream.push(block)      # may be empty
        out = stream.finish()
    """

    def __init__(self, kernel: torch.Tensor | None, input_rate: int, output_rate: int):
        self.input_rate = int(input_rate)
        self.output_rate = int(output_rate)
        self.passthrough = self.input_rate == self.output_rate
        self._geometry = None if self.passthrough else kernel_geometry(input_rate, output_rate)
        if not self.passthrough:
            expected = (self._geometry.phases, self._geometry.taps)
            if kernel is None or tuple(kernel.shape) != expected:
                raise ValueError(f"a {input_rate} -> {output_rate} Hz kernel must be shaped {expected}")
        self._kernel = kernel
        self._weight: torch.Tensor | None = None
        self._buffer: torch.Tensor | None = None  # padded input from frame `_frame` on: (rows, n)
        self._leading: torch.Size | None = None
        self._frame = 0  # next frame to compute
        self._pushed = 0  # real input samples seen
        self._emitted = 0  # output samples handed out
        self._pending: torch.Tensor | None = None  # computed outputs not yet certain to be kept
        self._finished = False

    @property
    def emitted(self) -> int:
        return self._emitted

    def _start(self, block: torch.Tensor) -> None:
        self._leading = block.shape[:-1]
        rows = int(torch.Size(self._leading).numel())
        self._weight = self._kernel.to(dtype=block.dtype, device=block.device)
        self._buffer = block.new_zeros(rows, self._geometry.width)
        self._pending = block.new_zeros(rows, 0)

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """Take the next input samples (..., n); return the output samples now final."""
        if self._finished:
            raise RuntimeError("StreamResampler: push() after finish()")
        if self.passthrough:
            self._pushed += block.shape[-1]
            self._emitted += block.shape[-1]
            return block
        if self._buffer is None:
            self._start(block)
        elif block.shape[:-1] != self._leading:
            raise ValueError(f"block shape {tuple(block.shape)} does not continue {tuple(self._leading)}")
        rows = self._buffer.shape[0]
        self._buffer = torch.cat([self._buffer, block.reshape(rows, block.shape[-1])], dim=-1)
        self._pushed += block.shape[-1]
        return self._advance(final_length=None)

    def finish(self) -> torch.Tensor:
        """The remaining output samples, once the input has ended."""
        if self._finished:
            raise RuntimeError("StreamResampler: finish() called twice")
        self._finished = True
        if self.passthrough:
            return torch.zeros(0)
        if self._buffer is None:  # nothing was pushed: an empty signal resamples to nothing
            return torch.zeros(0)
        geometry = self._geometry
        self._buffer = F.pad(self._buffer, (0, geometry.width + geometry.input_stride))
        return self._advance(final_length=geometry.output_length(self._pushed))

    def _advance(self, final_length: int | None) -> torch.Tensor:
        geometry = self._geometry
        stride, phases, taps = geometry.input_stride, geometry.phases, geometry.taps
        available = self._buffer.shape[-1]
        frames = (available - taps) // stride + 1 if available >= taps else 0
        if final_length is not None:  # only the frames that hold kept samples
            frames = min(frames, max(0, -(-final_length // phases) - self._frame))
        if frames > 0:
            computed = convolve_frames(self._buffer, self._weight, stride, frames)
            self._pending = torch.cat([self._pending, computed], dim=-1)
            self._buffer = self._buffer[:, frames * stride:]
            self._frame += frames
        certain = final_length if final_length is not None else geometry.output_length(self._pushed)
        ready = max(0, min(self._pending.shape[-1], certain - self._emitted))
        out, self._pending = self._pending[:, :ready], self._pending[:, ready:]
        if final_length is not None:
            self._pending = self._pending[:, :0]
        self._emitted += ready
        return out.reshape(*self._leading, ready)
