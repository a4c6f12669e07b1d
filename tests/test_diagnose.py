"""`sfsep diagnose`: consistency, LEE and spectrum on synthetic inputs with models of known behaviour.

Models (trained rate 16 kHz):
- HighBandGate: needs high-frequency energy. Its first stem is the mixture times
  g = rho / (rho + 1e-3), rho the fraction of the input's energy above 2.4 kHz; the second
  stem is the rest. At full band (white noise up to 8 kHz) g ~ 1; from a 4 kHz input upsampled
  conventionally g ~ 0.01, with a noisy kernel (sigma 1e-2) ~ 0.75, with 20-dB noise ~ 0.9.
- BandSplit: linear and blind to the band above r/2 where it matters: stems are the input's
  band below 2.4 kHz and the rest. Its output below 2 kHz does not depend on what lies above.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from sfsep.diagnose import consistency, local_equivariance_error, plot_spectrum, spectrum_report, summarize_consistency
from sfsep.errors import UsageError
from sfsep.pipeline import Separator, Settings
from sfsep.registry import ModelSpec
from sfsep.resample import resample
from sfsep.resample.trainable import TrainableKernel, fit_windowed_sinc

RATE = 16000
FLOOR = 1e-3


def _low_band(mix: torch.Tensor) -> torch.Tensor:
    return resample(resample(mix, RATE, 4800), 4800, RATE)[..., : mix.shape[-1]]


class HighBandGate(torch.nn.Module):
    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        high = (mix - _low_band(mix)).square().mean(dim=(-2, -1))
        ratio = high / mix.square().mean(dim=(-2, -1)).clamp_min(1e-12)
        gain = (ratio / (ratio + FLOOR))[:, None, None]
        return torch.stack([gain * mix, (1 - gain) * mix], dim=1)


class BandSplit(torch.nn.Module):
    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        low = _low_band(mix)
        return torch.stack([low, mix - low], dim=1)


def separator(module: torch.nn.Module, name: str) -> Separator:
    spec = ModelSpec(name=name, family="classic", stems=("vocals", "other"), trained_rate=RATE, chunk_size=RATE)
    return Separator(spec, device="cpu", modules=[module])


def noise_file(seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    return 0.2 * torch.randn(2, int(RATE * seconds), generator=torch.Generator().manual_seed(seed))


SETTINGS = Settings(sigma=1e-2, seed=0)


def test_consistency_prefers_resamplers_that_restore_high_frequency_energy():
    rows = consistency(separator(HighBandGate(), "gate"), noise_file(), RATE, [4000],
                       ["conventional", "noisy", "noise"], settings=SETTINGS, name="noise.wav")
    assert {(r.rate, r.resampler, r.stem) for r in rows} == {
        (4000, m, s) for m in ("conventional", "noisy", "noise") for s in ("vocals", "other")}
    summary = summarize_consistency(rows)
    conventional = summary[(4000, "conventional")]["vocals"]
    noisy = summary[(4000, "noisy")]["vocals"]
    noise = summary[(4000, "noise")]["vocals"]
    # conventional: g ~ 0.01, so the vocals estimate is ~0 and the score ~0 dB.
    assert conventional < 1.0, summary
    assert noisy > conventional + 5 and noise > conventional + 5, summary


def test_consistency_is_high_for_a_model_that_ignores_the_missing_band():
    rows = consistency(separator(BandSplit(), "split"), noise_file(), RATE, [4000], ["conventional", "noisy"],
                       settings=Settings(seed=0))
    summary = summarize_consistency(rows)
    # Below 2 kHz the split's vocals are the input itself whatever the resampler: near-perfect agreement
    # (the transition band of the kernels near 2 kHz limits it).
    assert summary[(4000, "conventional")]["vocals"] > 20, summary
    with pytest.raises(UsageError, match="--rates"):
        consistency(separator(BandSplit(), "split"), noise_file(), RATE, [16000], ["conventional"])


def test_lee_separates_a_band_dependent_model_from_a_band_blind_one():
    files = [(noise_file(seed=1), RATE), (noise_file(seed=2), RATE)]
    gate = local_equivariance_error(separator(HighBandGate(), "gate"), files, [4000, 8000])
    split = local_equivariance_error(separator(BandSplit(), "split"), files, [4000, 8000])
    gate_by_rate = {r.rate: r for r in gate}
    split_by_rate = {r.rate: r for r in split}
    assert len(gate_by_rate[4000].per_file) == 2
    # The gate's output below 2 kHz collapses when the band above 2 kHz is removed (g: 1 -> 0.01).
    assert gate_by_rate[4000].lee > 0.5, gate
    # Removing only the band above 4 kHz leaves 2.4-4 kHz energy: g drops less, a smaller LEE.
    assert gate_by_rate[8000].lee < gate_by_rate[4000].lee, gate
    assert split_by_rate[4000].lee < 0.05 and split_by_rate[8000].lee < 0.05, split
    assert set(gate_by_rate[4000].per_stem) == {"vocals", "other"}


@pytest.fixture(scope="module")
def trained_like_kernel() -> TrainableKernel:
    kernel = TrainableKernel()
    fit_windowed_sinc(kernel, steps=200, seed=0)  # a rough fit: a kernel that leaks above Nyquist
    return kernel


def test_spectrum_summary_orders_the_strategies(tmp_path, trained_like_kernel):
    audio = noise_file(seconds=0.5)
    report = spectrum_report(audio, RATE, 4000, RATE, sigma=1e-3, snr_db=20.0, seed=0,
                             trained_kernel=trained_like_kernel)
    rows = {row["strategy"]: row for row in report.rows()}
    assert list(rows) == ["conventional", "noisy", "noise", "trainable"]
    # The resampled signal: noisy and noise put more energy above 2 kHz than conventional. White
    # noise at 4 kHz keeps ~-27 dB there conventionally (the kernels' transition bands), which a
    # sigma of 1e-3 barely changes; past the transition band (2.5 kHz) the difference is clear.
    assert rows["noise"]["signal_above_db"] > rows["noisy"]["signal_above_db"] > rows["conventional"]["signal_above_db"]
    assert rows["noisy"]["signal_stopband_db"] > rows["conventional"]["signal_stopband_db"] + 10
    louder = spectrum_report(audio, RATE, 4000, RATE, sigma=1e-2, seed=0).rows()
    assert louder[1]["strategy"] == "noisy" and louder[1]["signal_above_db"] > louder[0]["signal_above_db"] + 3
    assert -23 < rows["noise"]["signal_above_db"] < -18  # 20 dB SNR, 3/4 of white noise above 2 kHz
    # The kernels: past the transition band the conventional kernel is ~empty, the noisy one is not.
    assert rows["conventional"]["kernel_stopband_db"] < -100
    assert rows["noisy"]["kernel_stopband_db"] > rows["conventional"]["kernel_stopband_db"] + 40
    assert rows["noise"]["kernel_above_db"] is None
    assert rows["trainable"]["kernel_stopband_db"] > rows["conventional"]["kernel_stopband_db"]
    path = plot_spectrum(report, tmp_path / "plots" / "spectrum.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10000


def test_cli_diagnose_spectrum_json_and_png(run_cli, tmp_path):
    rng = np.random.default_rng(0)
    song = tmp_path / "song.wav"
    sf.write(song, (0.2 * rng.standard_normal((22050, 2))).astype(np.float32), 22050)
    png = tmp_path / "out.png"
    result = run_cli("diagnose", "spectrum", song, "--rate", "8000", "--model", "classic", "--target-rate", "22050",
                     "--plot", png, "--json")
    assert result.code == 0, result
    data = json.loads(result.out)
    rows = {row["strategy"]: row for row in data["strategies"]}
    assert rows["noisy"]["signal_above_db"] > rows["conventional"]["signal_above_db"]
    assert rows["noise"]["signal_above_db"] > rows["conventional"]["signal_above_db"]
    assert png.is_file() and data["plot"] == str(png)
    text = run_cli("diagnose", "spectrum", song, "--rate", "8000", "--model", "classic", "--target-rate", "22050")
    assert text.code == 0 and "resampled file" in text.out and "noisy" in text.out
    bad = run_cli("diagnose", "spectrum", song, "--rate", "8000", "--model", "classic")
    assert bad.code == 2 and "--target-rate" in bad.err


def test_cli_consistency_and_lee_with_a_real_architecture(run_cli, shared, tmp_path):
    """The commands as thin layers over the functions: tiny SCNet weights (44.1 kHz), a file at 22.05 kHz."""
    import yaml

    data = torch.load(shared / "parity" / "scnet_tiny.pt", weights_only=True)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data["config"], sort_keys=False))
    torch.save({"state_dict": data["state_dict"]}, tmp_path / "tiny.ckpt")
    model = ("--model", "scnet", "--weights", tmp_path / "tiny.ckpt", "--config", tmp_path / "tiny.yaml")
    rng = np.random.default_rng(1)
    song = tmp_path / "song.wav"
    sf.write(song, (0.2 * rng.standard_normal((11025, 2))).astype(np.float32), 22050)
    result = run_cli("diagnose", "consistency", song, *model, "--rates", "8000", "--resamplers",
                     "conventional,noisy,noise", "--json")
    assert result.code == 0, result
    data = json.loads(result.out)
    assert {(row["rate"], row["resampler"]) for row in data["summary"]} == {
        (8000, "conventional"), (8000, "noisy"), (8000, "noise")}
    assert all(np.isfinite(row["sdr_db"]) for row in data["rows"])
    table = run_cli("diagnose", "consistency", song, *model, "--rates", "8000")
    assert table.code == 0 and "proxy" in table.out
    assert re.search(r"8000 +│ (conventional|noisy) \*", table.out), table.out  # the best one is starred
    lee = run_cli("diagnose", "lee", song, *model, "--rates", "8000,16000", "--json")
    assert lee.code == 0, lee
    values = {row["rate"]: row["lee"] for row in json.loads(lee.out)}
    assert set(values) == {8000, 16000} and all(v > 0 for v in values.values())
    bad = run_cli("diagnose", "lee", song, *model, "--rates", "48000")
    assert bad.code == 2 and "--rates" in bad.err
    unknown = run_cli("diagnose", "consistency", song, *model, "--resamplers", "sinc")
    assert unknown.code == 2 and "--resamplers sinc" in unknown.err
