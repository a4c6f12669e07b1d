"""Chunked inference: run a separator over a long signal in overlapping chunks.

A separator sees a fixed-length excerpt at a time (its training segment), so a track is cut into
overlapping chunks, the chunks are stacked into batches and run on the chosen device, and the
outputs are overlap-added with a window and divided by the summed window ("counter"), so that
every output sample is a weighted mean of the chunks that cover it. The full-length buffers stay
on the CPU; only one batch of chunks lives on the device (long tracks on small GPUs).

Published models were scored with their authors' chunking, so the styles reproduce them:

- ``"msst"``: ZFTurbo's Music-Source-Separation-Training generic demix (RoFormers, SCNet,
  MDX23C). ``overlap`` is the integer ``num_overlap``: step = chunk // overlap. The signal is
  reflect-padded by ``border = chunk - step`` on both sides (when it is longer than two borders),
  each chunk is weighted by a window with linear fades of chunk // 10 samples, a short final chunk
  is reflect-padded (zero-padded when it is at most half a chunk). The window of the batch holding
  the first chunk loses its fade-in, else the window of the batch holding the last chunk loses its
  fade-out (one window per batch, as the reference does).
- ``"msst_demucs"``: the same reference's mode for HT-Demucs: step = chunk // overlap, no border
  padding, zero-padded chunks, plain average.
- ``"demucs"``: demucs' ``apply_model`` split. ``overlap`` is a fraction of the segment; chunks
  start every ``int((1 - overlap) * chunk)`` samples and are weighted by a triangle. With
  ``padded_length`` (the model's valid length) each chunk is centred in a window of that length
  that takes real neighbouring samples where the track has them and zeros outside it; the output
  is trimmed back to the chunk's centre.
- ``"fade"``: sfsep's own, for models without a reference chunking. ``overlap`` is a fraction.
  Chunks are placed so that the last one ends at the end of the signal (no padding unless the
  signal is shorter than a chunk), and each overlap of length O is cross-faded linearly over its
  middle O/2, with O/4 of zero weight on each side: a model whose receptive field reaches at most
  O/4 samples past a chunk edge gives exactly its whole-signal output.

`demix(model, mix, ...) -> stems` is the one entry point. Precision and device handling are here
too, so that models stay plain modules.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .errors import UsageError

ProgressCallback = Callable[[int, int], None]
"""Called as progress(chunks_done, chunks_total) after each batch."""

STYLES = ("msst", "msst_demucs", "demucs", "fade")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------------------------
# Device and precision


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' into a device, checking it exists."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name}: not a device name (use auto, cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise UsageError(f"--device {name}: Apple MPS is not available on this machine (use --device cpu)")
    return device


def autocast_context(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Mixed precision for fp16/bf16 (autocast); a no-op for fp32.

    fp16 autocast is only offered on CUDA; on the CPU bf16 autocast is used for bf16. This is
    exercised on CPU by the tests; the CUDA path is untested here (no GPU on the build machine).
    """
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


# --------------------------------------------------------------------------------------------
# Chunk plans: where each chunk starts, how long its real part is, and its weights.


@dataclass(frozen=True)
class Chunk:
    start: int  # first sample of the chunk in the (possibly padded) signal
    length: int  # real samples taken from the signal (the rest is padding)


def _run_batches(
    model: Callable[[torch.Tensor], torch.Tensor],
    inputs: Iterator[tuple[list[Chunk], torch.Tensor]],
    total: int,
    device: torch.device,
    precision: str,
    progress: ProgressCallback | None,
) -> Iterator[tuple[list[Chunk], torch.Tensor]]:
    """Run the model on each (chunks, batch) pair; yields float32 CPU outputs (B, S, C, L)."""
    done = 0
    with torch.inference_mode(), autocast_context(device, precision):
        for chunks, batch in inputs:
            out = model(batch.to(device))
            if out.dim() == 3:  # a model that returns one stem without a stem axis
                out = out.unsqueeze(1)
            yield chunks, out.float().cpu()
            done += len(chunks)
            if progress is not None:
                progress(done, total)


def _batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


def _linear_fade_window(chunk_size: int, fade_size: int) -> torch.Tensor:
    window = torch.ones(chunk_size)
    if fade_size > 0:
        window[:fade_size] = torch.linspace(0, 1, fade_size)
        window[-fade_size:] = torch.linspace(1, 0, fade_size)
    return window


def _demix_msst(model, mix, chunk_size, num_overlap, batch_size, device, precision, progress):
    if int(num_overlap) != num_overlap or num_overlap < 1:
        raise UsageError(f"style 'msst' takes an integer overlap count (num_overlap), got {num_overlap}")
    channels, length = mix.shape
    step = chunk_size // int(num_overlap)
    border = chunk_size - step
    fade_size = chunk_size // 10
    padded = length > 2 * border and border > 0
    if padded:
        mix = F.pad(mix.unsqueeze(0), (border, border), mode="reflect").squeeze(0)
    padded_length = mix.shape[-1]
    window = _linear_fade_window(chunk_size, fade_size)

    starts = list(range(0, padded_length, step))
    chunks = [Chunk(start, min(chunk_size, padded_length - start)) for start in starts]
    last_index = len(chunks) - 1

    def chunk_input(chunk: Chunk) -> torch.Tensor:
        part = mix[:, chunk.start : chunk.start + chunk.length]
        missing = chunk_size - chunk.length
        if missing:
            mode = "reflect" if chunk.length > chunk_size // 2 else "constant"
            part = F.pad(part.unsqueeze(0), (0, missing), mode=mode).squeeze(0)
        return part

    def batches():
        for first in range(0, len(chunks), batch_size):
            group = chunks[first : first + batch_size]
            yield group, torch.stack([chunk_input(c) for c in group])

    result = None
    counter = torch.zeros(padded_length)
    position = 0
    for group, out in _run_batches(model, batches(), len(chunks), device, precision, progress):
        group_last = position + len(group) - 1
        batch_window = window.clone()
        # The reference decides per batch: a batch whose last chunk is the track's first chunk
        # has no fade-in; otherwise a batch holding the final chunk has no fade-out.
        if group_last == 0 and fade_size > 0:
            batch_window[:fade_size] = 1
        elif group_last == last_index and fade_size > 0:
            batch_window[-fade_size:] = 1
        if result is None:
            result = torch.zeros(out.shape[1], channels, padded_length)
        for j, chunk in enumerate(group):
            w = batch_window[: chunk.length]
            result[..., chunk.start : chunk.start + chunk.length] += out[j, ..., : chunk.length] * w
            counter[chunk.start : chunk.start + chunk.length] += w
        position += len(group)
    estimate = torch.nan_to_num(result / counter, nan=0.0)
    if padded:
        estimate = estimate[..., border:-border]
    return estimate


def _overlap_add_padded(model, mix, chunks, chunk_size, weights, batch_size, device, precision, progress):
    """Run zero-padded chunks in batches and overlap-add their outputs, chunk i weighted by
    weights[i] (its first chunk.length values; None = weight 1), normalized by the summed weights."""
    channels, length = mix.shape

    def batches():
        for group in _batched(chunks, batch_size):
            parts = [F.pad(mix[:, c.start : c.start + c.length], (0, chunk_size - c.length)) for c in group]
            yield list(group), torch.stack(parts)

    result = None
    weight_sum = torch.zeros(length)
    index = 0
    for group, out in _run_batches(model, batches(), len(chunks), device, precision, progress):
        if result is None:
            result = torch.zeros(out.shape[1], channels, length)
        for j, chunk in enumerate(group):
            piece = out[j, ..., : chunk.length]
            span = slice(chunk.start, chunk.start + chunk.length)
            if weights is None:
                result[..., span] += piece
                weight_sum[span] += 1
            else:
                w = weights[index][: chunk.length]
                result[..., span] += piece * w
                weight_sum[span] += w
            index += 1
    return result / weight_sum


def _demix_msst_demucs(model, mix, chunk_size, num_overlap, batch_size, device, precision, progress):
    if int(num_overlap) != num_overlap or num_overlap < 1:
        raise UsageError(f"style 'msst_demucs' takes an integer overlap count, got {num_overlap}")
    length = mix.shape[-1]
    step = chunk_size // int(num_overlap)
    chunks = [Chunk(start, min(chunk_size, length - start)) for start in range(0, length, step)]
    return _overlap_add_padded(model, mix, chunks, chunk_size, None, batch_size, device, precision, progress)


def _centred_excerpt(mix: torch.Tensor, start: int, length: int, padded_length: int) -> torch.Tensor:
    """`length` samples at `start`, widened symmetrically to `padded_length` with real neighbours
    where the signal has them and zeros beyond its ends (demucs' TensorChunk.padded)."""
    total = mix.shape[-1]
    extra = padded_length - length
    window_start = start - extra // 2
    window_end = window_start + padded_length
    real_start, real_end = max(0, window_start), min(total, window_end)
    return F.pad(mix[:, real_start:real_end], (real_start - window_start, window_end - real_end))


def _centre_trim(out: torch.Tensor, length: int) -> torch.Tensor:
    extra = out.shape[-1] - length
    if extra < 0:
        raise RuntimeError(f"model returned {out.shape[-1]} samples for a {length}-sample input")
    return out[..., extra // 2 : out.shape[-1] - (extra - extra // 2)]


def _triangle_weight(segment: int, transition_power: float = 1.0) -> torch.Tensor:
    rising = torch.arange(1, segment // 2 + 1)
    falling = torch.arange(segment - segment // 2, 0, -1)
    weight = torch.cat([rising, falling]).float()
    return (weight / weight.max()) ** transition_power


def _demix_demucs(model, mix, chunk_size, overlap, batch_size, device, precision, progress, padded_length):
    if not 0 <= overlap < 1:
        raise UsageError(f"style 'demucs' takes overlap as a fraction in [0, 1), got {overlap}")
    channels, length = mix.shape
    stride = int((1 - overlap) * chunk_size)
    weight = _triangle_weight(chunk_size)
    chunks = [Chunk(start, min(chunk_size, length - start)) for start in range(0, length, stride)]

    def model_input(chunk: Chunk) -> torch.Tensor:
        target = padded_length if padded_length is not None else chunk.length
        return _centred_excerpt(mix, chunk.start, chunk.length, target)

    def batches():
        # Chunks can only share a batch when their model inputs have the same length.
        group: list[Chunk] = []
        for chunk in chunks:
            if group and (len(group) == batch_size or model_input(chunk).shape[-1] != model_input(group[0]).shape[-1]):
                yield group, torch.stack([model_input(c) for c in group])
                group = []
            group.append(chunk)
        if group:
            yield group, torch.stack([model_input(c) for c in group])

    result = None
    weight_sum = torch.zeros(length)
    for group, out in _run_batches(model, batches(), len(chunks), device, precision, progress):
        if result is None:
            result = torch.zeros(out.shape[1], channels, length)
        for j, chunk in enumerate(group):
            piece = _centre_trim(out[j], chunk.length)
            w = weight[: chunk.length]
            result[..., chunk.start : chunk.start + chunk.length] += w * piece
            weight_sum[chunk.start : chunk.start + chunk.length] += w
    return result / weight_sum


def fade_plan(length: int, chunk_size: int, overlap: float) -> list[int]:
    """Chunk starts for the 'fade' style: a regular grid whose last chunk ends at `length`."""
    if length <= chunk_size:
        return [0]
    step = max(1, chunk_size - int(round(overlap * chunk_size)))
    starts = list(range(0, length - chunk_size, step))
    starts.append(length - chunk_size)
    return starts


def _fade_weights(starts: list[int], chunk_size: int, length: int) -> list[torch.Tensor]:
    """Per-chunk weights: inside each overlap, zero for its outer quarters, a linear cross-fade in
    its middle half. The first chunk has no fade-in, the last no fade-out."""
    weights = []
    span = min(chunk_size, length)
    for index, start in enumerate(starts):
        w = torch.ones(span)
        if index > 0:  # overlap with the previous chunk: [start, previous_end)
            overlap_len = starts[index - 1] + chunk_size - start
            margin, ramp = overlap_len // 4, overlap_len - 2 * (overlap_len // 4)
            w[:margin] = 0
            w[margin : margin + ramp] = (torch.arange(ramp) + 0.5) / ramp
        if index < len(starts) - 1:  # overlap with the next chunk: [next_start, end)
            overlap_len = start + chunk_size - starts[index + 1]
            margin, ramp = overlap_len // 4, overlap_len - 2 * (overlap_len // 4)
            tail = torch.ones(overlap_len)
            tail[overlap_len - margin :] = 0
            tail[margin : margin + ramp] = 1 - (torch.arange(ramp) + 0.5) / ramp
            w[span - overlap_len :] *= tail
        weights.append(w)
    return weights


def _demix_fade(model, mix, chunk_size, overlap, batch_size, device, precision, progress):
    if not 0 <= overlap <= 0.75:
        # Beyond 3/4 a sample could fall only in zero-weight margins of every chunk covering it.
        raise UsageError(f"--overlap must be a fraction between 0 and 0.75, got {overlap}")
    length = mix.shape[-1]
    starts = fade_plan(length, chunk_size, overlap)
    weights = _fade_weights(starts, chunk_size, length)
    chunks = [Chunk(start, min(chunk_size, length - start)) for start in starts]
    return _overlap_add_padded(model, mix, chunks, chunk_size, weights, batch_size, device, precision, progress)


def demix(
    model: Callable[[torch.Tensor], torch.Tensor],
    mix: torch.Tensor,
    *,
    chunk_size: int | None,
    overlap: float = 0.25,
    style: str = "fade",
    batch_size: int = 1,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    padded_length: int | None = None,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """Separate `mix` (channels, samples) chunk by chunk; returns stems (stems, channels, samples)
    as float32 on the CPU.

    `model` maps (batch, channels, chunk) to (batch, stems, channels, chunk) on `device` (the
    model must already be there). `chunk_size=None` runs the whole signal in one call.
    """
    if mix.dim() != 2:
        raise ValueError(f"demix expects (channels, samples), got shape {tuple(mix.shape)}")
    if style not in STYLES:
        raise UsageError(f"unknown chunking style '{style}' (known: {', '.join(STYLES)})")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    device = resolve_device(device) if device is not None else torch.device("cpu")
    mix = mix.float().cpu()
    if chunk_size is None or mix.shape[-1] == 0:
        whole = [(list([Chunk(0, mix.shape[-1])]), mix.unsqueeze(0))]
        _, out = next(_run_batches(model, iter(whole), 1, device, precision, progress))
        return out[0]
    if chunk_size < 1:
        raise UsageError(f"chunk size must be positive, got {chunk_size}")
    if style == "msst":
        return _demix_msst(model, mix, chunk_size, overlap, batch_size, device, precision, progress)
    if style == "msst_demucs":
        return _demix_msst_demucs(model, mix, chunk_size, overlap, batch_size, device, precision, progress)
    if style == "demucs":
        return _demix_demucs(model, mix, chunk_size, overlap, batch_size, device, precision, progress, padded_length)
    return _demix_fade(model, mix, chunk_size, overlap, batch_size, device, precision, progress)
