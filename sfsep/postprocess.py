"""Post-processing of separated stems.

`energy_gate` is the energy thresholding that studies of separators found useful for sparse
stems: in each short window where a stem's energy falls more than `threshold_db` below the
mixture's, the stem is silenced there, with short linear fades so that the gate does not click.
Leakage a separator leaves in a stem while its source is silent is typically 30-40 dB below the
mixture, so thresholds around -30 to -40 dB remove it and keep the real source.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def energy_gate(
    stem: torch.Tensor,
    mixture: torch.Tensor,
    rate: int,
    threshold_db: float,
    *,
    window_seconds: float = 0.05,
    fade_seconds: float = 0.01,
) -> torch.Tensor:
    """Zero `stem` (channels, samples) in the windows where its energy relative to `mixture`'s
    is below `threshold_db` dB. Windows are `window_seconds` long and do not overlap; the gain
    moves between 0 and 1 over `fade_seconds`. A window where the mixture is silent is kept
    (nothing to compare against)."""
    if stem.shape[-1] != mixture.shape[-1]:
        raise ValueError(f"stem and mixture lengths differ: {stem.shape[-1]} vs {mixture.shape[-1]}")
    length = stem.shape[-1]
    window = max(1, round(window_seconds * rate))
    frames = -(-length // window)
    pad = frames * window - length

    def frame_energy(signal: torch.Tensor) -> torch.Tensor:
        power = signal.double().pow(2).sum(0)
        return F.pad(power, (0, pad)).view(frames, window).sum(1)

    stem_energy, mix_energy = frame_energy(stem), frame_energy(mixture)
    tiny = torch.finfo(torch.float64).tiny
    ratio_db = 10 * torch.log10((stem_energy + tiny) / (mix_energy + tiny))
    keep = (ratio_db >= threshold_db) | (mix_energy <= tiny)
    gain = keep.to(stem.dtype).repeat_interleave(window)[:length]
    fade = max(1, round(fade_seconds * rate))
    if fade > 1:
        # A moving average turns each 0/1 step into a linear ramp of `fade` samples.
        padded = F.pad(gain[None, None], (fade // 2, fade - 1 - fade // 2), mode="replicate")
        gain = F.avg_pool1d(padded, fade, stride=1)[0, 0]
    return stem * gain.to(stem.device)


class GateStream:
    """`energy_gate` on a stream: push (stems, channels, n) blocks with the mixture's matching
    (channels, n) block, take gated blocks back; the result equals gating the whole signal.

    The gate decides per window of `window_seconds` counted from the first sample, and its fade
    reaches at most `fade_seconds` into the neighbouring windows. The held stretch always starts
    on a window boundary, so its windows are the whole signal's; whole windows are gated with
    `context` windows of real neighbours on each side (none beyond the signal's ends, where the
    whole-signal gate has none either), and only the middle is handed out.
    """

    def __init__(self, rate: int, threshold_db: float, length: int, *, window_seconds: float = 0.05,
                 fade_seconds: float = 0.01):
        self.rate, self.threshold_db, self.length = rate, threshold_db, length
        self.window_seconds, self.fade_seconds = window_seconds, fade_seconds
        self.window = max(1, round(window_seconds * rate))
        fade = max(1, round(fade_seconds * rate))
        self.context = (fade // 2 + self.window) // self.window + 1
        self._stems: torch.Tensor | None = None
        self._mixture: torch.Tensor | None = None
        self._first = 0  # signal index of the held buffers' first sample
        self._emitted = 0

    def push(self, stems: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        self._stems = stems if self._stems is None else torch.cat([self._stems, stems], dim=-1)
        self._mixture = mixture if self._mixture is None else torch.cat([self._mixture, mixture], dim=-1)
        held_end = self._first + self._stems.shape[-1]
        # Emit up to the last whole window that still has `context` whole windows after it.
        ready = (held_end // self.window - self.context) * self.window
        return self._emit(ready)

    def finish(self) -> torch.Tensor:
        if self._stems is None:
            return torch.zeros(0)
        return self._emit(self._first + self._stems.shape[-1])

    def _emit(self, ready: int) -> torch.Tensor:
        if ready <= self._emitted:
            return self._stems[..., :0]
        begin = self._first
        gated = torch.stack([
            energy_gate(stem, self._mixture, self.rate, self.threshold_db,
                        window_seconds=self.window_seconds, fade_seconds=self.fade_seconds)
            for stem in self._stems])
        out = gated[..., self._emitted - begin : ready - begin]
        self._emitted = ready
        keep_from = max(0, ready - self.context * self.window)
        drop = keep_from - self._first
        if drop > 0:
            self._stems, self._mixture = self._stems[..., drop:], self._mixture[..., drop:]
            self._first = keep_from
        return out
