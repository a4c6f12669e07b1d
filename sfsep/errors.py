"""Errors a user can cause.

Every error that comes from the user's input, environment or choices is a `SfsepError`
subclass whose message names the file (or the option) and says what to do. The CLI prints it
as one red line and exits with `exit_code`; tracebacks only appear with --debug.
"""

from __future__ import annotations


class SfsepError(Exception):
    """Base class: a problem the user can fix. Its message is shown as is."""

    exit_code = 1


class UsageError(SfsepError):
    """A flag or a combination of flags that cannot work."""

    exit_code = 2


class AudioError(SfsepError):
    """A file that cannot be read or written as audio."""


class ResampleError(SfsepError):
    """A resampling request that cannot be carried out (bad rates, missing kernel)."""


class ModelError(SfsepError):
    """An unknown model, an architecture that is not available, or a checkpoint that does not fit."""


class UnknownModelError(ModelError, UsageError):
    """A model name that is neither a name nor an alias in models.toml (a usage error, exit 2)."""

    exit_code = 2


class WeightsError(SfsepError):
    """Weights that are missing, cannot be downloaded, or fail their checksum."""


class DatasetError(SfsepError):
    """A dataset folder (e.g. MUSDB18-HQ) that does not have the expected shape."""
