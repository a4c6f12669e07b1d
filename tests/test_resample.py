"""Tests for sfsep.resample: the torchaudio oracle, exact lengths, large ratios against a naive
float64 reference written here from the formulas, the random strategies, errors and gradients."""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from sfsep.errors import ResampleError, SfsepError
from sfsep.resample import (
    KAISER_BETA,
    LOWPASS_WIDTH,
    METHODS,
    ROLLOFF,
    apply_kernel,
    choose_strategy,
    conventional_kernel,
    kaiser_window,
    kernel_geometry,
    kernel_time_offsets,
    noisy_kernel,
    resample,
)

FIXTURE_RATES = [8000, 11025, 16000, 22050, 32000]
FIXTURE_ATOL = 5e-5
KERNEL_ATOL = 1e-5


def shared_folder() -> Path:
    override = os.environ.get("SFSEP_SHARED")
    return Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="module")
def oracle():
    path = shared_folder() / "fixtures" / "resample_torchaudio.npz"
    if not path.is_file():
        pytest.fail(f"torchaudio resampling oracle not found at {path}; set SFSEP_SHARED")
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(autouse=True)
def few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)


def max_abs(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.detach().double().numpy() - b.astype(np.float64))))


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    reference = reference.double()
    error = estimate.double() - reference
    return float(10 * torch.log10(reference.pow(2).sum() / error.pow(2).sum()))


# --- the torchaudio oracle -------------------------------------------------------------------

@pytest.mark.parametrize("pair", [(8000, 44100), (44100, 8000)])
@pytest.mark.parametrize("variant", ["", "_dtypeNone"])
def test_kernel_matches_torchaudio(oracle, pair, variant):
    input_rate, output_rate = pair
    stored = oracle[f"kernel_{input_rate}_{output_rate}{variant}"][:, 0, :]
    ours = conventional_kernel(input_rate, output_rate)
    assert ours.dtype == torch.float32
    assert tuple(ours.shape) == stored.shape
    assert max_abs(ours, stored) <= KERNEL_ATOL
    assert kernel_geometry(input_rate, output_rate).width == int(
        oracle[f"kernel_{input_rate}_{output_rate}_width"])


@pytest.mark.parametrize("rate", FIXTURE_RATES)
def test_upsampling_matches_torchaudio(oracle, rate):
    expected = oracle[f"up_{rate}_44100"]
    ours = resample(torch.from_numpy(oracle[f"in_{rate}"]), rate, 44100)
    assert ours.dtype == torch.float32
    assert tuple(ours.shape) == expected.shape
    assert max_abs(ours, expected) <= FIXTURE_ATOL


@pytest.mark.parametrize("rate", FIXTURE_RATES)
def test_downsampling_matches_torchaudio(oracle, rate):
    expected = oracle[f"down_44100_{rate}"]
    ours = resample(torch.from_numpy(oracle[f"up_{rate}_44100"]), 44100, rate)
    assert tuple(ours.shape) == expected.shape
    assert max_abs(ours, expected) <= FIXTURE_ATOL


def test_torchaudio_default_settings_are_not_ours(oracle):
    # Negative control: torchaudio's defaults (Hann window, 6 zero crossings) give a different
    # resampler (about 31 dB apart). Our output must match Kaiser-24, not this one.
    ours = resample(torch.from_numpy(oracle["in_8000"]), 8000, 44100)
    default = oracle["up_default_8000_44100"]
    assert max_abs(ours, default) > 100 * FIXTURE_ATOL
    assert snr_db(torch.from_numpy(default), ours) < 40
    assert max_abs(ours, oracle["up_8000_44100"]) <= FIXTURE_ATOL


@pytest.mark.parametrize(
    "source, result, pair, length",
    [("in_8000_len1001", "up_8000_44100_len1001", (8000, 44100), 5519),
     ("in_44100_len1001", "down_44100_8000_len1001", (44100, 8000), 182)],
)
def test_odd_lengths_match_torchaudio(oracle, source, result, pair, length):
    ours = resample(torch.from_numpy(oracle[source]), *pair)
    assert ours.shape == (2, length) == oracle[result].shape
    assert max_abs(ours, oracle[result]) <= FIXTURE_ATOL


# --- lengths ---------------------------------------------------------------------------------

def test_output_length_is_exact_where_torchaudio_float32_ceil_is_short():
    # torchaudio returns 7938226 samples here (float32 ceil of 7938226.0125).
    silence = torch.zeros(1, 1_440_041)
    assert resample(silence, 8000, 44100).shape == (1, 7_938_227)


@pytest.mark.parametrize("pair", [(8000, 44100), (44100, 8000), (44100, 48000), (48000, 44100),
                                  (22050, 16000), (8000, 192000), (192000, 8000), (7, 5)])
def test_output_length_is_integer_ceil(pair):
    input_rate, output_rate = pair
    geometry = kernel_geometry(input_rate, output_rate)
    for length in [0, 1, 2, 79, 80, 81, 440, 441, 1001, 123457, 10**9 + 7]:
        expected = math.ceil(Fraction(length * output_rate, input_rate))
        assert geometry.output_length(length) == expected
    for length in [0, 1, 2, 81, 1001]:
        out = resample(torch.ones(3, length), input_rate, output_rate)
        assert out.shape == (3, math.ceil(Fraction(length * output_rate, input_rate)))


# --- large ratios against a naive float64 reference ------------------------------------------

def naive_resample(signal: np.ndarray, input_rate: int, output_rate: int) -> np.ndarray:
    """Direct sum y[m] = sum_i x[i] h(i/input_rate - m/output_rate), from the continuous
    formulas: cut-off 0.99*min(rate)/2, sinc cut at 24 zero crossings, Kaiser window with
    torchaudio's default beta (constants written out here, not taken from sfsep)."""
    rolloff, lowpass_width, beta = 0.99, 24, 14.769656459379492
    cutoff_hz = rolloff * min(input_rate, output_rate) / 2
    out_length = math.ceil(Fraction(signal.shape[-1] * output_rate, input_rate))
    seconds_in = np.arange(signal.shape[-1]) / input_rate
    seconds_out = np.arange(out_length) / output_rate
    crossings = (seconds_in[None, :] - seconds_out[:, None]) * 2 * cutoff_hz
    inside = np.abs(crossings) <= lowpass_width
    clipped = np.clip(crossings, -lowpass_width, lowpass_width)
    window = np.i0(beta * np.sqrt(1 - (clipped / lowpass_width) ** 2)) / np.i0(beta)
    matrix = np.where(inside, np.sinc(clipped) * window, 0.0) * (2 * cutoff_hz / input_rate)
    return signal @ matrix.T


LARGE_RATIO_PAIRS = [(44100, 48000), (48000, 44100), (22050, 16000), (16000, 22050),
                     (8000, 192000), (192000, 8000), (44100, 8000), (8000, 44100), (48000, 8000)]


@pytest.mark.parametrize("pair", LARGE_RATIO_PAIRS)
def test_large_ratio_pairs_match_naive_reference(pair):
    input_rate, output_rate = pair
    length = max(1, min(1000, 1_000_000 * input_rate // (1000 * output_rate)))
    rng = np.random.default_rng(1)
    signal = rng.standard_normal((2, length))
    expected = naive_resample(signal, input_rate, output_rate)

    ours64 = resample(torch.from_numpy(signal), input_rate, output_rate)
    assert ours64.dtype == torch.float64
    assert ours64.shape == expected.shape
    assert np.max(np.abs(ours64.numpy() - expected)) < 1e-9

    ours32 = resample(torch.from_numpy(signal).float(), input_rate, output_rate)
    assert np.max(np.abs(ours32.double().numpy() - expected)) < 2e-5

    # Blocked processing (as used on long signals) gives the same result.
    kernel = conventional_kernel(input_rate, output_rate, dtype=torch.float64)
    blocked = apply_kernel(torch.from_numpy(signal), kernel, input_rate, output_rate,
                           block_frames=3)
    assert np.max(np.abs(blocked.numpy() - expected)) < 1e-9


@pytest.mark.parametrize("pair", LARGE_RATIO_PAIRS)
def test_large_ratio_kernels_are_small_and_have_unit_dc_gain(pair):
    geometry = kernel_geometry(*pair)
    kernel = conventional_kernel(*pair, dtype=torch.float64)
    assert kernel.shape == (geometry.phases, geometry.taps)
    assert kernel.numel() < 200_000  # (phases, taps), nothing per output sample
    row_sums = kernel.sum(dim=1)
    assert torch.allclose(row_sums, torch.ones_like(row_sums), atol=2e-5)


def test_large_ratio_pairs_run_on_seconds_of_stereo():
    for input_rate, output_rate in [(44100, 48000), (8000, 192000), (192000, 8000)]:
        stereo = torch.randn(2, input_rate)
        out = resample(stereo, input_rate, output_rate)
        assert out.shape == (2, output_rate)
        assert torch.isfinite(out).all()


def test_leading_dimensions_and_dtype_are_kept():
    batch = torch.randn(3, 2, 500, dtype=torch.float64)
    out = resample(batch, 16000, 44100)
    assert out.dtype == torch.float64 and out.shape == (3, 2, 1379)
    for item in range(3):
        assert torch.allclose(out[item], resample(batch[item], 16000, 44100), atol=1e-12)
    mono = resample(batch[0, 0], 16000, 44100)
    assert torch.allclose(mono, out[0, 0], atol=1e-12)


# --- the hook for learned kernels ------------------------------------------------------------

def test_constants_are_torchaudio_kaiser_24():
    assert (LOWPASS_WIDTH, ROLLOFF, KAISER_BETA) == (24, 0.99, 14.769656459379492)


def test_time_offsets_rebuild_the_conventional_kernel():
    geometry = kernel_geometry(8000, 44100)
    offsets = kernel_time_offsets(8000, 44100)
    assert offsets.shape == (geometry.phases, geometry.taps)
    assert offsets.abs().max() <= LOWPASS_WIDTH
    rebuilt = geometry.gain * torch.sinc(offsets) * kaiser_window(offsets)
    assert torch.allclose(rebuilt, conventional_kernel(8000, 44100, dtype=torch.float64),
                          atol=1e-15)
    # Tap `width` of phase 0 is the output instant itself.
    assert offsets[0, geometry.width] == 0
    offsets.zero_()  # callers own the returned tensor
    assert kernel_time_offsets(8000, 44100).abs().max() > 0


def test_gradients_flow_through_a_kernel_function():
    torch.manual_seed(0)
    offsets = kernel_time_offsets(8000, 44100, dtype=torch.float32)
    geometry = kernel_geometry(8000, 44100)
    scale = torch.tensor(1.0, requires_grad=True)  # a one-parameter "learned" kernel
    signal = torch.randn(2, 4000, requires_grad=True)
    kernel = geometry.gain * torch.sinc(offsets * scale) * kaiser_window(offsets)
    out = apply_kernel(signal, kernel, 8000, 44100)
    target = resample(signal.detach(), 8000, 44100)
    assert torch.allclose(out.detach(), target, atol=1e-5)
    (out - 0.5 * target).pow(2).mean().backward()
    assert scale.grad is not None and torch.isfinite(scale.grad) and scale.grad != 0
    assert signal.grad is not None and signal.grad.abs().sum() > 0


@pytest.mark.parametrize("block_frames", [None, 2])
def test_gradcheck_through_kernel_and_signal(block_frames):
    geometry = kernel_geometry(2, 3)
    kernel = conventional_kernel(2, 3, dtype=torch.float64).requires_grad_()
    signal = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, k: apply_kernel(x, k, 2, 3, block_frames=block_frames), (signal, kernel),
        fast_mode=True)
    assert kernel.shape == (geometry.phases, geometry.taps)


def test_kernels_cached_under_inference_mode_still_support_autograd():
    with torch.inference_mode():  # first use of this rate pair fills the cache
        resample(torch.randn(1, 50), 3, 7)
    signal = torch.randn(1, 50, requires_grad=True)
    resample(signal, 3, 7).sum().backward()
    assert signal.grad is not None and torch.isfinite(signal.grad).all()


def test_apply_kernel_rejects_a_kernel_of_the_wrong_shape():
    with pytest.raises(ResampleError, match="phases, taps"):
        apply_kernel(torch.zeros(1, 10), torch.zeros(3, 4), 8000, 44100)


# --- noisy kernel ----------------------------------------------------------------------------

def test_noisy_is_reproducible_with_a_seeded_generator(oracle):
    signal = torch.from_numpy(oracle["in_8000"])
    first = resample(signal, 8000, 44100, "noisy", generator=torch.Generator().manual_seed(7))
    again = resample(signal, 8000, 44100, "noisy", generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, again)
    expected_kernel = noisy_kernel(8000, 44100, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, apply_kernel(signal, expected_kernel, 8000, 44100))


def test_noisy_draws_afresh_on_every_call(oracle):
    signal = torch.from_numpy(oracle["in_8000"])
    generator = torch.Generator().manual_seed(7)
    first = resample(signal, 8000, 44100, "noisy", generator=generator)
    second = resample(signal, 8000, 44100, "noisy", generator=generator)
    assert not torch.equal(first, second)
    torch.manual_seed(3)
    default_first = resample(signal, 8000, 44100, "noisy")
    default_second = resample(signal, 8000, 44100, "noisy")
    assert not torch.equal(default_first, default_second)


@pytest.mark.parametrize("sigma", [1e-3, 1e-2])
def test_kernel_noise_has_std_sigma(sigma):
    conventional = conventional_kernel(8000, 44100, dtype=torch.float64)
    generator = torch.Generator().manual_seed(11)
    noise = noisy_kernel(8000, 44100, sigma=sigma, generator=generator,
                         dtype=torch.float64) - conventional
    count = noise.numel()  # 441 * 130 = 57330 draws: std known to ~0.3 %
    assert abs(noise.std().item() / sigma - 1) < 0.03
    assert abs(noise.mean().item()) < 5 * sigma / math.sqrt(count)
    # Independent entries: neighbouring taps and neighbouring phases are uncorrelated.
    along_taps = torch.corrcoef(torch.stack([noise[:, :-1].flatten(), noise[:, 1:].flatten()]))
    along_phases = torch.corrcoef(torch.stack([noise[:-1].flatten(), noise[1:].flatten()]))
    assert abs(along_taps[0, 1]) < 0.03 and abs(along_phases[0, 1]) < 0.03


def test_noisy_with_zero_sigma_is_conventional(oracle):
    signal = torch.from_numpy(oracle["in_8000"])
    assert torch.equal(resample(signal, 8000, 44100, "noisy", sigma=0.0),
                       resample(signal, 8000, 44100))


def test_noisy_shares_one_kernel_across_channels():
    channel = torch.randn(1, 3000)
    stereo = channel.repeat(2, 1)
    out = resample(stereo, 8000, 44100, "noisy", generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[0], out[1])


def spectrum_energy(signal: torch.Tensor, rate: int, above_hz: float) -> float:
    """Energy above `above_hz` of the Hann-windowed signal (the window keeps the leakage of the
    signal's abrupt start and end out of the high band)."""
    window = torch.hann_window(signal.shape[-1], periodic=False, dtype=torch.float64)
    spectrum = torch.fft.rfft(signal.double() * window, dim=-1).abs().pow(2)
    frequencies = torch.fft.rfftfreq(signal.shape[-1], 1 / rate)
    return float(spectrum[..., frequencies > above_hz].sum())


def test_noisy_fills_the_band_above_the_input_nyquist(oracle):
    signal = torch.from_numpy(oracle["in_8000"])
    conventional = resample(signal, 8000, 44100)
    noisy = resample(signal, 8000, 44100, "noisy", generator=torch.Generator().manual_seed(0))
    # The conventional filter's transition band ends near 4.3 kHz; above 4.5 kHz it leaves
    # (almost) nothing, the noisy kernel leaves a -39 dB floor spread over the whole band.
    assert spectrum_energy(noisy, 44100, 4500) > 1e4 * spectrum_energy(conventional, 44100, 4500)
    difference = noisy - conventional
    above = spectrum_energy(difference, 44100, 4000) / spectrum_energy(difference, 44100, 0)
    assert above > 0.7  # white over 0..22.05 kHz would put 82 % above 4 kHz
    assert 30 < snr_db(conventional, noisy) < 50


# --- post-resampling noise -------------------------------------------------------------------

@pytest.mark.parametrize("target_db", [20.0, 5.0, 37.5])
def test_noise_hits_the_snr_exactly_per_signal(oracle, target_db):
    signal = torch.from_numpy(oracle["in_8000"])
    batch = torch.stack([signal, 0.01 * signal.flip(-1)])  # two signals, very different levels
    generator = torch.Generator().manual_seed(5)
    conventional = resample(batch, 8000, 44100)
    noisy = resample(batch, 8000, 44100, "noise", snr_db=target_db, generator=generator)
    for item in range(2):
        assert abs(snr_db(conventional[item], noisy[item]) - target_db) < 1e-3
    single = resample(signal, 8000, 44100, "noise", snr_db=target_db, generator=generator)
    assert abs(snr_db(conventional[0], single) - target_db) < 1e-3


def test_noise_level_is_shared_by_the_channels_of_a_signal(oracle):
    # One scale per (channels, samples) signal: a quiet channel gets as much noise as a loud one.
    signal = torch.from_numpy(oracle["in_8000"]) * torch.tensor([[1.0], [0.01]])
    conventional = resample(signal, 8000, 44100)
    added = resample(signal, 8000, 44100, "noise", generator=torch.Generator().manual_seed(4))
    added = added - conventional
    per_channel = added.double().pow(2).sum(dim=-1)
    assert abs(per_channel[0] / per_channel[1] - 1) < 0.05
    assert abs(snr_db(conventional, conventional + added) - 20.0) < 1e-3
    assert snr_db(conventional[1], conventional[1] + added[1]) < -15


def test_noise_default_is_20_db_and_reproducible(oracle):
    signal = torch.from_numpy(oracle["in_8000"])
    first = resample(signal, 8000, 44100, "noise", generator=torch.Generator().manual_seed(2))
    again = resample(signal, 8000, 44100, "noise", generator=torch.Generator().manual_seed(2))
    other = resample(signal, 8000, 44100, "noise", generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert abs(snr_db(resample(signal, 8000, 44100), first) - 20.0) < 1e-3


def test_noise_on_long_half_precision_signals_does_not_overflow():
    signal = torch.ones(2, 40000, dtype=torch.float16)  # energy far above float16's range
    out = resample(signal, 8000, 16000, "noise", generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert abs(snr_db(resample(signal, 8000, 16000), out) - 20.0) < 0.05


def test_noise_leaves_silence_silent():
    out = resample(torch.zeros(2, 800), 8000, 44100, "noise")
    assert out.shape == (2, 4410) and torch.count_nonzero(out) == 0


# --- none, equal rates, choice, errors -------------------------------------------------------

def test_none_is_identity_and_refuses_different_rates():
    signal = torch.randn(2, 100)
    assert resample(signal, 44100, 44100, "none") is signal
    with pytest.raises(ResampleError, match="none"):
        resample(signal, 8000, 44100, "none")


@pytest.mark.parametrize("method", METHODS)
def test_equal_rates_return_the_input(method):
    signal = torch.randn(2, 100)
    assert resample(signal, 22050, 22050, method) is signal


def test_choose_strategy():
    assert METHODS == ("conventional", "noisy", "noise", "trainable", "none")
    method, reason = choose_strategy(8000, 44100)
    assert method == "noisy" and "8000" in reason and "44100" in reason
    method, reason = choose_strategy(48000, 44100)
    assert method == "conventional" and "48000" in reason
    method, reason = choose_strategy(44100, 44100)
    assert method == "none" and "44100" in reason
    with pytest.raises(ResampleError, match="trained_rate"):
        choose_strategy(8000, 0)


@pytest.mark.parametrize("rates", [(0, 44100), (-8000, 44100), (8000, 44100.5), (8000, "44100"),
                                   (True, 44100), (8000, float("nan")), (8000, None)])
def test_bad_rates_raise(rates):
    with pytest.raises(ResampleError, match="rate"):
        resample(torch.zeros(1, 10), *rates)


def test_integer_valued_rates_are_accepted():
    out = resample(torch.zeros(1, 10), np.int64(8000), 16000.0)
    assert out.shape == (1, 20)


def test_bad_arguments_raise_resample_errors():
    signal = torch.zeros(1, 10)
    with pytest.raises(ResampleError, match="conventional, noisy, noise, trainable, none"):
        resample(signal, 8000, 44100, "sinc_interp_hann")
    with pytest.raises(ResampleError, match="floating-point"):
        resample(torch.zeros(1, 10, dtype=torch.int16), 8000, 44100)
    with pytest.raises(ResampleError, match="sigma"):
        resample(signal, 8000, 44100, "noisy", sigma=-1.0)
    with pytest.raises(ResampleError, match="snr_db"):
        resample(signal, 8000, 44100, "noise", snr_db=float("inf"))
    with pytest.raises(ResampleError, match="generator"):
        resample(signal, 8000, 44100, "noisy", generator=0)
    assert issubclass(ResampleError, SfsepError)
