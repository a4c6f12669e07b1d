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
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from .errors import UsageError
from .registry import CHUNK_STYLES as STYLES
from .registry import NORMALIZATIONS

ProgressCallback = Callable[[int, int], None]
"""Called as progress(chunks_done, chunks_total) after each batch."""

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
# The run-time contract: how a loaded model is run


@dataclass(frozen=True)
class RunContract:
    """How a loaded model is run over a long signal; each family's module says it
    (`sfsep.models.run_contract`), from its checkpoint where it carries the facts.

    - `style`: one of STYLES (how chunks are placed and blended, see the module docstring).
    - `segment`: samples per chunk at the model rate; None runs the whole signal in one call.
    - `num_overlap`: styles "msst"/"msst_demucs": chunks covering each sample (step = segment //
      num_overlap). `overlap`: styles "demucs"/"fade": the fraction of a chunk shared with the next.
    - `padded_length`: style "demucs": each chunk is centred in this many samples (the model's
      valid length for a segment). `hop`, `edge_padding`, `synthesis_window`: style "bsrnn".
    - `batch_size`: chunks per model call. `normalize`: how the mixture is standardized before
      the model (None, "msst", "demucs", "demucs_v2"; see `mixture_scale`).
    - `residual_stem`: a stem computed as the mixture minus the model's stems.
    - `any_length`: the model takes an input of any length, so a signal shorter than one
      segment runs as it is instead of zero-padded to a whole segment (style "fade" only: the
      padding would cost a whole segment's work and change the estimate near its end).
    """

    style: str = "fade"
    segment: int | None = None
    num_overlap: int | None = None
    overlap: float | None = None
    padded_length: int | None = None
    hop: int | None = None
    edge_padding: int = 0
    synthesis_window: str | None = None
    batch_size: int = 1
    normalize: str | None = None
    residual_stem: str | None = None
    any_length: bool = False


def check_contract(contract: RunContract) -> None:
    """UsageError for settings a style cannot run with (e.g. a fraction as MSST's overlap count)."""
    style = contract.style
    if style not in STYLES:
        raise UsageError(f"unknown chunking style '{style}' (known: {', '.join(STYLES)})")
    if contract.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {contract.batch_size}")
    if contract.segment is None:
        return
    if contract.segment < 1:
        raise UsageError(f"chunk size must be positive, got {contract.segment}")
    if style in ("msst", "msst_demucs"):
        count = contract.num_overlap
        if count is None or int(count) != count or count < 1:
            raise UsageError(f"style '{style}' takes an integer overlap count (num_overlap), got {count}")
    elif style == "demucs":
        if contract.overlap is None or not 0 <= contract.overlap < 1:
            raise UsageError(f"style 'demucs' takes overlap as a fraction in [0, 1), got {contract.overlap}")
        if contract.padded_length is not None and contract.segment > contract.padded_length:
            raise UsageError(f"chunks of {contract.segment} samples do not fit the model's "
                             f"{contract.padded_length}-sample input")
    elif style == "fade":
        if contract.overlap is None or not 0 <= contract.overlap <= 0.75:
            # Beyond 3/4 a sample could fall only in zero-weight margins of every chunk covering it.
            raise UsageError(f"--overlap must be a fraction between 0 and 0.75, got {contract.overlap}")
    elif style == "bsrnn":
        if contract.hop is None or not 0 < contract.hop <= contract.segment:
            raise UsageError(f"style 'bsrnn' needs 0 < hop <= segment, got {contract.hop} and {contract.segment}")
        if contract.synthesis_window not in (None, "hann"):
            raise UsageError(f"style 'bsrnn': synthesis window '{contract.synthesis_window}' is not supported")


# --------------------------------------------------------------------------------------------
# Mixture normalization: the one place it is defined
#
# Some references standardize the whole track by its mono mix (the mean over channels) before
# separating and map the stems back with stem * scale + mean:
#   "msst"      (MSST `inference.normalize`, SCNet small): scale = population std (ddof 0);
#   "demucs"    (demucs v4 api): scale = sample std (ddof 1) + 1e-8;
#   "demucs_v2" (demucs v2 separate.py, Conv-TasNet): scale = sample std (ddof 1).
# A silent (constant) track has scale 0 and is left unscaled (scale 1) instead of turning into
# NaNs. The statistics are gathered in float64, over blocks for a streamed file.


def mixture_scale(kind: str, variance_sum: float, count: int) -> float:
    """The scale of normalization `kind` from the sum of squared deviations over `count` samples."""
    if kind not in NORMALIZATIONS:
        raise UsageError(f"unknown normalization '{kind}' (known: {', '.join(NORMALIZATIONS)})")
    ddof = 0 if kind == "msst" else 1
    scale = (max(variance_sum, 0.0) / max(count - ddof, 1)) ** 0.5 if count > ddof else float("nan")
    if kind == "demucs":
        scale += 1e-8
    return scale if scale > 0 and scale == scale and scale != float("inf") else 1.0


class MixtureStatistics:
    """Mean and spread of a mixture's mono mix, gathered block by block (Chan et al.'s pairwise
    update in float64, so the order of blocks does not matter to rounding beyond 1e-16)."""

    def __init__(self):
        self.count = 0
        self.mean = 0.0
        self.squares = 0.0  # sum of squared deviations from the mean

    def update(self, block: torch.Tensor) -> None:
        """Add (channels, n) samples."""
        mono = block.double().mean(dim=0)
        n = mono.numel()
        if n == 0:
            return
        block_mean = float(mono.mean())
        block_squares = float((mono - block_mean).pow(2).sum())
        total = self.count + n
        delta = block_mean - self.mean
        self.mean += delta * n / total
        self.squares += block_squares + delta * delta * self.count * n / total
        self.count = total

    def normalization(self, kind: str) -> tuple[float, float]:
        """(mean, scale) of normalization `kind`."""
        return self.mean, mixture_scale(kind, self.squares, self.count)


def normalize_mixture(mix: torch.Tensor, kind: str) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Standardize mixtures (..., channels, samples), each by its own mono mix; returns the
    normalized mixtures and the function that maps stems (..., stems, channels, samples) back.
    Differentiable in `mix` (the trainable kernel's training runs through it)."""
    if mix.dim() < 2:
        raise UsageError(f"normalize_mixture expects (..., channels, samples), got {tuple(mix.shape)}")
    if kind not in NORMALIZATIONS:
        raise UsageError(f"unknown normalization '{kind}' (known: {', '.join(NORMALIZATIONS)})")
    mono = mix.mean(dim=-2)
    mean = mono.mean(dim=-1)
    scale = mono.std(dim=-1, correction=0 if kind == "msst" else 1)
    if kind == "demucs":
        scale = scale + 1e-8
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
    normalized = (mix - mean[..., None, None]) / scale[..., None, None]

    def restore(stems: torch.Tensor) -> torch.Tensor:
        return stems * scale[..., None, None, None] + mean[..., None, None, None]

    return normalized, restore


# --------------------------------------------------------------------------------------------
# Chunk plans: where each chunk sits, what it reads, how its output is weighted.
#
# Every style is described in "virtual" coordinates: the signal as the reference pads it
# (MSST reflects `border` samples onto both ends, BSRNN adds zeros), `virtual_length` long;
# the estimate is the virtual result from `crop` on, as long as the signal. A chunk's output
# covers [start, start + length) of the virtual signal, chunk starts never decrease, and every
# virtual sample below the next chunk's start is final once the chunks before it have run:
# that is what lets the executor emit the estimate block by block in bounded memory.


@dataclass(frozen=True)
class Chunk:
    start: int  # first virtual sample of the chunk's output span
    length: int  # samples of output it contributes (real samples of the signal it covers)


class _Plan:
    """The chunk plan of one style for a signal of `length` samples."""

    divide = True  # the estimate is the weighted sum divided by the summed weights
    nan_to_zero = False

    def __init__(self, contract: RunContract, length: int):
        self.contract = contract
        self.length = length
        self.segment = contract.segment
        self.virtual_length = length
        self.crop = 0

    # chunk layout ------------------------------------------------------------------------
    def chunks(self) -> list[Chunk]:
        raise NotImplementedError

    def groups(self, chunks: list[Chunk]) -> list[range]:
        size = self.contract.batch_size
        return [range(first, min(first + size, len(chunks))) for first in range(0, len(chunks), size)]

    # what a chunk reads --------------------------------------------------------------------
    def source_index(self, virtual: int) -> int:
        """The signal sample behind a virtual sample, or -1 where the virtual signal is zero."""
        return virtual if 0 <= virtual < self.length else -1

    def input_span(self, chunk: Chunk) -> tuple[int, int]:
        """The virtual samples the chunk's model input is made of."""
        return chunk.start, chunk.start + chunk.length

    def model_input(self, chunk: Chunk, part: torch.Tensor) -> torch.Tensor:
        """The model's input for `chunk`, from `part` = the virtual samples of `input_span`."""
        missing = self.segment - part.shape[-1]
        return F.pad(part, (0, missing)) if missing else part  # the batch is stacked (copied) anyway

    # what its output contributes ----------------------------------------------------------
    def crop_output(self, out: torch.Tensor, chunk: Chunk) -> torch.Tensor:
        return out[..., : chunk.length]

    def weight(self, index: int, chunk: Chunk, group: range, total: int) -> torch.Tensor | float:
        return 1.0


class _MsstPlan(_Plan):
    """ZFTurbo's MSST demix: reflect border, faded windows decided per batch."""

    nan_to_zero = True

    def __init__(self, contract, length):
        super().__init__(contract, length)
        self.step = self.segment // int(contract.num_overlap)
        self.border = self.segment - self.step
        self.reflect = length > 2 * self.border and self.border > 0
        if self.reflect:
            self.virtual_length = length + 2 * self.border
            self.crop = self.border
        self.fade = self.segment // 10
        self.window = _linear_fade_window(self.segment, self.fade)

    def chunks(self):
        total = self.virtual_length
        return [Chunk(start, min(self.segment, total - start)) for start in range(0, total, self.step)]

    def source_index(self, virtual):
        if not self.reflect:
            return super().source_index(virtual)
        index = virtual - self.border
        if index < 0:
            index = -index
        if index >= self.length:
            index = 2 * (self.length - 1) - index
        return index

    def model_input(self, chunk, part):
        missing = self.segment - chunk.length
        if missing:
            mode = "reflect" if chunk.length > self.segment // 2 else "constant"
            part = F.pad(part.unsqueeze(0), (0, missing), mode=mode).squeeze(0)
        return part

    def weight(self, index, chunk, group, total):
        window = self.window
        # The reference decides per batch: a batch whose last chunk is the track's first chunk
        # has no fade-in; otherwise a batch holding the final chunk has no fade-out.
        if self.fade > 0 and group[-1] == 0:
            window = window.clone()
            window[: self.fade] = 1
        elif self.fade > 0 and group[-1] == total - 1:
            window = window.clone()
            window[-self.fade:] = 1
        return window[: chunk.length]


class _MsstDemucsPlan(_Plan):
    """MSST's HT-Demucs mode: step = segment // num_overlap, zero-padded chunks, plain mean."""

    def chunks(self):
        step = self.segment // int(self.contract.num_overlap)
        return [Chunk(start, min(self.segment, self.length - start)) for start in range(0, self.length, step)]


class _DemucsPlan(_Plan):
    """demucs' apply_model: triangle weights, each chunk centred in the model's valid length."""

    def __init__(self, contract, length):
        super().__init__(contract, length)
        self.triangle = _triangle_weight(self.segment)

    def chunks(self):
        stride = int((1 - self.contract.overlap) * self.segment)
        return [Chunk(start, min(self.segment, self.length - start)) for start in range(0, self.length, stride)]

    def _padded(self, chunk: Chunk) -> int:
        return self.contract.padded_length if self.contract.padded_length is not None else chunk.length

    def groups(self, chunks):
        # Chunks can only share a batch when their model inputs have the same length.
        groups, first = [], 0
        for index in range(1, len(chunks) + 1):
            if (index == len(chunks) or index - first == self.contract.batch_size
                    or self._padded(chunks[index]) != self._padded(chunks[first])):
                groups.append(range(first, index))
                first = index
        return groups

    def input_span(self, chunk):
        # `length` samples at `start`, widened symmetrically to the padded length with real
        # neighbours where the signal has them and zeros beyond its ends (demucs' TensorChunk).
        extra = self._padded(chunk) - chunk.length
        begin = chunk.start - extra // 2
        return begin, begin + self._padded(chunk)

    def model_input(self, chunk, part):
        return part

    def crop_output(self, out, chunk):
        extra = out.shape[-1] - chunk.length
        if extra < 0:
            raise RuntimeError(f"model returned {out.shape[-1]} samples for a {chunk.length}-sample input")
        return out[..., extra // 2 : out.shape[-1] - (extra - extra // 2)]

    def weight(self, index, chunk, group, total):
        return self.triangle[: chunk.length]


class _FadePlan(_Plan):
    """sfsep's own: chunks on a regular grid, overlaps cross-faded in their middle. For a model
    that takes inputs of a fixed length the last chunk ends at the signal's end (it overlaps the
    one before it by more); for one that takes any length (`any_length`) it stays on the grid and
    runs shorter, unpadded, so it costs no more than it covers and every chunk starts a whole
    number of steps from the first."""

    def __init__(self, contract, length):
        super().__init__(contract, length)
        self.starts = fade_plan(length, self.segment, contract.overlap, on_grid=contract.any_length)

    def chunks(self):
        return [Chunk(start, min(self.segment, self.length - start)) for start in self.starts]

    def groups(self, chunks):
        groups = super().groups(chunks)
        last = groups[-1]
        if self.contract.any_length and len(last) > 1 and chunks[last[-1]].length < self.segment:
            # The short last chunk runs alone (unpadded), so batching never changes the result.
            groups[-1:] = [range(last.start, last.stop - 1), range(last.stop - 1, last.stop)]
        return groups

    def model_input(self, chunk, part):
        if self.contract.any_length and chunk.length < self.segment:
            return part  # a short chunk as it is
        return super().model_input(chunk, part)

    def weight(self, index, chunk, group, total):
        return fade_weight(self.starts, index, self.segment, self.length)


class _BsrnnPlan(_Plan):
    """BSRNN's reference separator: zero edges, fixed windows every `hop`, summed with a
    constant 1 / (window / hop) (or a Hann synthesis window), not normalized."""

    divide = False

    def __init__(self, contract, length):
        super().__init__(contract, length)
        window, hop, edge = self.segment, contract.hop, contract.edge_padding
        tail = hop - (length + 2 * edge - window) % hop
        self.virtual_length = length + 2 * edge + tail
        self.crop = edge
        if self.virtual_length < window:
            # The reference runs no chunk at all here and returns silence; one zero-padded
            # chunk gives the signal an estimate instead.
            self.virtual_length = window
        self.count = (self.virtual_length - window) // hop + 1
        self.synthesis = (torch.hann_window(window, periodic=True) if contract.synthesis_window == "hann"
                          else window / hop)

    def chunks(self):
        return [Chunk(index * self.contract.hop, self.segment) for index in range(self.count)]

    def source_index(self, virtual):
        index = virtual - self.contract.edge_padding
        return index if 0 <= index < self.length else -1

    def weight(self, index, chunk, group, total):
        if isinstance(self.synthesis, torch.Tensor):
            return self.synthesis
        return 1.0 / self.synthesis


class _WholePlan(_Plan):
    """No chunking: the whole signal in one call."""

    def __init__(self, contract, length):
        super().__init__(contract, length)
        self.segment = length

    def chunks(self):
        return [Chunk(0, self.length)]

    def model_input(self, chunk, part):
        return part


_PLANS = {"msst": _MsstPlan, "msst_demucs": _MsstDemucsPlan, "demucs": _DemucsPlan, "fade": _FadePlan,
          "bsrnn": _BsrnnPlan}


def chunk_plan(contract: RunContract, length: int) -> _Plan:
    """The plan `contract` gives a signal of `length` samples (validated)."""
    check_contract(contract)
    if contract.segment is None or length == 0:
        return _WholePlan(contract, length)
    return _PLANS[contract.style](contract, length)


def count_chunks(contract: RunContract, length: int) -> int:
    """How many model inputs a signal of `length` samples takes (for progress totals)."""
    return len(chunk_plan(contract, length).chunks())


def _linear_fade_window(chunk_size: int, fade_size: int) -> torch.Tensor:
    window = torch.ones(chunk_size)
    if fade_size > 0:
        window[:fade_size] = torch.linspace(0, 1, fade_size)
        window[-fade_size:] = torch.linspace(1, 0, fade_size)
    return window


def _triangle_weight(segment: int, transition_power: float = 1.0) -> torch.Tensor:
    rising = torch.arange(1, segment // 2 + 1)
    falling = torch.arange(segment - segment // 2, 0, -1)
    weight = torch.cat([rising, falling]).float()
    return (weight / weight.max()) ** transition_power


def fade_plan(length: int, chunk_size: int, overlap: float, on_grid: bool = False) -> list[int]:
    """Chunk starts for the 'fade' style: a regular grid whose last chunk ends at `length`, or
    with `on_grid`, the grid itself up to the first chunk that reaches `length` (that chunk is
    then shorter than `chunk_size`, and longer than the overlap)."""
    if length <= chunk_size:
        return [0]
    step = max(1, chunk_size - int(round(overlap * chunk_size)))
    if on_grid:
        return list(range(0, length - chunk_size + step, step))
    starts = list(range(0, length - chunk_size, step))
    starts.append(length - chunk_size)
    return starts


def fade_weight(starts: list[int], index: int, chunk_size: int, length: int) -> torch.Tensor:
    """The weights of chunk `index` of a fade plan: inside each overlap, zero for its outer
    quarters, a linear cross-fade in its middle half. The first chunk has no fade-in, the last
    no fade-out."""
    start = starts[index]
    span = min(chunk_size, length - start)
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
    return w


# --------------------------------------------------------------------------------------------
# The executor: pull signal blocks, run chunks in batches, emit the estimate block by block


EMIT_SAMPLES = 1 << 16
"""Most samples `run_chunks` hands out at a time (4 stereo stems: 2 MB)."""


class _SignalWindow:
    """The stretch of a block stream that chunks still need: samples [first, first + held)."""

    def __init__(self, blocks: Iterator[torch.Tensor]):
        self._blocks = blocks
        self._parts: list[torch.Tensor] = []
        self._data: torch.Tensor | None = None
        self.first = 0
        self.end = 0  # one past the last sample pulled so far
        self.exhausted = False

    def ensure(self, end: int) -> None:
        while self.end < end and not self.exhausted:
            block = next(self._blocks, None)
            if block is None:
                self.exhausted = True
                break
            if block.shape[-1]:
                self._parts.append(block)
                self.end += block.shape[-1]

    def _joined(self) -> torch.Tensor:
        if self._parts:
            pieces = ([self._data] if self._data is not None else []) + self._parts
            self._data = torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]
            self._parts = []
        return self._data

    def take(self, begin: int, end: int) -> torch.Tensor:
        """Samples [begin, end) of the stream (all of them must be held)."""
        data = self._joined()
        if begin < self.first or end > self.end:
            raise RuntimeError(f"samples [{begin}, {end}) are not held ([{self.first}, {self.end}))")
        return data[..., begin - self.first : end - self.first]

    def drop_before(self, position: int) -> None:
        position = min(position, self.end)
        if position > self.first:
            data = self._joined()
            # A copy, not a view: a view would keep the whole joined stretch alive.
            self._data = data[..., position - self.first :].clone()
            self.first = position


def _zero_offset(plan: _Plan) -> int:
    """Virtual index of signal sample 0 for the plans that pad with zeros (BSRNN's edges)."""
    return plan.contract.edge_padding if isinstance(plan, _BsrnnPlan) else 0


def _reflects(plan: _Plan) -> bool:
    return isinstance(plan, _MsstPlan) and plan.reflect


def _read_virtual(plan: _Plan, window: _SignalWindow, begin: int, end: int) -> torch.Tensor:
    """Virtual samples [begin, end) of the plan, from the held signal."""
    if _reflects(plan):
        if begin >= plan.border and end <= plan.border + plan.length:  # nothing reflected
            return window.take(begin - plan.border, end - plan.border)
        index = torch.arange(begin, end) - plan.border
        index = torch.where(index < 0, -index, index)
        index = torch.where(index >= plan.length, 2 * (plan.length - 1) - index, index)
        low, high = int(index.min()), int(index.max()) + 1
        return window.take(low, high)[..., index - low]
    # Zero outside the signal: the virtual span maps to one contiguous stretch of samples.
    first, last = begin - _zero_offset(plan), end - _zero_offset(plan)
    real_first, real_last = min(max(0, first), plan.length), max(0, min(plan.length, last))
    if real_last <= real_first:
        channels = window.take(window.first, window.first).shape[0]
        return torch.zeros(channels, end - begin)
    part = window.take(real_first, real_last)
    if real_first == first and real_last == last:
        return part  # a view of the held signal: F.pad copies even when it pads nothing
    return F.pad(part, (real_first - first, last - real_last))


def _needed_range(plan: _Plan, chunk: Chunk) -> tuple[int, int]:
    """The signal samples [low, high) a chunk reads."""
    begin, end = plan.input_span(chunk)
    if _reflects(plan):
        # The mapping is monotone between its folds (virtual `border` and `border + length - 1`),
        # so its extremes lie at the span's ends or at a fold inside it.
        points = [plan.source_index(begin), plan.source_index(end - 1)]
        if begin <= plan.border <= end - 1:
            points.append(0)
        if begin <= plan.border + plan.length - 1 <= end - 1:
            points.append(plan.length - 1)
        return min(points), max(points) + 1
    first, last = begin - _zero_offset(plan), end - _zero_offset(plan)
    real_first = min(max(0, first), plan.length)
    return real_first, max(real_first, min(plan.length, last))


def run_chunks(
    model: Callable[[torch.Tensor], torch.Tensor],
    blocks: Iterable[torch.Tensor],
    length: int,
    contract: RunContract,
    *,
    device: torch.device,
    precision: str = "fp32",
    on_chunks: Callable[[int], None] | None = None,
) -> Iterator[torch.Tensor]:
    """Run `model` over a signal that arrives as (channels, n) `blocks` (`length` samples in
    all) by the contract's chunk plan; yields the estimate (stems, channels, n) in consecutive
    blocks, `length` samples in all, each as soon as no later chunk can change it.

    Memory is bounded by the chunks of one batch and the samples between the oldest chunk still
    needed and the newest, whatever `length` is. The result does not depend on how the input is
    cut into blocks. `on_chunks(n)` is called after each batch with the number of chunks run.
    """
    plan = chunk_plan(contract, length)
    chunks = plan.chunks()
    groups = plan.groups(chunks)
    needed = [_needed_range(plan, chunk) for chunk in chunks]
    # keep_from[i]: the first signal sample any chunk from i on reads.
    keep_from = [0] * (len(chunks) + 1)
    keep_from[-1] = length
    for index in range(len(chunks) - 1, -1, -1):
        keep_from[index] = min(needed[index][0], keep_from[index + 1])

    window = _SignalWindow(iter(blocks))
    result: torch.Tensor | None = None  # weighted sums over virtual [result_start, result_start + n)
    weight_sum: torch.Tensor | None = None
    result_start = 0
    emitted = plan.crop  # next virtual sample to hand out
    stop = plan.crop + length
    for group in groups:
        window.ensure(max(needed[i][1] for i in group))
        inputs = []
        for i in group:
            part = _read_virtual(plan, window, *plan.input_span(chunks[i]))
            inputs.append(plan.model_input(chunks[i], part))
        # Inference mode only around the model: this is a generator, and a mode entered around
        # its `yield` would stay on in the caller while the generator waits.
        with torch.inference_mode(), autocast_context(device, precision):
            out = model(torch.stack(inputs).to(device))
            if out.dim() == 3:  # a model that returns one stem without a stem axis
                out = out.unsqueeze(1)
            out = out.float().cpu()
        # `out` may be an inference tensor: it is only read below (outside inference mode that
        # is allowed), never modified in place nor copied, which would hold a second chunk of stems.
        for j, i in enumerate(group):
            chunk = chunks[i]
            piece = plan.crop_output(out[j], chunk)
            w = plan.weight(i, chunk, group, len(chunks))
            end = chunk.start + chunk.length
            if result is None:
                result = torch.zeros(*piece.shape[:-1], 0)
                weight_sum = torch.zeros(0)
                result_start = chunk.start
            grow = end - (result_start + result.shape[-1])
            if grow > 0:
                result = F.pad(result, (0, grow))
                weight_sum = F.pad(weight_sum, (0, grow))
            span = slice(chunk.start - result_start, end - result_start)
            if isinstance(w, torch.Tensor):
                result[..., span].addcmul_(piece, w)  # in place: no chunk-sized temporary
            else:
                result[..., span].add_(piece, alpha=w)
            weight_sum[span] += w
        del out, piece, inputs, w  # not held while the consumer runs and the next chunk is made
        if on_chunks is not None:
            on_chunks(len(group))
        final = chunks[group[-1] + 1].start if group[-1] + 1 < len(chunks) else plan.virtual_length
        final = min(final, stop)
        # What is final goes out in pieces of at most EMIT_SAMPLES, each a tensor of its own (not
        # a view of the sums): every stage downstream holds the piece it last handled while the
        # next one is made, and chunk-sized pieces held by each stage added up to hundreds of MB.
        while emitted < final:
            upto = min(final, emitted + EMIT_SAMPLES)
            part = result[..., emitted - result_start : upto - result_start]
            if plan.divide:
                part = part / weight_sum[emitted - result_start : upto - result_start]
                if plan.nan_to_zero:
                    part = torch.nan_to_num(part, nan=0.0)
            else:
                part = part.clone()
            yield part
            del part
            emitted = upto
        drop = max(0, min(emitted, final) - result_start)
        if drop:
            # Copies of what later chunks still add to (an overlap): views would keep the whole
            # chunk-sized sums alive while the next chunk runs.
            result, weight_sum = result[..., drop:].clone(), weight_sum[drop:].clone()
            result_start += drop
        window.drop_before(keep_from[group[-1] + 1])
    if emitted < stop:  # samples no chunk covered (cannot happen with the plans above)
        raise RuntimeError(f"chunk plan left samples {emitted}..{stop} uncovered")


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
    any_length: bool = False,
) -> torch.Tensor:
    """Separate `mix` (channels, samples) chunk by chunk; returns stems (stems, channels, samples)
    as float32 on the CPU. The whole-signal form of `run_chunks` (`any_length`: see RunContract).

    `model` maps (batch, channels, chunk) to (batch, stems, channels, chunk) on `device` (the
    model must already be there). `chunk_size=None` runs the whole signal in one call.
    `overlap` is the integer count for styles "msst"/"msst_demucs", a fraction otherwise.
    """
    if mix.dim() != 2:
        raise ValueError(f"demix expects (channels, samples), got shape {tuple(mix.shape)}")
    is_count = style in ("msst", "msst_demucs")
    contract = RunContract(style=style, segment=chunk_size, num_overlap=overlap if is_count else None,
                           overlap=None if is_count else overlap, padded_length=padded_length,
                           batch_size=batch_size, any_length=any_length)
    return run_whole(model, mix, contract, device=device, precision=precision, progress=progress)


def run_whole(model, mix: torch.Tensor, contract: RunContract, *, device=None, precision: str = "fp32",
              progress: ProgressCallback | None = None) -> torch.Tensor:
    """`run_chunks` on a signal held in memory: stems (stems, channels, samples)."""
    device = resolve_device(device) if device is not None else torch.device("cpu")
    mix = mix.float().cpu()
    length = mix.shape[-1]
    total = count_chunks(contract, length)
    done = 0

    def counted(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    parts = list(run_chunks(model, [mix], length, contract, device=device, precision=precision,
                            on_chunks=counted))
    return torch.cat(parts, dim=-1)
