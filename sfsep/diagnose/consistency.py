"""Self-consistency across rates: a reference-free proxy for the loss at a low input rate.

Definition (ours). Let R be the model's trained rate (the file's rate for models that run at
any rate) and x the file brought to R with the conventional kernel. For a test rate r < R:

    full_k    = stem k of separate(x at R)                    (the model's own full-band output)
    target_k  = down_r(full_k)                                 (conventional, keeps f < r/2)
    x_r       = down_r(x)                                      (the file as a rate-r input)
    est_k     = stem k of separate(x_r at r, resampler)        (up to R, separate, back to r)
    score_k   = 10 log10( sum target_k^2 / sum (target_k - est_k)^2 )   in dB (SDR-style)

Both signals are at rate r, so the comparison covers exactly the band below r/2: it asks how
much the model's output in the band the low-rate file still has changes because the band
above r/2 is missing (or filled by the resampler). Higher is closer; the resampler with the
highest score keeps the model closest to its full-band behaviour and is the one to use.

This is a proxy, not a quality measure: it compares with the model's own full-band output,
not with true stems, so it cannot see errors the model makes at every rate, and a resampler
could in principle score well by making the model repeat a full-band mistake. Random
resamplers use `settings.seed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from sfsep.diagnose.common import check_rates, full_band, reference_rate, stems_at
from sfsep.pipeline import Separator, Settings
from sfsep.resample import resample

EPSILON = 1e-12
"""Added to both energies, so silent stems give 0 dB instead of NaN."""


@dataclass(frozen=True)
class ConsistencyRow:
    file: str
    rate: int
    resampler: str
    stem: str
    sdr_db: float


def consistency(separator: Separator, audio: torch.Tensor, file_rate: int, rates: Sequence[int],
                resamplers: Sequence[str], *, settings: Settings | None = None,
                name: str = "") -> list[ConsistencyRow]:
    """Scores of one file (channels, samples) for every (rate, resampler, stem)."""
    full_rate = reference_rate(separator, file_rate)
    rates = check_rates(rates, full_rate)
    signal = full_band(audio, file_rate, full_rate)
    full_stems, names = stems_at(separator, signal, full_rate, "none", settings)
    rows = []
    for rate in rates:
        low = resample(signal, full_rate, rate)
        targets = resample(full_stems, full_rate, rate)[..., : low.shape[-1]]
        for resampler in resamplers:
            estimates, _ = stems_at(separator, low, rate, resampler, settings)
            for index, stem in enumerate(names):
                target = targets[index].double()
                error = target - estimates[index].double()
                score = 10 * torch.log10((target.square().sum() + EPSILON) / (error.square().sum() + EPSILON))
                rows.append(ConsistencyRow(name, rate, resampler, stem, float(score)))
    return rows


def summarize_consistency(rows: Sequence[ConsistencyRow]) -> dict[tuple[int, str], dict[str, float]]:
    """(rate, resampler) -> {stem: mean over files, "mean": mean over stems}."""
    grouped: dict[tuple[int, str], dict[str, list[float]]] = {}
    for row in rows:
        grouped.setdefault((row.rate, row.resampler), {}).setdefault(row.stem, []).append(row.sdr_db)
    summary = {}
    for key, by_stem in grouped.items():
        means = {stem: sum(values) / len(values) for stem, values in by_stem.items()}
        means["mean"] = sum(means.values()) / len(means)
        summary[key] = means
    return summary
