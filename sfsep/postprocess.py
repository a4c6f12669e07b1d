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
