"""The trainable interpolation kernel: a small MLP k(t; theta) run by the polyphase machine.

Trainable-kernel resampling (Imamura et al., ICASSP 2026, third strategy) adapts the
interpolation kernel to a frozen separator. Here the kernel is a continuous function of the
time offset t, measured as in `kernel.py` in zero crossings of the conventional sinc, and it is
evaluated at exactly the (phases, taps) offsets `kernel_time_offsets` gives for a rate pair.
The resulting matrix, times `geometry.gain`, goes to `apply_kernel` like any other kernel, so
the learned resampler is the conventional one with other weights, and gradients reach theta.

The function (our design; the paper's exact parametrisation is not available to us)::

    features(t) = (t / L, sin(pi t), cos(pi t))                  L = lowpass width (24)
    k(t; theta) = kaiser(t) * MLP(features(t))     for |t| < L,  0 at |t| = L
    MLP         = Linear(3, 32) -> LayerNorm -> ReLU -> Linear(32, 32) -> LayerNorm -> ReLU
                  -> Linear(32, 1)                                 (three layers, 32 units)

Why the features and the window: the windowed sinc has 47 lobes over [-L, L]; an MLP of this
size fed t alone is piecewise linear in t, and the same fit (3000 steps) leaves a max error of
6.6e-2 and an rms error of 1.3e-2; with the features and the window it reaches 1.1e-2 and
1.0e-3 (measured, seed 0).
Giving it sin(pi t) and cos(pi t) lets it build oscillations at the sinc's own period, and
the Kaiser factor keeps the support finite and the kernel continuous at +-L, where the time
grid is clamped (those clamped taps are exactly zero, as in the conventional kernel). The
MLP then only has to learn a smooth envelope, which three layers of 32 units can.

Initialisation: `fit_windowed_sinc` fits theta so that k(t) approximates sinc(t) (so
k ~ sinc * kaiser, the conventional kernel) on a dense grid of t before any training; the
error it reaches is returned and stored with the kernel.

Files: a kernel trained for one model and one input rate lives at
``<cache>/kernels/<model>/<rate>.pt`` (`kernel_path`). It is a plain torch file (read with
``weights_only=True``) holding the MLP's state_dict, its settings, the rates and whatever
training record the trainer adds (settings, validation curve).
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sfsep.audio import atomic_path
from sfsep.errors import ResampleError
from sfsep.resample.kernel import LOWPASS_WIDTH, kaiser_window, kernel_geometry, kernel_time_offsets

FILE_FORMAT = "sfsep-trainable-kernel"
FILE_VERSION = 1


@dataclass(frozen=True)
class KernelSettings:
    """The shape of k(t; theta); stored with every saved kernel."""

    hidden: int = 32
    layers: int = 3
    lowpass_width: int = LOWPASS_WIDTH
    window: str = "kaiser"
    features: str = "t/L,sin(pi t),cos(pi t)"


class TrainableKernel(nn.Module):
    """k(t; theta) as an nn.Module.

    ``module(t)`` evaluates the function on any tensor of offsets (zero crossings);
    ``module.matrix(input_rate, output_rate)`` gives the (phases, taps) kernel for a rate pair,
    gain included, ready for `apply_kernel` (differentiable in theta).
    """

    def __init__(self, settings: KernelSettings = KernelSettings()):
        super().__init__()
        if settings.layers < 2:
            raise ValueError("a trainable kernel needs at least 2 layers")
        self.settings = settings
        width = settings.hidden
        blocks: list[nn.Module] = [nn.Linear(3, width)]
        for _ in range(settings.layers - 2):
            blocks += [nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, width)]
        blocks += [nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, 1)]
        self.mlp = nn.Sequential(*blocks)

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:
        """k(t; theta) at every entry of `offsets`, same shape, in the parameters' dtype."""
        limit = self.settings.lowpass_width
        dtype = self.mlp[0].weight.dtype
        t = offsets.to(dtype)
        features = torch.stack([t / limit, torch.sin(math.pi * t), torch.cos(math.pi * t)], dim=-1)
        envelope = self.mlp(features).squeeze(-1)
        inside = (t.abs() < limit).to(dtype)
        return kaiser_window(t, limit) * envelope * inside

    def matrix(self, input_rate: int, output_rate: int, *, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
        """The (phases, taps) kernel for a rate pair: gain * k(t; theta) on the offsets grid."""
        parameter = self.mlp[0].weight
        geometry = kernel_geometry(input_rate, output_rate)
        offsets = kernel_time_offsets(input_rate, output_rate, dtype=parameter.dtype,
                                      device=parameter.device)
        kernel = geometry.gain * self(offsets)
        return kernel.to(dtype=dtype or kernel.dtype, device=device or kernel.device)


def windowed_sinc(offsets: torch.Tensor, lowpass_width: int = LOWPASS_WIDTH) -> torch.Tensor:
    """The conventional kernel's function sinc(t) * kaiser(t) (before the gain)."""
    return torch.sinc(offsets) * kaiser_window(offsets, lowpass_width)


def fit_windowed_sinc(kernel: TrainableKernel, *, steps: int = 3000, points: int = 2049,
                      seed: int = 0) -> dict[str, float]:
    """Fit theta so that k(t; theta) ~ sinc(t) * kaiser(t) on `points` offsets over [-L, L].

    Adam with a one-cycle learning rate (peak 1e-2) on the mean squared error, `steps` steps.
    The parameters are re-initialised from `seed` first, so the result depends only on the
    arguments. Returns the errors on a denser grid (20001 points): max_abs and rms, relative
    to the kernel's peak value of 1.
    """
    limit = kernel.settings.lowpass_width
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in kernel.mlp:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    parameter = kernel.mlp[0].weight
    grid = torch.linspace(-limit, limit, points, dtype=parameter.dtype, device=parameter.device)
    target = windowed_sinc(grid, limit)
    optimizer = torch.optim.Adam(kernel.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=max(1, steps))
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            loss = (kernel(grid) - target).square().mean()
            loss.backward()
            optimizer.step()
            schedule.step()
    return fit_error(kernel)


@torch.no_grad()
def fit_error(kernel: TrainableKernel, points: int = 20001) -> dict[str, float]:
    """max_abs and rms of k(t; theta) - sinc(t) kaiser(t) over a dense grid of [-L, L]."""
    limit = kernel.settings.lowpass_width
    parameter = kernel.mlp[0].weight
    grid = torch.linspace(-limit, limit, points, dtype=parameter.dtype, device=parameter.device)
    error = kernel(grid) - windowed_sinc(grid, limit)
    return {"max_abs": float(error.abs().max()), "rms": float(error.square().mean().sqrt())}


def initial_kernel(*, fit_steps: int = 3000, seed: int = 0) -> tuple[TrainableKernel, dict[str, float]]:
    """A new kernel already fitted to the windowed sinc, and its fit error."""
    kernel = TrainableKernel()
    error = fit_windowed_sinc(kernel, steps=fit_steps, seed=seed)
    return kernel, error


# --------------------------------------------------------------------------------------------
# Files


def kernels_dir() -> Path:
    """Where trained kernels live: <sfsep cache>/kernels."""
    from sfsep.hub import cache_dir

    return cache_dir() / "kernels"


def kernel_path(model: str, rate: int) -> Path:
    """<cache>/kernels/<model>/<rate>.pt: the kernel trained for `model` and inputs at `rate` Hz."""
    return kernels_dir() / model / f"{int(rate)}.pt"


def save_kernel(kernel: TrainableKernel, path: str | os.PathLike, **record: Any) -> Path:
    """Write the kernel (state_dict and settings) plus `record` (plain data) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "kernel_settings": asdict(kernel.settings),
        "state_dict": {name: value.detach().cpu().clone() for name, value in kernel.state_dict().items()},
        **record,
    }
    with atomic_path(path) as partial:
        torch.save(payload, partial)
    return path


def load_kernel_file(path: str | os.PathLike) -> tuple[TrainableKernel, dict[str, Any]]:
    """Read a saved kernel: (module in eval mode, the whole record). ResampleError if unusable."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ResampleError(f"{path}: cannot read the trained kernel ({exc}); train it again with "
                            f"`sfsep train-kernel`") from exc
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        raise ResampleError(f"{path} is not an sfsep trained kernel; train one with `sfsep train-kernel`")
    if payload.get("version") != FILE_VERSION:
        raise ResampleError(f"{path}: kernel file version {payload.get('version')} is not supported by this "
                            f"sfsep (expected {FILE_VERSION}); train it again with `sfsep train-kernel`")
    settings = KernelSettings(**payload["kernel_settings"])
    kernel = TrainableKernel(settings)
    kernel.load_state_dict(payload["state_dict"], strict=True)
    kernel.eval()
    for parameter in kernel.parameters():
        parameter.requires_grad_(False)
    return kernel, payload


def load_trained_kernel(model: str, rate: int) -> TrainableKernel:
    """The kernel trained for `model` at input rate `rate`, or a ResampleError saying how to train it."""
    path = kernel_path(model, rate)
    if not path.is_file():
        raise ResampleError(
            f"--resampler trainable: no trained kernel for model '{model}' at {int(rate)} Hz ({path}); "
            f"train one with `sfsep train-kernel --model {model} --rate {int(rate)} --musdb PATH`"
        )
    kernel, _ = load_kernel_file(path)
    return kernel
