"""Resampling for sfsep: one windowed-sinc polyphase core, several strategies.

Public API (what the pipeline, the CLI and library users call)::

    resample(x, input_rate, output_rate, method="conventional", *, sigma=1e-3, snr_db=20.0,
             generator=None) -> Tensor          # x: (..., samples), dtype and device kept
    choose_strategy(input_rate, trained_rate) -> (method, reason)
    METHODS                     # ("conventional", "noisy", "noise", "trainable", "none")
    resample(..., method="trainable", kernel=k)  # k: learned kernel, see resample/trainable.py

Building blocks, for strategies that bring their own kernel (e.g. a trainable MLP kernel)::

    kernel_geometry(input_rate, output_rate) -> KernelGeometry   # phases, taps, width, ...
    kernel_time_offsets(input_rate, output_rate) -> (phases, taps) grid t, clamped, unwindowed
    conventional_kernel(input_rate, output_rate) -> (phases, taps) Kaiser windowed sinc
    noisy_kernel(input_rate, output_rate, sigma=..., generator=...) -> (phases, taps)
    apply_kernel(x, kernel, input_rate, output_rate) -> Tensor   # differentiable in x and kernel

A learned kernel is any function f evaluated on `kernel_time_offsets` (times
`geometry.gain` to keep unit DC gain), passed to `apply_kernel`. Files: `kernel.py` (the math
of the kernel), `polyphase.py` (the strided convolution), `strategies.py` (the strategies).
"""

from sfsep.resample.kernel import (
    KAISER_BETA,
    LOWPASS_WIDTH,
    ROLLOFF,
    KernelGeometry,
    conventional_kernel,
    kaiser_window,
    kernel_geometry,
    kernel_time_offsets,
)
from sfsep.resample.polyphase import apply_kernel
from sfsep.resample.strategies import (
    DEFAULT_SIGMA,
    DEFAULT_SNR_DB,
    METHODS,
    choose_strategy,
    noisy_kernel,
    resample,
)

__all__ = [
    "METHODS",
    "DEFAULT_SIGMA",
    "DEFAULT_SNR_DB",
    "KAISER_BETA",
    "LOWPASS_WIDTH",
    "ROLLOFF",
    "KernelGeometry",
    "apply_kernel",
    "choose_strategy",
    "conventional_kernel",
    "kaiser_window",
    "kernel_geometry",
    "kernel_time_offsets",
    "noisy_kernel",
    "resample",
]
