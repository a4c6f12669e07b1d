"""Sampling-frequency diagnostics: why (and how much) a separator degrades at low input rates.

None of them needs reference stems; each runs on the user's own files.

- `consistency`: how far a model's output from a low-rate version of a file departs from its
  own full-band output, below the low rate's Nyquist frequency, per resampler (a proxy for the
  quality loss: the strategy that keeps outputs closest is the one to use).
- `lee`: our local-equivariance error for rate changes: the normalised change of the model's
  output spectrogram below r/2 when the input's band above r/2 is removed.
- `spectrum`: what each resampling strategy puts above the input's Nyquist frequency, for the
  kernels themselves and for a resampled file; optionally a PNG.

The definitions are ours and are stated precisely in each file's docstring.
"""

from sfsep.diagnose.consistency import ConsistencyRow, consistency, summarize_consistency
from sfsep.diagnose.lee import LeeResult, local_equivariance_error
from sfsep.diagnose.spectrum import SpectrumReport, plot_spectrum, spectrum_report

__all__ = [
    "ConsistencyRow",
    "LeeResult",
    "SpectrumReport",
    "consistency",
    "local_equivariance_error",
    "plot_spectrum",
    "spectrum_report",
    "summarize_consistency",
]
