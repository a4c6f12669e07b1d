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

Memory. Nothing grows faster than the input's length. REPET-SIM's frame similarity (frames
squared in full) is computed a block of frames at a time; median filters work tile by tile;
the analysis STFT and the masking + inverse STFT run on segments of frames (with margins,
so the result equals whole-signal processing bit for bit). `block_megabytes` sizes these
blocks. What stays whole: the mid's magnitude and three masks (bins x frames is about
2 x samples at any rate, so ~32 bytes per input sample of each batch item) and the output. NMF factorises independent blocks of `nmf_block_seconds`.

Everything is torch (torch.stft/istft), follows the input's device, and is deterministic:
NMF starts from a fixed-seed CPU `torch.Generator` whose draws are moved to the device.
Half-precision inputs are processed in float32 and returned in their own dtype.
"""

from __future__ import annotations

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
    "repet_window_seconds": 0.0,  # look for similar frames within +- this; 0 = whole input
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


# Medians of a few values per point (HPSS kernels, REPET-SIM's k frames) are taken with a
# comparator network on whole tensors: torch.median over a short last dimension pays a
# per-row cost that makes it several times slower on CPU than a few hundred elementwise
# min/max passes over cache-sized chunks.

_CHUNK_ELEMENTS = 1 << 16  # elements per operand in one pass of the network (fits in cache)


def _median_comparators(count: int) -> list[tuple[int, int]]:
    """Compare-exchange pairs (low, high) whose result leaves the median at index count // 2.

    Odd-even transposition sort (count rounds of neighbour exchanges) sorts any input; walking
    it backwards from the middle wire keeps only the exchanges the middle output depends on.
    """
    network = [(index, index + 1) for round_ in range(count) for index in range(round_ % 2, count - 1, 2)]
    needed, kept = {count // 2}, []
    for low, high in reversed(network):
        if low in needed or high in needed:
            kept.append((low, high))
            needed.update((low, high))
    return kept[::-1]


def _median_of(operands: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise median (the upper one for an even count) of same-shape tensors; the
    operands are overwritten (pass copies)."""
    wires = list(operands)
    for low, high in _median_comparators(len(wires)):
        smaller = torch.minimum(wires[low], wires[high])
        torch.maximum(wires[low], wires[high], out=wires[high])
        wires[low] = smaller
    return wires[len(wires) // 2]


def _median_filter(values: torch.Tensor, kernel: int, dim: int, out: torch.Tensor) -> torch.Tensor:
    """Median of a 2-D tensor over a sliding window of `kernel` (odd) entries along `dim`
    (edges replicated), written into `out` (same shape) and returned.

    Works tile by tile (about _CHUNK_ELEMENTS outputs each): the `kernel` shifted copies of
    the tile in the padded input are the network's operands. Extra memory: one padded copy.
    """
    if kernel <= 1:
        return out.copy_(values)
    half = kernel // 2
    size = values.shape[dim]
    edges = [values.narrow(dim, 0, 1), values.narrow(dim, size - 1, 1)]
    repeat = [-1, -1]
    repeat[dim] = half
    padded = torch.cat([edges[0].expand(*repeat), values, edges[1].expand(*repeat)], dim=dim)
    rows, columns = values.shape
    column_step = min(columns, 4096)
    row_step = max(1, _CHUNK_ELEMENTS // column_step)
    for row in range(0, rows, row_step):
        row_stop = min(rows, row + row_step)
        for column in range(0, columns, column_step):
            column_stop = min(columns, column + column_step)
            if dim == 0:
                tiles = [padded[row + shift : row_stop + shift, column:column_stop] for shift in range(kernel)]
            else:
                tiles = [padded[row:row_stop, column + shift : column_stop + shift] for shift in range(kernel)]
            out[row:row_stop, column:column_stop] = _median_of([tile.clone() for tile in tiles])
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

    REPET-SIM's similarity is computed a block of frames at a time against every frame (or the
    frames within +-`repet_window_seconds`), so memory stays bounded for any input length;
    the k frames are picked from per-segment maxima (segments of the minimum distance), then
    greedily so that no two are closer than the minimum distance.
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
        distance = self.repet_min_distance
        span = frames if self.repet_window == 0 else min(frames, 2 * self.repet_window + 1)
        # A block of frames holds its similarities to `span` frames (with a few temporaries
        # of that size: within block_megabytes); the medians then go through it in sub-blocks
        # whose k gathered neighbour spectra are about _CHUNK_ELEMENTS each.
        block = int(max(1, self.block_bytes // (4 * span * magnitude.element_size())))
        sub_block = max(16, _CHUNK_ELEMENTS // bins)
        by_frame = magnitude.t().contiguous()  # (frames, bins): neighbour spectra are rows
        # Zero features after the end let every block's columns span whole segments of
        # `distance` frames; picks that land there are marked invalid.
        features = torch.cat([features, features.new_zeros(distance, features.shape[1])])
        repeating = torch.empty_like(magnitude) if out is None else out
        for start in range(0, frames, block):
            stop = min(frames, start + block)
            if self.repet_window == 0:
                low, high = 0, frames
            else:
                low, high = max(0, start - self.repet_window), min(frames, stop + self.repet_window)
            high = low + -(-(high - low) // distance) * distance
            similarity = features[start:stop] @ features[low:high].t()  # (rows, high - low)
            if self.repet_window:
                positions = torch.arange(low, high, device=magnitude.device)
                rows = torch.arange(start, stop, device=magnitude.device)[:, None]
                similarity.masked_fill_((positions[None] - rows).abs() > self.repet_window, -math.inf)
            chosen, valid = _pick_similar(similarity, neighbours, distance)
            chosen = chosen + low
            valid &= chosen < frames
            chosen.clamp_(max=frames - 1)
            # Slots without a valid frame (short inputs; they come last) are filled with -inf
            # for the first ceil(missing / 2) and +inf after, which leaves the median of the
            # valid ones (the frame itself always is) in the middle of the k values.
            missing = neighbours - valid.sum(dim=1, keepdim=True)
            rank = torch.arange(neighbours, device=magnitude.device)[None] - (neighbours - missing)
            filler = torch.where(rank < (missing + 1) // 2, -math.inf, math.inf).to(magnitude.dtype)
            for first in range(0, stop - start, sub_block):
                part = slice(first, first + sub_block)
                operands = [
                    torch.where(valid[part, slot, None], by_frame[chosen[part, slot]], filler[part, slot, None])
                    for slot in range(neighbours)
                ]
                repeating[:, start + first : min(stop, start + first + sub_block)] = _median_of(operands).t()
        return repeating


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
