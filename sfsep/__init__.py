"""sfsep: music source separation that is robust to the input's sampling frequency.

The flow (see DESIGN.md): read -> resample up to the model's trained rate -> chunked
inference -> resample the stems back down -> write atomically. Library users start from
`sfsep.Separator` (a model loaded once: `separate_tensor`, `separate_file`, `separate_files`,
`models()`); `sfsep.cli` is the command line, a thin layer over it.

    from sfsep import Separator
    separator = Separator("htdemucs", device="cpu")
    result = separator.separate_tensor(audio, rate)   # result.stems["vocals"] at `rate`
"""

from __future__ import annotations

__version__ = "0.1.0"

_PUBLIC = {"Separator": "pipeline", "Settings": "pipeline", "OutputOptions": "pipeline", "Separation": "pipeline",
           "FileResult": "pipeline", "ModelChoice": "pipeline", "RunReport": "runs", "SfsepError": "errors"}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    """The public names, imported on first use (so that `sfsep --help` never imports torch)."""
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'sfsep' has no attribute {name!r}")
