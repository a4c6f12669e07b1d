"""Errors a user can cause.

Every error that comes from the user's input, environment or choices is a `SfsepError`
subclass whose message names the file (or the option) and says what to do. The CLI prints it
as one red line and exits with `exit_code`; tracebacks only appear with --debug.
`os_error_reason(exc)` says in plain words what the system refused (a full disk, a read-only
folder, a name too long) for those messages.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


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


class ClusterError(SfsepError):
    """`--engine ray`: Ray is not installed, the cluster cannot be reached or cannot hold a worker,
    or a task's worker kept dying."""


NAME_MAX = 255
"""The longest file or folder name (in bytes) most file systems take, when the system cannot say."""


def _name_limit(path: str) -> int:
    folder = os.path.dirname(os.path.abspath(path)) or os.sep
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, ValueError, OSError):
        return NAME_MAX


def long_name(path: str | os.PathLike) -> str | None:
    """None when every name in `path` fits the file system, else what is too long."""
    path = os.fsdecode(path)
    limit = _name_limit(path)
    longest = max(Path(path).parts, key=lambda part: len(os.fsencode(part)), default="")
    size = len(os.fsencode(longest))
    if size <= limit:
        return None
    shown = longest if len(longest) <= 24 else f"{longest[:12]}...{longest[-8:]}"
    return f"the name '{shown}' is {size} bytes long and the file system takes at most {limit}"


def _too_long(path: str | None) -> str:
    if not path:
        return "a file or folder name is too long"
    return long_name(path) or f"the path is {len(os.fsencode(path))} bytes long, more than the system takes"


def os_error_reason(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """What an OSError means, in plain words for a one-line message: "no space left on the
    device", "the file system is read-only", ... (`path`: the file concerned, when the error
    does not carry it)."""
    name = exc.filename if exc.filename is not None else path
    name = os.fsdecode(name) if name is not None else None
    code = exc.errno
    if code == errno.ENOSPC:
        return "no space left on the device"
    if code == getattr(errno, "EDQUOT", None):
        return "no space left: the disk quota is exceeded"
    if code == errno.EFBIG:
        return "no space left for it: it would exceed the file size limit (ulimit -f) or the file system's"
    if code == errno.EROFS:
        return "the file system is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.ENAMETOOLONG:
        return _too_long(name)
    if code == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    if code == errno.ENOENT:
        return "no such file or folder"
    if code == errno.EISDIR:
        return "it is a folder"
    return exc.strerror or str(exc) or type(exc).__name__


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError nothing more specific caught: the file, then the reason."""
    reason = os_error_reason(exc)
    return f"{os.fsdecode(exc.filename)}: {reason}" if exc.filename is not None else reason
