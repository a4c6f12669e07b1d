"""What each resampling strategy puts above the input's Nyquist frequency.

For a file brought to `rate` (conventional kernel) and upsampled to `target_rate` (the
model's rate) by each strategy, `spectrum_report` measures:

- the kernel: the strategy's impulse response at the target rate (a unit impulse at `rate`
  resampled; for a polyphase kernel this traces the kernel itself as a function of time), its
  magnitude response, the fraction of its energy above rate/2, and the fraction above
  STOPBAND_FACTOR * rate/2 (past the conventional kernel's transition band, which with 24 zero
  crossings a side reaches ~1.2 * rate/2: above rate/2 itself even the conventional kernel
  holds ~-25 dB of transition-band energy, so that number hardly separates kernels; the
  stopband one does). The post-noise strategy
  ("noise") uses the conventional kernel, so its kernel row is the conventional one and the
  noise only shows in the signal.
- the signal: the power spectrum of the resampled file (mean over channels) and the fraction
  of its energy above rate/2, in dB (10 log10 of the fraction; -inf dB would be none at all),
  and above STOPBAND_FACTOR * rate/2. A file with energy up to its Nyquist frequency keeps
  some above rate/2 even conventionally (the transition bands of the down- and up-sampling
  kernels: ~-27 dB for white noise, ~-48 dB for a music-like file).

The conventional kernel leaves the band above rate/2 nearly empty (its stopband); the noisy
kernel and the post-noise fill it at a low level; a trained kernel shows what the separator
asked for. `plot_spectrum` draws the kernels (time and frequency) and one spectrogram per
strategy into a PNG (needs matplotlib: `pip install sfsep[plot]`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sfsep.errors import UsageError
from sfsep.resample import resample

STOPBAND_FACTOR = 1.25
"""The kernel's stopband energy is measured above this multiple of the input Nyquist."""

IMPULSE_SECONDS = 0.05
"""Length of the impulse probe at the input rate (the kernel is 24 zero crossings a side)."""


@dataclass
class StrategySpectrum:
    strategy: str
    kernel_response: torch.Tensor | None  # impulse response at the target rate (None: post-noise)
    kernel_energy_above: float | None  # fraction of the kernel's energy above rate/2
    kernel_stopband: float | None  # fraction above STOPBAND_FACTOR * rate/2
    signal: torch.Tensor  # the resampled file (C, T) at the target rate
    signal_energy_above: float  # fraction of the signal's energy above rate/2
    signal_stopband: float  # fraction above STOPBAND_FACTOR * rate/2


@dataclass
class SpectrumReport:
    rate: int
    target_rate: int
    strategies: list[StrategySpectrum] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """Plain rows for printing: strategy, kernel and signal energy above rate/2 in dB."""
        return [{"strategy": item.strategy,
                 "kernel_above_db": None if item.kernel_energy_above is None else to_db(item.kernel_energy_above),
                 "kernel_stopband_db": None if item.kernel_stopband is None else to_db(item.kernel_stopband),
                 "signal_above_db": to_db(item.signal_energy_above),
                 "signal_stopband_db": to_db(item.signal_stopband),
                 "signal_above_fraction": item.signal_energy_above}
                for item in self.strategies]


def to_db(fraction: float) -> float:
    return 10 * math.log10(fraction) if fraction > 0 else float("-inf")


def energy_above(signal: torch.Tensor, rate: int, cutoff_hz: float) -> float:
    """Fraction of the energy of `signal` (..., T) at `rate` above `cutoff_hz` (0 if silent).

    The signal is Hann-windowed over its whole length first, so that the jump between its end
    and its start (implied by the DFT) does not leak energy across the spectrum."""
    window = torch.hann_window(signal.shape[-1], periodic=False, dtype=torch.float64, device=signal.device)
    power = torch.fft.rfft(signal.double() * window, dim=-1).abs().square()
    power = power.reshape(-1, power.shape[-1]).sum(0)
    frequencies = torch.fft.rfftfreq(signal.shape[-1], d=1.0 / rate).double()
    total = float(power.sum())
    return float(power[frequencies > cutoff_hz].sum()) / total if total > 0 else 0.0


def spectrum_report(audio: torch.Tensor, file_rate: int, rate: int, target_rate: int, *,
                    sigma: float = 1e-3, snr_db: float = 20.0, seed: int | None = 0,
                    trained_kernel=None) -> SpectrumReport:
    """Kernels and resampled signal for conventional, noisy, noise and (if given) trainable."""
    with torch.no_grad():
        return _spectrum_report(audio, file_rate, rate, target_rate, sigma=sigma, snr_db=snr_db, seed=seed,
                                trained_kernel=trained_kernel)


def _spectrum_report(audio, file_rate, rate, target_rate, *, sigma, snr_db, seed, trained_kernel) -> SpectrumReport:
    if not 0 < rate < target_rate:
        raise UsageError(f"--rate {rate}: must be below the target rate {target_rate} Hz (the model's rate)")
    low = resample(audio.float(), file_rate, rate)
    impulse = torch.zeros(1, max(8, round(IMPULSE_SECONDS * rate)))
    impulse[0, impulse.shape[-1] // 2] = 1.0
    strategies = ["conventional", "noisy", "noise"] + (["trainable"] if trained_kernel is not None else [])
    report = SpectrumReport(rate, target_rate)
    for strategy in strategies:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        options = dict(sigma=sigma, snr_db=snr_db, generator=generator, kernel=trained_kernel)
        if strategy == "noise":
            response = None
        else:
            kernel_generator = torch.Generator().manual_seed(seed) if seed is not None else None
            response = resample(impulse, rate, target_rate, strategy,
                                **{**options, "generator": kernel_generator})[0]
        signal = resample(low, rate, target_rate, strategy, **options)
        report.strategies.append(StrategySpectrum(
            strategy=strategy, kernel_response=None if response is None else response.detach(),
            kernel_energy_above=None if response is None else energy_above(response, target_rate, rate / 2),
            kernel_stopband=None if response is None else energy_above(response, target_rate,
                                                                       STOPBAND_FACTOR * rate / 2),
            signal=signal.detach(), signal_energy_above=energy_above(signal, target_rate, rate / 2),
            signal_stopband=energy_above(signal, target_rate, STOPBAND_FACTOR * rate / 2)))
    return report


def plot_spectrum(report: SpectrumReport, path: str | Path, title: str = "") -> Path:
    """Kernels in time and frequency, and a spectrogram of the resampled file per strategy, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UsageError("--plot needs matplotlib: pip install 'sfsep[plot]'") from exc
    items = report.strategies
    columns = len(items)
    half = columns  # top row: kernel in time (left half), kernel response (right half)
    mosaic = [["time"] * half + ["freq"] * half, [f"s{i}" for i in range(columns) for _ in range(2)]]
    figure, axes = plt.subplot_mosaic(mosaic, figsize=(4 * columns, 7), layout="constrained")
    nyquist = report.rate / 2
    for item in items:
        if item.kernel_response is None:
            continue
        response = item.kernel_response.double()
        centre = int(response.abs().argmax())
        span = round(8 * report.target_rate / report.rate)  # 8 input samples each side
        segment = response[max(0, centre - span): centre + span + 1]
        times = (torch.arange(segment.shape[-1]) - min(centre, span)) / report.target_rate * report.rate
        axes["time"].plot(times.numpy(), segment.numpy(), label=item.strategy, linewidth=1)
        padded = torch.nn.functional.pad(response, (0, max(0, 8192 - response.shape[-1])))
        magnitude = torch.fft.rfft(padded).abs()
        magnitude = 20 * torch.log10(magnitude / magnitude.max().clamp_min(1e-30) + 1e-12)
        frequencies = torch.fft.rfftfreq(padded.shape[-1], d=1.0 / report.target_rate)
        axes["freq"].plot(frequencies.numpy() / 1000, magnitude.numpy(), label=item.strategy, linewidth=1)
    axes["time"].set(xlabel="time (input samples)", ylabel="kernel", title="kernels (impulse responses)")
    axes["time"].legend(fontsize=8)
    axes["freq"].axvline(nyquist / 1000, color="k", linestyle="--", linewidth=0.8)
    axes["freq"].set(xlabel="frequency (kHz)", ylabel="dB", ylim=(-160, 5),
                     title=f"kernel magnitude (dashed: input Nyquist {nyquist / 1000:g} kHz)")
    axes["freq"].legend(fontsize=8)
    n_fft = 2 ** max(6, math.ceil(math.log2(0.046 * report.target_rate)))
    for index, item in enumerate(items):
        mono = item.signal.double().mean(0)
        if mono.shape[-1] < n_fft:
            mono = torch.nn.functional.pad(mono, (0, n_fft - mono.shape[-1]))
        power = torch.stft(mono, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft, dtype=mono.dtype),
                           return_complex=True).abs().square()
        decibels = 10 * torch.log10(power + 1e-20)
        top = float(decibels.max())
        seconds = mono.shape[-1] / report.target_rate
        axis = axes[f"s{index}"]
        axis.imshow(decibels.numpy(), origin="lower", aspect="auto", vmin=top - 120, vmax=top, cmap="magma",
                    extent=(0, seconds, 0, report.target_rate / 2000))
        axis.axhline(nyquist / 1000, color="w", linestyle="--", linewidth=0.8)
        axis.set(title=f"{item.strategy}: {to_db(item.signal_energy_above):.1f} dB above {nyquist / 1000:g} kHz",
                 xlabel="time (s)", ylabel="kHz" if index == 0 else None)
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
