"""Helpers shared by the diagnostics: the rate a model sees a file at, and running it there."""

from __future__ import annotations

from dataclasses import replace

import torch

from sfsep.errors import UsageError
from sfsep.pipeline import Separator, Settings, separate
from sfsep.resample import resample


def reference_rate(separator: Separator, file_rate: int) -> int:
    """The model's trained rate, or the file's own rate for models that run at any rate."""
    return separator.spec.model_rate(file_rate)


def check_rates(rates, full_rate: int) -> list[int]:
    """Rates strictly below `full_rate`, as ints; UsageError naming --rates otherwise."""
    checked = []
    for rate in rates:
        rate = int(rate)
        if rate <= 0 or rate >= full_rate:
            raise UsageError(f"--rates: {rate} Hz must be above 0 and below the full-band rate {full_rate} Hz "
                             f"(the model's trained rate, or the file's rate for models that run at any rate)")
        checked.append(rate)
    if not checked:
        raise UsageError("--rates: give at least one rate (e.g. --rates 8000,16000)")
    return checked


def stems_at(separator: Separator, audio: torch.Tensor, rate: int, resampler: str,
             settings: Settings | None = None) -> tuple[torch.Tensor, list[str]]:
    """Separate `audio` (C, T) at `rate` with the pipeline: stems stacked (S, C, T) at `rate`, names."""
    settings = replace(settings or Settings(), resampler=resampler)
    result = separate(audio, rate, separator, resampler, settings=settings)
    return torch.stack(list(result.stems.values())), list(result.stems)


def full_band(audio: torch.Tensor, file_rate: int, full_rate: int) -> torch.Tensor:
    """The file brought to `full_rate` with the conventional kernel (itself if equal)."""
    return resample(audio.float(), file_rate, full_rate)
