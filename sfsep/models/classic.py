"""Classical separators: no weights, any sampling rate, the default model offline.

Two modules turn a waveform batch (batch, channels, samples) into four stems
(batch, 4, channels, samples) in the order `STEMS` = vocals, drums, bass, other:

- `ClassicSeparator` (family "classic"): median-filter HPSS followed by REPET-SIM.
- `NMFSeparator` (family "nmf"): KL-divergence NMF of the magnitude spectrogram with a
  rule that assigns each component to a stem.

Rate independence. Every size is chosen in seconds or in Hz and converted with the rate the
module is built for (`config["sample_rate"]`, the rate of the audio it will see): the STFT
window is ~46 ms (so about 21.5 Hz per bin at every rate), the hop a quarter of it, median
kernels are given in seconds and in Hz, bands in Hz (clipped to the Nyquist frequency).
The FFT size is the 5-smooth multiple of 4 nearest to the window length in samples, so the
bin spacing stays close to the target at 4 kHz as well as at 192 kHz.

Channels. Both separators analyse the mid signal (the mean over channels) and apply the
masks they compute to each channel's own STFT, so the stereo image is kept and every
channel receives the same time-frequency decision.

Exact sums. Vocals, drums and bass are masked STFTs; `other` is the mixture minus those
three in the time domain, so the four stems add up to the input (up to float rounding).

Memory. Nothing grows faster than the input's length. REPET-SIM's frame similarity (within
a window of +-`repet_window_seconds`; frames squared in full with a window of 0) is computed
a block of frames at a time; median filters work tile by tile; the analysis STFT and the
masking + inverse STFT run on segments of frames (with margins, so the result equals
whole-signal processing bit for bit). `block_megabytes` sizes these blocks. What stays
whole: the mid's magnitude and three masks (bins x frames is about 2 x samples at any rate,
so ~32 bytes per input sample of each batch item) and the output. NMF factorises
independent blocks of `nmf_block_seconds`.

Time. Linear in the input's length for both (classic: with its default bounded window).

Chunks. Each module says how to run it chunk by chunk (`run_contract_hint`: segment and
overlap for inference.demix's "fade" style), chosen so that memory per chunk is bounded and
the chunked result equals (classic) or stays close to (NMF) the whole-signal result.

Everything is torch (torch.stft/istft), follows the input's device, and is deterministic:
NMF starts from a fixed-seed CPU `torch.Generator` whose draws are moved to the device.
Half-precision inputs are processed in float32 and returned in their own dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from ..errors import ModelError

STEMS = ("vocals", "drums", "bass", "other")

# Tuning shared by both separators, with their defaults.
_COMMON_DEFAULTS: dict[str, Any] = {
    "window_ms": 46.4,  # STFT window length (46.4 ms = 2048 samples at 44.1 kHz)
    "hop_fraction": 0.25,  # hop as a fraction of the window
    "vocal_low_hz": 150.0,  # vocal band: soft edges, an octave wide, around these limits
    "vocal_high_hz": 8000.0,
    "bass_cutoff_hz": 200.0,  # bass: soft low-pass, flat below, an octave roll-off above
    "block_megabytes": 64.0,  # working memory of one block in the blocked steps
}

# "classic" (HPSS + REPET-SIM).
_CLASSIC_DEFAULTS: dict[str, Any] = {
    **_COMMON_DEFAULTS,
    "harmonic_kernel_seconds": 0.2,  # HPSS median over time (harmonic estimate)
    "percussive_kernel_hz": 400.0,  # HPSS median over frequency (percussive estimate)
    "mask_power": 2.0,  # HPSS soft mask exponent (2 = Wiener-like)
    "drums_vocal_attenuation": 0.5,  # share of the percussive part removed in the vocal band
    "repet_neighbours": 20,  # k: how many similar frames make the repeating spectrum
    "repet_min_distance_seconds": 0.25,  # minimum distance between two chosen frames
    # Look for similar frames within +- this many seconds (0 = the whole input, time growing
    # with the square of its length). Rafii & Pardo's online REPET-SIM (ICASSP 2013) compares
    # each frame with a buffer of the past few seconds only (5 s in their reference code);
    # offline we look both ways. +-4 s holds at least one 4/4 bar on each side down to 60 bpm
    # (2 s at 120 bpm), leaves room for k = 20 frames 0.25 s apart, keeps the cost linear and
    # the receptive field short enough for 66-s chunks (run_contract_hint). On synthetic
    # songs (bench/bench_classic.py --quality) +-2, 4 and 6 s score alike, and above the
    # whole-input search.
    "repet_window_seconds": 4.0,
    "repet_max_hz": 8000.0,  # frequencies used for the similarity (pooled ~86 Hz bands)
}

# "nmf".
_NMF_DEFAULTS: dict[str, Any] = {
    **_COMMON_DEFAULTS,
    "nmf_components": 32,
    "nmf_bass_components": 4,  # of which this many start (and stay) within the bass band
    "nmf_iterations": 150,
    "nmf_seed": 0,
    "nmf_block_seconds": 30.0,  # NMF runs on independent blocks of this length
    "nmf_max_hz": 22050.0,  # the factorisation sees bins up to here; above, see NMFSeparator
    "nmf_upper_iterations": 30,
    "mask_power": 1.0,  # Wiener mask exponent on the grouped component spectrograms
    "bass_low_share": 0.5,  # component -> bass when this share of its spectrum is below cutoff
    "drums_flatness": 0.1,  # component -> drums when its spectrum is at least this flat
    "vocals_band_share": 0.7,  # component -> vocals when this share lies in the vocal band ...
    "vocals_max_repetition": 0.5,  # ... and its activation repeats less than this
    "nmf_min_period_seconds": 1.0,  # shortest period considered a repetition
}

_MIN_RATE = 1000

# Run-time contract (see run_contract_hint): a classic chunk is this many overlaps long
# (4: every sample is processed 4/3 times), an NMF chunk steps this many NMF blocks (2: every
# sample is factorised 3/2 times).
_CHUNK_OVERLAPS = 4
_NMF_CHUNK_STEP_BLOCKS = 2


def _read_config(config: dict[str, Any], defaults: dict[str, Any], family: str) -> dict[str, Any]:
    """Merge `config` over `defaults`, check the rate, and refuse unknown tuning keys."""
    if "sample_rate" not in config:
        raise ModelError(f"model config for '{family}' needs 'sample_rate' (the input's rate in Hz)")
    sample_rate = config["sample_rate"]
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) or sample_rate != int(sample_rate):
        raise ModelError(f"'{family}' config: sample_rate must be an integer number of Hz, got {sample_rate!r}")
    if int(sample_rate) < _MIN_RATE:
        raise ModelError(f"'{family}' config: sample_rate {sample_rate} Hz is below {_MIN_RATE} Hz")
    # Keys that other parts of the program attach to every model config are let through.
    ignored = {"sample_rate", "stems", "family", "name"}
    unknown = sorted(set(config) - set(defaults) - ignored)
    if unknown:
        raise ModelError(
            f"'{family}' config: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(defaults))}"
        )
    merged = {**defaults, **{key: config[key] for key in config if key in defaults}}
    merged["sample_rate"] = int(sample_rate)
    if not 0 < merged["hop_fraction"] <= 0.5 or merged["window_ms"] * 1e-3 * merged["sample_rate"] < 8:
        raise ModelError(
            f"'{family}' config: window_ms={merged['window_ms']} and hop_fraction={merged['hop_fraction']} "
            "need a window of at least 8 samples and a hop of at most half of it"
        )
    return merged


# ----------------------------------------------------------------------------- spectral plan


def _smooth_size(target: float) -> int:
    """The multiple of 4 whose only prime factors are 2, 3, 5 nearest to `target` (FFT-friendly)."""
    best, best_error = 4, abs(target - 4)
    limit = max(8, int(target * 2))
    power2 = 4
    while power2 <= limit:
        power3 = power2
        while power3 <= limit:
            size = power3
            while size <= limit:
                if abs(size - target) < best_error:
                    best, best_error = size, abs(size - target)
                size *= 5
            power3 *= 3
        power2 *= 2
    return best


class _Spectral(nn.Module):
    """STFT sizes in samples derived from sizes in seconds/Hz, plus the band weights."""

    def __init__(self, settings: dict[str, Any]):
        super().__init__()
        self.sample_rate = settings["sample_rate"]
        self.n_fft = _smooth_size(settings["window_ms"] * 1e-3 * self.sample_rate)
        self.hop = max(1, int(round(self.n_fft * settings["hop_fraction"])))
        self.bin_hz = self.sample_rate / self.n_fft
        self.hop_seconds = self.hop / self.sample_rate
        frequencies = torch.arange(self.n_fft // 2 + 1, dtype=torch.float64) * self.bin_hz
        # Window and band weights are buffers (not state: persistent=False) so they follow .to().
        self.register_buffer("window", torch.hann_window(self.n_fft, dtype=torch.float32), persistent=False)
        self.register_buffer(
            "vocal_band",
            _band_weights(frequencies, settings["vocal_low_hz"], settings["vocal_high_hz"]).float(),
            persistent=False,
        )
        self.register_buffer(
            "bass_band", _band_weights(frequencies, 0.0, settings["bass_cutoff_hz"]).float(), persistent=False
        )

    def stft(self, signal: torch.Tensor) -> torch.Tensor:
        """(rows, samples) -> complex (rows, bins, frames); zero padding so any length works."""
        return torch.stft(
            signal,
            self.n_fft,
            self.hop,
            window=self.window.to(signal.device, signal.dtype),
            center=True,
            pad_mode="constant",
            return_complex=True,
        )

    def istft(self, spectrum: torch.Tensor, length: int) -> torch.Tensor:
        window = self.window.to(spectrum.device, spectrum.real.dtype)
        return torch.istft(spectrum, self.n_fft, self.hop, window=window, center=True, length=length)


def _band_weights(frequencies: torch.Tensor, low_hz: float, high_hz: float) -> torch.Tensor:
    """1 inside [low_hz, high_hz], raised-cosine edges one octave wide outside, 0 beyond.

    The edges are measured in octaves (log2 of the frequency ratio) so the band has the same
    shape at every rate; a limit of 0 Hz means no low edge. Bins above Nyquist do not exist,
    so a high limit beyond it simply keeps every bin up there.
    """
    weights = torch.ones_like(frequencies)
    safe = frequencies.clamp_min(1e-3)
    if low_hz > 0:
        below = torch.log2(low_hz / safe).clamp(0.0, 1.0)  # octaves below the low edge
        weights = weights * 0.5 * (1 + torch.cos(math.pi * below))
    above = torch.log2(safe / high_hz).clamp(0.0, 1.0)  # octaves above the high edge
    return weights * 0.5 * (1 + torch.cos(math.pi * above))


# ----------------------------------------------------------------------------- shared pieces


def _check_mix(mix: torch.Tensor) -> None:
    if mix.dim() != 3:
        raise ModelError(f"separator input must be (batch, channels, samples), got shape {tuple(mix.shape)}")
    if not mix.is_floating_point():
        raise ModelError(f"separator input must be floating point, got {mix.dtype}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# Medians of a few values per point (HPSS kernels, REPET-SIM's k frames) are taken with
# comparator networks on whole tensors: torch.median over a short last dimension pays a
# per-row cost that makes it several times slower on CPU than a few dozen elementwise
# min/max passes over cache-sized chunks. A median is a selection, so every way of taking it
# returns the same value bit for bit: the networks below only change the cost.

_CHUNK_ELEMENTS = 1 << 16  # elements per operand in one pass of a network (fits in cache)


@functools.lru_cache(maxsize=None)
def _sorting_network(count: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort on `count` wires, as compare-exchange pairs (low, high).

    It is the network for the next power of two with every pair that touches a wire >= count
    left out: that is the network run on inputs padded with +inf, where those pairs never
    exchange anything. About n log2(n)^2 / 4 pairs (63 for 16 wires, against 120 for the
    odd-even transposition sort).
    """
    size = 1
    while size < count:
        size *= 2
    pairs: list[tuple[int, int]] = []

    def merge(first: int, length: int, stride: int) -> None:
        # Merge the two sorted halves of wires first, first + stride, ... (length / stride wires).
        if 2 * stride < length:
            merge(first, length, 2 * stride)
            merge(first + stride, length, 2 * stride)
            starts = range(first + stride, first + length - stride, 2 * stride)
            pairs.extend((index, index + stride) for index in starts)
        else:
            pairs.append((first, first + stride))

    def sort(first: int, length: int) -> None:
        if length > 1:
            sort(first, length // 2)
            sort(first + length // 2, length // 2)
            merge(first, length, 1)

    sort(0, size)
    return tuple((low, high) for low, high in pairs if high < count)


@functools.lru_cache(maxsize=None)
def _selection_network(count: int, ranks: tuple[int, ...]) -> tuple[tuple[int, int, bool, bool], ...]:
    """The part of `_sorting_network(count)` that the sorted outputs `ranks` depend on, as
    (low, high, keep_low, keep_high): walking the network backwards from the wanted wires
    keeps a pair when one of its outputs is needed later, and only that output is computed
    (a median of 17: 124 min/max passes, where a pruned odd-even transposition network
    computing both outputs of every pair needs 216)."""
    needed, kept = set(ranks), []
    for low, high in reversed(_sorting_network(count)):
        keep_low, keep_high = low in needed, high in needed
        if keep_low or keep_high:
            kept.append((low, high, keep_low, keep_high))
            needed.update((low, high))
    return tuple(kept[::-1])


def _select(operands: list[torch.Tensor], ranks: tuple[int, ...]) -> list[torch.Tensor]:
    """Elementwise order statistics `ranks` (0 = smallest) of same-shape tensors. The operands
    are read, never written (they may be views of a shared array)."""
    wires = list(operands)
    for low, high, keep_low, keep_high in _selection_network(len(wires), ranks):
        smaller = torch.minimum(wires[low], wires[high]) if keep_low else None
        if keep_high:
            wires[high] = torch.maximum(wires[low], wires[high])
        if keep_low:
            wires[low] = smaller
    return [wires[rank] for rank in ranks]


def _median_of(operands: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise median (the upper one for an even count) of same-shape tensors."""
    return _select(operands, (len(operands) // 2,))[0]


@functools.lru_cache(maxsize=None)
def _sliding_group(kernel: int) -> int:
    """Outputs per group in `_median_filter` that need the fewest min/max passes per output."""

    def passes(count: int, ranks: tuple[int, ...]) -> int:
        return sum(keep_low + keep_high for *_, keep_low, keep_high in _selection_network(count, ranks))

    def per_output(group: int) -> float:
        half = kernel // 2
        shared = passes(kernel - group + 1, tuple(range(half - group + 1, half + 1)))
        extras = passes(group - 1, tuple(range(group - 1))) + 2 * (group - 1)
        return shared / group + extras

    return min(range(1, min(kernel // 2 + 1, 12) + 1), key=per_output)


def _median_filter(values: torch.Tensor, kernel: int, dim: int, out: torch.Tensor) -> torch.Tensor:
    """Median of a 2-D tensor over a sliding window of `kernel` (odd) entries along `dim`
    (edges replicated), written into `out` (same shape) and returned.

    Neighbouring windows share most of their entries, so outputs are taken in groups of g
    consecutive positions (g from `_sliding_group`: 4 for a kernel of 17, 5 for 19): the g
    windows of a group all contain its k - g + 1 middle entries (the core). With h = k // 2,
    the median of a window is that of the core's sorted entries of ranks h-g+1 .. h (the
    band: as many core entries lie below the band as above it, so dropping them keeps the
    median) together with the window's g - 1 entries outside the core (its extras). With the
    band A (g values) and the extras B (g - 1 values) sorted, the median of their 2g - 1
    values is min over t = 1..g of max(A[t-1], B[g-1-t]) (B[-1] = -inf). The band is
    selected once per group, so a median of 17 costs ~33 min/max passes per output instead
    of 124 for a network per window (measured: ~7x less CPU time than before).

    Positions p = q g + r of the edge-padded input are gathered into g "phase" arrays
    (phase r holds positions r, r + g, ...), so that every wire of a group is a contiguous
    slice of one phase. Works tile by tile (about _CHUNK_ELEMENTS outputs per wire). Extra
    memory: one padded copy (the phases) and the tile temporaries.
    """
    if kernel <= 1:
        return out.copy_(values)
    half = kernel // 2
    group = _sliding_group(kernel)
    core = kernel - group + 1
    band_ranks = tuple(range(half - group + 1, half + 1))
    extra_ranks = tuple(range(group - 1))
    length = values.shape[dim]
    other = 1 - dim
    groups = -(-length // group)
    columns = groups + -(-(kernel - 1) // group)  # per phase
    phases = []
    for phase in range(group):
        positions = torch.arange(phase, columns * group, group, device=values.device) - half
        phases.append(values.index_select(dim, positions.clamp_(0, length - 1)))
    # Output position q g + index is entry q of outputs[index].
    outputs = [out.narrow(dim, index, length - index)[(slice(None),) * dim + (slice(None, None, group),)]
               for index in range(min(group, length))]
    # Tiles: long along the phases' contiguous last axis, about _CHUNK_ELEMENTS in all.
    steps = [0, 0]
    sizes = {dim: groups, other: values.shape[other]}
    steps[1] = min(sizes[1], 4096)
    steps[0] = max(1, _CHUNK_ELEMENTS // steps[1])
    group_step, across_step = steps[dim], steps[other]
    for start in range(0, sizes[other], across_step):
        count = min(across_step, sizes[other] - start)
        for first in range(0, groups, group_step):
            width = min(group_step, groups - first)

            def wire(offset: int) -> torch.Tensor:
                source = phases[offset % group].narrow(other, start, count)
                return source.narrow(dim, first + offset // group, width)

            band = _select([wire(group - 1 + index) for index in range(core)], band_ranks)
            left = [wire(index) for index in range(group - 1)]
            right = [wire(kernel + index) for index in range(group - 1)]
            for index, target in enumerate(outputs):
                extras = _select(left[index:] + right[:index], extra_ranks)
                median = band[group - 1]
                for rank in range(1, group):
                    median = torch.minimum(median, torch.maximum(band[rank - 1], extras[group - 1 - rank]))
                valid = min(width, target.shape[dim] - first)
                if valid > 0:
                    target.narrow(other, start, count).narrow(dim, first, valid).copy_(median.narrow(dim, 0, valid))
    return out


def _segments(length: int, spectral: _Spectral, segment_frames: int):
    """Split a signal of `length` samples into runs of `segment_frames` STFT frames.

    Yields (first_frame, last_frame, start, stop, slice_start, slice_stop): the frames
    [first_frame, last_frame) and the samples [start, stop) they own, and a slice of the
    signal around them, starting on a hop boundary, with a margin of at least n_fft on each
    side. A frame's window spans n_fft samples around it, so the STFT of the slice has the
    same owned frames as the STFT of the whole signal, and the inverse STFT of the slice has
    the same owned samples: processing slice by slice equals processing the whole signal,
    with memory that depends on `segment_frames` only.
    """
    hop = spectral.hop
    frames = length // hop + 1
    margin = -(-spectral.n_fft // hop) * hop
    for first_frame in range(0, frames, segment_frames):
        last_frame = min(frames, first_frame + segment_frames)
        start, stop = first_frame * hop, min(length, last_frame * hop)
        yield (
            first_frame,
            last_frame,
            start,
            stop,
            max(0, start - margin),
            min(length, stop + margin),
        )


def _segment_frames(spectral: _Spectral, rows: int, block_bytes: float) -> int:
    """Frames per segment so that ~10 complex spectra of `rows` signals fit in `block_bytes`
    (the STFT, a masked copy and the inverse STFT's frame buffers), at least 256."""
    bins = spectral.n_fft // 2 + 1
    return max(256, int(block_bytes // (rows * bins * 8 * 10)))


def _magnitude(signal: torch.Tensor, spectral: _Spectral, block_bytes: float) -> torch.Tensor:
    """|STFT| (rows, bins, frames) of `signal` (rows, samples), computed segment by segment."""
    rows, length = signal.shape
    frames = length // spectral.hop + 1
    magnitude = signal.new_empty(rows, spectral.n_fft // 2 + 1, frames)
    for first, last, _, _, slice_start, slice_stop in _segments(
        length, spectral, _segment_frames(spectral, rows, block_bytes)
    ):
        offset = first - slice_start // spectral.hop
        spectrum = spectral.stft(signal[:, slice_start:slice_stop])
        magnitude[:, :, first:last] = spectrum[:, :, offset : offset + last - first].abs()
    return magnitude


def _apply_masks(mix: torch.Tensor, masks: torch.Tensor, spectral: _Spectral, block_bytes: float) -> torch.Tensor:
    """Mask each channel's STFT with `masks` (batch, 3, bins, frames); `other` is the rest.

    Works segment by segment (see `_segments`). Returns (batch, 4, channels, samples).
    """
    batch, channels, length = mix.shape
    stems = mix.new_empty(batch, len(STEMS), channels, length)
    rows = mix.reshape(batch * channels, length)
    hop = spectral.hop
    for _, _, start, stop, slice_start, slice_stop in _segments(
        length, spectral, _segment_frames(spectral, batch * channels, block_bytes)
    ):
        piece = slice_stop - slice_start
        spectrum = spectral.stft(rows[:, slice_start:slice_stop])
        spectrum = spectrum.view(batch, channels, *spectrum.shape[1:])
        first = slice_start // hop
        for stem in range(masks.shape[1]):
            mask = masks[:, stem, None, :, first : first + spectrum.shape[-1]]
            masked = (spectrum * mask).view(batch * channels, *spectrum.shape[2:])
            estimate = spectral.istft(masked, piece).view(batch, channels, piece)
            stems[:, stem, :, start:stop] = estimate[:, :, start - slice_start : stop - slice_start]
    other = stems[:, -1]
    other.copy_(mix)
    for stem in range(masks.shape[1]):
        other.sub_(stems[:, stem])  # in place: no full-length temporaries
    return stems


class _MaskSeparator(nn.Module):
    """Common forward: mid analysis -> three masks -> per-channel masking -> residual `other`."""

    STEMS = STEMS

    def __init__(self, settings: dict[str, Any]):
        super().__init__()
        self.settings = settings
        self.sample_rate = settings["sample_rate"]
        self.spectral = _Spectral(settings)
        self.block_bytes = float(settings["block_megabytes"]) * 2**20

    def masks(self, magnitude: torch.Tensor, out: torch.Tensor) -> None:
        """Write the masks of vocals, drums, bass for the mid's (bins, frames) magnitude into
        `out` (3, bins, frames); `out` is also the working memory."""
        raise NotImplementedError

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        _check_mix(mix)
        out_dtype = mix.dtype
        work = mix.to(_compute_dtype(mix.dtype))
        batch, channels, length = work.shape
        if length == 0 or channels == 0:
            return work.new_zeros(batch, len(STEMS), channels, length).to(out_dtype)
        with torch.no_grad():
            masks = None
            for item in range(batch):
                mid = work[item].mean(dim=0, keepdim=True)
                magnitude = _magnitude(mid, self.spectral, self.block_bytes)[0]  # (bins, frames)
                if masks is None:
                    masks = magnitude.new_empty(batch, 3, *magnitude.shape)
                self.masks(magnitude, masks[item])
                del magnitude
            stems = _apply_masks(work, masks, self.spectral, self.block_bytes)
        return stems.to(out_dtype)


# ----------------------------------------------------------------------------- classic


class ClassicSeparator(_MaskSeparator):
    """HPSS (Fitzgerald 2010) + REPET-SIM (Rafii & Pardo 2012) on the harmonic part.

    On the mid magnitude X (bins x frames):

    1. HPSS. H = median of X over `harmonic_kernel_seconds` of frames (steady partials
       survive, onsets are removed); P = median of X over `percussive_kernel_hz` of bins
       (broadband onsets survive, partials are removed). Soft masks
       Mh = H^p / (H^p + P^p), Mp = 1 - Mh with p = `mask_power`.
    2. REPET-SIM on the harmonic magnitude A = Mh X. Frames are compared by cosine similarity
       of A pooled into ~86 Hz bands up to `repet_max_hz`. For each frame the k =
       `repet_neighbours` most similar frames, at least `repet_min_distance_seconds` apart
       (the frame itself is the first), are chosen; their element-wise median is the
       repeating spectrum R. Repeating mask Mr = min(R, A) / A.
    3. Vocals = Mh (1 - Mr) B_vocal: the non-repeating part of the harmonic part, kept to the
       vocal band B_vocal (`vocal_low_hz`..`vocal_high_hz`, soft octave edges).
    4. Drums = Mp (1 - a B_vocal) with a = `drums_vocal_attenuation`: percussive energy inside
       the vocal band is partly left to `other` (consonants, vibrato smear of the voice).
    5. Bass = (Mh - vocals) B_bass: the low-passed (`bass_cutoff_hz`) harmonic remainder.
    6. Other = mixture minus the three (time domain).

    Similar frames are looked for within +-`repet_window_seconds` of each frame (default 4 s;
    see `_CLASSIC_DEFAULTS`): the cost is linear in the input's length, an output sample
    depends on the input within a few seconds of it, and the module can be run chunk by
    chunk with the same result (`run_contract_hint`). Within the window the k frames are
    chosen greedily, most similar first, skipping frames closer than the minimum distance to
    one already chosen. `repet_window_seconds = 0` compares every frame with every other (a
    block of frames at a time, so memory stays bounded, but the time grows with the square
    of the length); the k frames are then picked from per-segment maxima (segments of the
    minimum distance, counted from frame 0), then greedily as above.
    """

    def __init__(self, settings: dict[str, Any]):
        super().__init__(settings)
        spectral = self.spectral
        self.harmonic_kernel = _odd(settings["harmonic_kernel_seconds"] / spectral.hop_seconds)
        self.percussive_kernel = _odd(settings["percussive_kernel_hz"] / spectral.bin_hz)
        self.mask_power = float(settings["mask_power"])
        self.drums_vocal_attenuation = float(settings["drums_vocal_attenuation"])
        self.repet_neighbours = max(1, int(settings["repet_neighbours"]))
        self.repet_min_distance = max(1, int(round(settings["repet_min_distance_seconds"] / spectral.hop_seconds)))
        window_seconds = float(settings["repet_window_seconds"])
        self.repet_window = int(round(window_seconds / spectral.hop_seconds)) if window_seconds > 0 else 0
        nyquist_bins = spectral.n_fft // 2 + 1
        self.repet_bins = min(nyquist_bins, int(settings["repet_max_hz"] / spectral.bin_hz) + 1)
        self.repet_pool = max(1, int(round(86.0 / spectral.bin_hz)))

    def run_contract_hint(self) -> tuple[int, float]:
        """(segment, overlap): how to run this module chunk by chunk with inference.demix's
        "fade" style. `segment` is in samples at `sample_rate`, `overlap` a fraction of it.

        Reach. An output sample at t is made of the mask frames whose synthesis windows
        cover it (within n_fft / 2 samples). A mask frame depends on the magnitude frames
        within harmonic_kernel // 2 frames (HPSS time median; the percussive median runs over
        frequency) and, through REPET-SIM, on the harmonic part of the frames within
        +-repet_window frames, each again harmonic_kernel // 2 frames wide; a magnitude frame
        on the samples within n_fft / 2. So t depends on the input within
            R = n_fft + (repet_window + harmonic_kernel // 2) * hop   samples either side.

        Placement. "fade" weighs the outer quarters of every overlap of O samples by zero, so
        each weighted output sample lies at least O/4 from its chunk's edges: with O/4 >= R
        it sees the same input as in the whole signal. It must also see it at the same place
        relative to the STFT frames: chunks start at multiples of the step S - O, and O and S
        are whole numbers of hops, so every chunk's frames are frames of the whole signal
        (REPET-SIM's picks within the window involve no other grid: `_pick_greedy`). O/4 is
        R rounded up to a whole number of hops, S = `_CHUNK_OVERLAPS` O. The chunked output
        then equals the whole-signal output to float rounding (~3e-8 measured) everywhere:
        the module takes any length (the contract's `any_length`), so the last chunk stays on
        the grid and runs shorter instead of ending, off the frames, at the signal's end
        (see tests/test_classic.py).

        Cost. Every sample is processed S / (S - O) times: 4/3 with S = 4 O. A longer
        segment costs less (5 O: 1.25x) but needs memory in proportion, a shorter one more
        work (3 O: 1.5x, 2 O: 2x). Memory per chunk is ~75 bytes per stereo input sample at
        any rate (input, stems, magnitude, three masks) plus the `block_megabytes` buffers.
        With the default +-4 s window at 44.1 kHz: O/4 = 4.14 s, S = 66.3 s, step 49.7 s;
        one chunk grows the peak resident memory by ~220 MB (measured), 110 MB of it the
        chunk's own input and stems, whatever the track's length. Memory cannot go down to
        tens of MB without giving up the window: S > O >= 4 R, and R is at least the window.

        With repet_window_seconds = 0 (every frame compared with every other) no chunk
        reproduces the whole signal; the hint is then that of the default window, and each
        chunk compares its frames among themselves.
        """
        spectral = self.spectral
        window = self.repet_window
        if window == 0:
            window = int(round(_CLASSIC_DEFAULTS["repet_window_seconds"] / spectral.hop_seconds))
        reach = spectral.n_fft + (window + self.harmonic_kernel // 2) * spectral.hop
        overlap = 4 * (-(-reach // spectral.hop) * spectral.hop)
        return _CHUNK_OVERLAPS * overlap, 1 / _CHUNK_OVERLAPS

    def masks(self, magnitude: torch.Tensor, out: torch.Tensor) -> None:
        # The three slots of `out` hold the intermediate arrays in turn, so the whole analysis
        # needs the magnitude, `out` and one more array (inside the median filter / REPET-SIM).
        vocals, drums, bass = out.unbind(0)
        eps = torch.finfo(magnitude.dtype).tiny ** 0.5
        harmonic_mask = _median_filter(magnitude, self.harmonic_kernel, 1, out=bass)  # H for now
        percussive = _median_filter(magnitude, self.percussive_kernel, 0, out=drums)
        harmonic_mask.pow_(self.mask_power)
        denominator = percussive.pow_(self.mask_power).add_(harmonic_mask).add_(eps)
        harmonic_mask.div_(denominator)  # Mh = H^p / (H^p + P^p)
        harmonic_part = torch.mul(harmonic_mask, magnitude, out=drums)  # A = Mh X
        repeating_mask = self.repeating_spectrum(harmonic_part, out=vocals)  # R for now
        torch.minimum(repeating_mask, harmonic_part, out=repeating_mask)
        repeating_mask.div_(harmonic_part.add_(eps))  # Mr = min(R, A) / A
        vocal_band = self.spectral.vocal_band.to(magnitude)[:, None]
        bass_band = self.spectral.bass_band.to(magnitude)[:, None]
        vocals = repeating_mask.neg_().add_(1).mul_(harmonic_mask).mul_(vocal_band)  # Mh (1 - Mr) B
        drums.copy_(harmonic_mask).neg_().add_(1).mul_(1 - self.drums_vocal_attenuation * vocal_band)
        harmonic_mask.sub_(vocals).mul_(bass_band)  # bass = (Mh - vocals) B_bass

    def repeating_spectrum(self, magnitude: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """REPET-SIM's repeating spectrum of `magnitude` (bins, frames), computed in blocks
        (into `out` when given)."""
        bins, frames = magnitude.shape
        features = _pool_bins(magnitude[: self.repet_bins], self.repet_pool)  # (bands, frames)
        features = features / features.norm(dim=0, keepdim=True).clamp_min(1e-12)
        features = features.t().contiguous()  # (frames, bands)
        neighbours = self.repet_neighbours
        # The medians go through each block of frames in sub-blocks whose k gathered neighbour
        # spectra are about _CHUNK_ELEMENTS each.
        sub_block = max(16, _CHUNK_ELEMENTS // bins)
        # (frames + 2, bins): neighbour spectra are rows; two more rows of -inf and +inf fill
        # the slots that have no valid frame.
        by_frame = torch.cat([magnitude.t(), magnitude.new_full((2, bins), math.inf)])
        by_frame[frames].neg_()
        repeating = torch.empty_like(magnitude) if out is None else out
        element_size = magnitude.element_size()
        if self.repet_window == 0:
            picks = self._similar_frames_whole(features, element_size)
        else:
            picks = self._similar_frames_windowed(features, element_size)
        for start, chosen, valid in picks:
            stop = start + chosen.shape[0]
            # Slots without a valid frame (short inputs or crowded windows; they come last)
            # take the -inf row for the first ceil(missing / 2) and the +inf row after, which
            # leaves the median of the valid ones (the frame itself always is) in the middle
            # of the k values.
            if not bool(valid.all()):
                missing = neighbours - valid.sum(dim=1, keepdim=True)
                rank = torch.arange(neighbours, device=magnitude.device)[None] - (neighbours - missing)
                chosen = torch.where(valid, chosen, torch.where(rank < (missing + 1) // 2, frames, frames + 1))
            for first in range(0, stop - start, sub_block):
                part = slice(first, first + sub_block)
                operands = [by_frame[chosen[part, slot]] for slot in range(neighbours)]
                repeating[:, start + first : min(stop, start + first + sub_block)] = _median_of(operands).t()
        return repeating

    def _similar_frames_whole(self, features: torch.Tensor, element_size: int):
        """Yield (start, chosen, valid) for blocks of frames compared with every frame."""
        frames = features.shape[0]
        distance = self.repet_min_distance
        # A block of frames holds its similarities to all frames (with a few temporaries of
        # that size: within block_megabytes).
        block = int(max(1, self.block_bytes // (4 * frames * element_size)))
        columns = -(-frames // distance) * distance  # whole segments of `distance` frames
        padded = torch.cat([features, features.new_zeros(columns - frames, features.shape[1])])
        for start in range(0, frames, block):
            stop = min(frames, start + block)
            similarity = features[start:stop] @ padded.t()  # (rows, columns)
            similarity[:, frames:] = -math.inf  # no picks past the end
            chosen, valid = _pick_similar(similarity, self.repet_neighbours, distance)
            yield start, chosen.clamp_(max=frames - 1), valid

    def _similar_frames_windowed(self, features: torch.Tensor, element_size: int):
        """Yield (start, chosen, valid) for blocks of frames compared with the frames within
        +-`repet_window` of each, the k frames then picked greedily (`_pick_greedy`).

        Frames are taken a segment of d = `repet_min_distance` frames at a time: the frames
        of segment j have their windows within segments j - r .. j + r, r = ceil(window / d),
        so they are compared with those 2r + 1 segments only (one batched product), the
        columns outside each frame's own window or outside the input set to -inf. The cost is
        linear in the number of frames, and the frames picked depend on the similarities
        within the window alone: not on the block size, the segments or the input's length,
        so a chunk whose frames are frames of the whole signal picks what the whole signal
        picks there (see run_contract_hint).
        """
        frames, bands = features.shape
        distance, window = self.repet_min_distance, self.repet_window
        reach = -(-window // distance)
        width = (2 * reach + 1) * distance  # columns compared with one segment of frames
        segments = -(-frames // distance)
        padded = torch.cat([
            features.new_zeros(reach * distance, bands),
            features,
            features.new_zeros((segments + reach) * distance - frames, bands),
        ])
        rows = padded[reach * distance : (reach + segments) * distance].view(segments, distance, bands)
        windows = padded.unfold(0, width, distance)  # (>= segments, bands, width): segment j's columns
        device = features.device
        # Column c of segment j's window is frame (j - reach) d + c; row i of it is frame j d + i.
        offsets = (torch.arange(width, device=device)[None] - reach * distance
                   - torch.arange(distance, device=device)[:, None])
        outside = offsets.abs() > window  # (distance, width), the same for every segment
        # A block of segments holds its similarities (with a few temporaries of that size).
        block = int(max(1, self.block_bytes // (4 * distance * width * element_size)))
        for first in range(0, segments, block):
            last = min(segments, first + block)
            similarity = torch.bmm(rows[first:last], windows[first:last])  # (segments, distance, width)
            base = (torch.arange(first, last, device=device) - reach) * distance  # frame of column 0
            columns = base[:, None] + torch.arange(width, device=device)[None]
            beyond = (columns < 0) | (columns >= frames)
            similarity.masked_fill_(outside[None] | beyond[:, None, :], -math.inf)
            chosen, valid = _pick_greedy(similarity.view(-1, width), self.repet_neighbours, distance)
            chosen += base.repeat_interleave(distance)[:, None]
            count = min(frames, last * distance) - first * distance  # the last segment may be short
            yield first * distance, chosen[:count].clamp_(0, frames - 1), valid[:count]

def _odd(size: float) -> int:
    size = max(1, int(round(size)))
    return size if size % 2 else size + 1


def _pool_bins(values: torch.Tensor, pool: int) -> torch.Tensor:
    """Sum groups of `pool` adjacent rows (the last group may be shorter)."""
    if pool == 1:
        return values
    rows, columns = values.shape
    padded_rows = -(-rows // pool) * pool
    padded = torch.cat([values, values.new_zeros(padded_rows - rows, columns)]) if padded_rows > rows else values
    return padded.reshape(padded_rows // pool, pool, columns).sum(dim=1)


def _repetition(gains: torch.Tensor, min_lag: int) -> torch.Tensor:
    """How strongly each row of `gains` (rows, frames) repeats: the largest normalised
    autocorrelation of the mean-removed row at lags from `min_lag` to half its length
    (1 = an exact repetition, about 0 = none). 0 when the input is too short to tell."""
    rows, frames = gains.shape
    if frames // 2 <= min_lag:
        return gains.new_zeros(rows)
    centred = gains - gains.mean(dim=1, keepdim=True)
    spectrum = torch.fft.rfft(centred, n=2 * frames)
    autocorrelation = torch.fft.irfft(spectrum.abs().pow(2), n=2 * frames)[:, :frames]
    # Unbiased: divide each lag by the number of products that make it.
    autocorrelation = autocorrelation / torch.arange(frames, 0, -1, device=gains.device, dtype=gains.dtype)
    normalised = autocorrelation / autocorrelation[:, :1].clamp_min(torch.finfo(gains.dtype).tiny)
    return normalised[:, min_lag : frames // 2].max(dim=1).values


def _pick_similar(similarity: torch.Tensor, count: int, distance: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, up to `count` column indices of high similarity, pairwise >= `distance` apart.

    `similarity` (rows, columns) has a multiple of `distance` columns. Candidates are the
    maxima of its consecutive segments of `distance` columns (one per segment), chosen
    greedily, best first; after each choice the candidates closer than `distance` to it (they
    can only sit in its own or the two adjacent segments) are dropped. Returns indices (rows,
    count) and a validity mask (rows with too few candidates have fewer valid entries). The
    cost is one pass over `similarity` plus `count` passes over the segment maxima.
    """
    rows, columns = similarity.shape
    segments = columns // distance
    values, offsets = similarity.view(rows, segments, distance).max(dim=-1)
    positions = offsets + torch.arange(segments, device=similarity.device)[None] * distance
    chosen = torch.zeros(rows, count, dtype=torch.long, device=similarity.device)
    valid = torch.zeros(rows, count, dtype=torch.bool, device=similarity.device)
    for slot in range(min(count, segments)):
        best_value, best = values.max(dim=-1, keepdim=True)
        best_position = positions.gather(1, best)
        chosen[:, slot] = best_position[:, 0]
        valid[:, slot] = best_value[:, 0] > -math.inf
        for shift in (-1, 0, 1):
            segment = (best + shift).clamp(0, segments - 1)
            close = (positions.gather(1, segment) - best_position).abs() < distance
            values.scatter_(1, segment, torch.where(close, -math.inf, values.gather(1, segment)))
    return chosen, valid


# ----------------------------------------------------------------------------- NMF


class NMFSeparator(_MaskSeparator):
    """NMF of the mid magnitude spectrogram, components grouped into stems by a fixed rule.

    Factorisation: X ~ W H with `nmf_components` components, minimising the generalised
    Kullback-Leibler divergence D(X | WH) by Lee & Seung's multiplicative updates for
    `nmf_iterations` iterations; W's columns are normalised to unit sum after each update.
    W and H start from uniform draws of a CPU `torch.Generator` seeded with `nmf_seed`, so
    runs repeat exactly. The first `nmf_bass_components` columns of W start at zero above the
    bass band (`bass_cutoff_hz` plus its octave roll-off); multiplicative updates keep zeros,
    so these components can only model low frequencies, which keeps the bass line from being
    shared with chords. The input is factorised in independent blocks of
    `nmf_block_seconds` (bounded memory, linear time).

    High rates. The factorisation (and the assignment below) sees the bins up to
    `nmf_max_hz` only; above it (cymbals, air) each component's spectrum is fitted with its
    activations held fixed, in `nmf_upper_iterations` updates of W alone. This keeps the
    cost at 96 or 192 kHz close to that at 44.1 kHz and the grouping rule the same at every
    rate from 44.1 kHz up.

    Assignment rule, per component (basis w over bins, activation h over frames):
      - low share   = part of sum(w) below `bass_cutoff_hz`,
      - flatness    = geometric mean / arithmetic mean of w above the cutoff (1 = white
                      noise, ~0 = a few partials),
      - band share  = part of sum(w) inside `vocal_low_hz`..`vocal_high_hz`,
      - repetition  = largest normalised autocorrelation of h (mean removed) at lags from
                      `nmf_min_period_seconds` to half the block (1 = h repeats exactly).
    In this order: bass if low share >= `bass_low_share`; drums if flatness >=
    `drums_flatness` (noise-like spectrum); vocals if band share >= `vocals_band_share` and
    repetition < `vocals_max_repetition` (a pitched part in the vocal band that does not
    repeat: REPET's premise that the accompaniment repeats and the voice does not); all
    the rest (pitched, repeating, or outside the vocal band) is other.

    Masks: with S_g = sum of W_r H_r over the components of group g, mask_g = S_g^p / sum_all
    S^p (p = `mask_power`), so the four masks sum to one.
    """

    def __init__(self, settings: dict[str, Any]):
        super().__init__(settings)
        self.components = max(1, int(settings["nmf_components"]))
        self.iterations = max(0, int(settings["nmf_iterations"]))
        self.seed = int(settings["nmf_seed"])
        self.block_frames = max(1, int(round(settings["nmf_block_seconds"] / self.spectral.hop_seconds)))
        self.mask_power = float(settings["mask_power"])
        self.bass_components = max(0, int(settings["nmf_bass_components"]))
        self.factorised_bins = min(
            self.spectral.n_fft // 2 + 1, int(settings["nmf_max_hz"] / self.spectral.bin_hz) + 1
        )
        self.upper_iterations = max(0, int(settings["nmf_upper_iterations"]))

    def run_contract_hint(self) -> tuple[int, float]:
        """(segment, overlap): how to run this module chunk by chunk with inference.demix's
        "fade" style. `segment` is in samples at `sample_rate`, `overlap` a fraction of it.

        Each block of `nmf_block_seconds` (B samples, a whole number of hops) is factorised on
        its own, so an output sample depends on its whole block (and n_fft / 2 beyond): no
        overlap of practical size reaches past that. Instead the chunks are laid on the
        blocks: segment (m + 1) B and overlap B (m = `_NMF_CHUNK_STEP_BLOCKS`), so every chunk
        starts on a block boundary of the whole signal (m B apart), holds m + 1 of its blocks
        whole, and every sample it is weighted on lies in one of those blocks. What differs
        from the whole-signal run: a chunk's first and last couple of frames see zeros past
        its edges instead of the neighbouring audio, which moves the factorisation of the two
        outer blocks slightly. The last chunk stays on the grid too (the contract's
        `any_length`: it runs shorter rather than ending at the signal's end, off the grid).
        Cost: every sample is factorised (m + 1) / m times; memory per chunk is that of an
        (m + 1) B input (measured at 44.1 kHz stereo: 120-s chunks grow the peak resident
        memory by 360 MB, 200 MB of it the chunk's input and stems). m = 2 (90-s chunks with
        the default 30-s blocks, 1.5x the work, ~270 MB) trades between m = 3 (1.33x, ~360
        MB) and m = 1 (2x, ~180 MB).
        """
        block = self.block_frames * self.spectral.hop
        blocks = _NMF_CHUNK_STEP_BLOCKS + 1
        return blocks * block, 1 / blocks

    def masks(self, magnitude: torch.Tensor, out: torch.Tensor) -> None:
        for start in range(0, magnitude.shape[1], self.block_frames):
            stop = start + self.block_frames
            out[:, :, start:stop] = self._block_masks(magnitude[:, start:stop])

    def factorise(self, magnitude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """KL-NMF of (bins, frames) -> W (bins, components), H (components, frames)."""
        bins, frames = magnitude.shape
        generator = torch.Generator().manual_seed(self.seed)
        scale = magnitude.mean().clamp_min(1e-12)
        basis = torch.rand(bins, self.components, generator=generator, dtype=torch.float64)
        gains = torch.rand(self.components, frames, generator=generator, dtype=torch.float64)
        basis = (basis + 0.1).to(magnitude)
        # The first components can only model low frequencies: their basis starts at zero above
        # the bass band, and multiplicative updates never move a zero.
        low_components = min(self.bass_components, self.components)
        if low_components:
            in_bass_band = self.spectral.bass_band[:bins, None] > 0
            basis[:, :low_components] *= in_bass_band.to(basis.device, basis.dtype)
        basis = basis / basis.sum(dim=0, keepdim=True)
        gains = (gains + 0.1).to(magnitude) * scale * bins / self.components
        eps = torch.finfo(magnitude.dtype).eps
        for _ in range(self.iterations):
            ratio = magnitude / (basis @ gains + eps)
            gains = gains * (basis.t() @ ratio) / (basis.sum(dim=0)[:, None] + eps)
            ratio = magnitude / (basis @ gains + eps)
            basis = basis * (ratio @ gains.t()) / (gains.sum(dim=1)[None, :] + eps)
            norms = basis.sum(dim=0, keepdim=True) + eps
            basis = basis / norms
            gains = gains * norms.t()
        return basis, gains

    def assign(self, basis: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
        """Stem index (0 vocals, 1 drums, 2 bass, 3 other) of each component, by the rule above."""
        settings = self.settings
        eps = torch.finfo(basis.dtype).eps
        weights = basis / (basis.sum(dim=0, keepdim=True) + eps)
        frequencies = torch.arange(basis.shape[0], device=basis.device, dtype=basis.dtype) * self.spectral.bin_hz
        below = frequencies < settings["bass_cutoff_hz"]
        low_share = weights[below].sum(dim=0)
        upper = weights[~below] + eps
        flatness = upper.log().mean(dim=0).exp() / upper.mean(dim=0)
        vocal_band = (frequencies >= settings["vocal_low_hz"]) & (frequencies <= settings["vocal_high_hz"])
        band_share = weights[vocal_band].sum(dim=0)
        repetition = _repetition(gains, max(1, int(round(settings["nmf_min_period_seconds"] / self.spectral.hop_seconds))))
        stem = torch.full((basis.shape[1],), 3, dtype=torch.long, device=basis.device)
        is_bass = low_share >= settings["bass_low_share"]
        is_drums = ~is_bass & (flatness >= settings["drums_flatness"])
        is_vocals = (
            ~is_bass
            & ~is_drums
            & (band_share >= settings["vocals_band_share"])
            & (repetition < settings["vocals_max_repetition"])
        )
        stem[is_vocals] = 0
        stem[is_drums] = 1
        stem[is_bass] = 2
        return stem

    def fit_upper_basis(self, magnitude: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
        """Spectra (upper bins, components) of the components over `magnitude` (upper bins,
        frames), their activations `gains` held fixed (KL multiplicative updates of W only)."""
        generator = torch.Generator().manual_seed(self.seed + 1)
        basis = torch.rand(magnitude.shape[0], self.components, generator=generator, dtype=torch.float64)
        basis = (basis + 0.1).to(magnitude) * magnitude.mean() / gains.mean().clamp_min(1e-12) / self.components
        basis[:, : min(self.bass_components, self.components)] = 0  # far above the bass band
        eps = torch.finfo(magnitude.dtype).eps
        activity = gains.sum(dim=1)[None, :] + eps
        for _ in range(self.upper_iterations):
            basis = basis * ((magnitude / (basis @ gains + eps)) @ gains.t()) / activity
        return basis

    def _block_masks(self, magnitude: torch.Tensor) -> torch.Tensor:
        basis, gains = self.factorise(magnitude[: self.factorised_bins])
        stem = self.assign(basis, gains)
        if self.factorised_bins < magnitude.shape[0]:
            upper = self.fit_upper_basis(magnitude[self.factorised_bins :], gains)
            basis = torch.cat([basis, upper])
        eps = torch.finfo(magnitude.dtype).eps
        grouped = []
        for index in range(len(STEMS)):
            members = stem == index
            grouped.append((basis[:, members] @ gains[members]).pow(self.mask_power))
        total = sum(grouped) + eps
        return torch.stack([group / total for group in grouped[:3]])


# ----------------------------------------------------------------------------- builders


def build_classic(config: dict[str, Any]) -> nn.Module:
    """HPSS + REPET-SIM separator for audio at `config["sample_rate"]` (int Hz, required).

    Optional tuning keys and their defaults are listed, with their meaning, in
    `_COMMON_DEFAULTS` and `_CLASSIC_DEFAULTS` at the top of this file; unknown keys raise
    ModelError so that a typo does not go unnoticed.
    """
    return ClassicSeparator(_read_config(config, _CLASSIC_DEFAULTS, "classic"))


def build_nmf(config: dict[str, Any]) -> nn.Module:
    """NMF separator for audio at `config["sample_rate"]` (int Hz, required).

    Optional tuning keys and their defaults: `_COMMON_DEFAULTS` and `_NMF_DEFAULTS` at the top
    of this file; unknown keys raise ModelError.
    """
    return NMFSeparator(_read_config(config, _NMF_DEFAULTS, "nmf"))


def _pick_greedy(similarity: torch.Tensor, count: int, distance: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, up to `count` column indices of high similarity, pairwise >= `distance` apart,
    chosen greedily: the most similar column, then the most similar one not within
    `distance` of a chosen one, and so on (ties go to the first column).

    Unlike `_pick_similar` no grid is involved: the picks depend on the similarities alone.
    `similarity` (rows, columns) is overwritten (chosen neighbourhoods become -inf). Returns
    indices (rows, count) and a validity mask (invalid slots come last). The cost is `count`
    passes over `similarity` and `count` writes of 2 distance - 1 entries per row.
    """
    rows, columns = similarity.shape
    device = similarity.device
    chosen = torch.zeros(rows, count, dtype=torch.long, device=device)
    valid = torch.zeros(rows, count, dtype=torch.bool, device=device)
    around = torch.arange(1 - distance, distance, device=device)[None]
    for slot in range(min(count, columns)):
        best_value, best = similarity.max(dim=1)
        chosen[:, slot] = best
        valid[:, slot] = best_value > -math.inf
        neighbourhood = (best[:, None] + around).clamp_(0, columns - 1)
        similarity.scatter_(1, neighbourhood, -math.inf)
    return chosen, valid


def run_contract(spec, module: nn.Module):
    """How the pipeline runs a classical separator: sfsep's "fade" chunking with the segment and
    overlap the module states for its own rate (`run_contract_hint`), so memory stays bounded
    and the cost linear whatever the track's length. A spec that states its own chunking
    (a chunk_size in models.toml) is run by it instead."""
    from dataclasses import replace

    from ..inference import RunContract
    from . import spec_contract

    if spec.chunk_size is not None:
        return replace(spec_contract(spec), any_length=True)
    segment, overlap = module.run_contract_hint()
    return RunContract(style="fade", segment=segment, overlap=overlap, batch_size=1,
                       residual_stem=spec.residual_stem, any_length=True)
