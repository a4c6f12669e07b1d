"""Tests of the classical separators (sfsep/models/classic.py) on a synthetic four-source mix.

The mix is built here, deterministically, from parts each separator should recognise:
a voice-like source (a non-repeating melody with vibrato and moving formants, in the vocal
band), drums made of noise bursts, a low bass line, and sustained chords that repeat.
Quality is checked against the trivial estimate "mixture / 4 for every stem" with whole-signal
SDR; the other tests check the contract (shapes, dtypes, exact sums, rates, memory).
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sfsep.errors import ModelError
from sfsep.evaluate.metrics import utterance_sdr
from sfsep.models import build_model
from sfsep.models.classic import STEMS, build_classic, build_nmf

FAMILIES = ("classic", "nmf")


# ----------------------------------------------------------------------------- synthetic mix


def _harmonic_tone(
    f0: torch.Tensor, sample_rate: int, partial_gain, max_partials: int = 40
) -> torch.Tensor:
    """Sum of partials k * f0(t) (phase integrated), weighted by partial_gain(k, freq) and
    kept below 0.45 * sample_rate so the tone is band-limited at every rate."""
    phase = 2 * math.pi * torch.cumsum(f0, dim=0) / sample_rate
    tone = torch.zeros_like(f0)
    for k in range(1, max_partials + 1):
        frequency = k * f0
        audible = (frequency < 0.45 * sample_rate).to(f0.dtype)
        if audible.max() == 0:
            break
        tone += audible * partial_gain(k, frequency) * torch.sin(k * phase)
    return tone


def _envelope(length: int, attack: int, release: int) -> torch.Tensor:
    env = torch.ones(length, dtype=torch.float64)
    attack, release = min(attack, length), min(release, length)
    if attack:
        env[:attack] = torch.linspace(0, 1, attack, dtype=torch.float64)
    if release:
        env[length - release :] *= torch.linspace(1, 0, release, dtype=torch.float64)
    return env


def _formant_gain(formants):
    def gain(k, frequency):
        total = torch.zeros_like(frequency)
        for centre, width, level in formants:
            total += level / (1 + ((frequency - centre) / width) ** 2)
        return total / k**0.5

    return gain


def synthetic_sources(sample_rate: int, seconds: float = 8.0, seed: int = 0) -> torch.Tensor:
    """(4, samples) float64 sources in STEMS order: vocals, drums, bass, other (chords)."""
    generator = torch.Generator().manual_seed(seed)
    length = int(seconds * sample_rate)
    t = torch.arange(length, dtype=torch.float64) / sample_rate

    def uniform(low, high):
        return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()

    # Vocals: notes of 0.25-0.6 s from a pentatonic scale around 200-450 Hz, 5.5 Hz vibrato
    # (+-1.5 %), three formants that move from note to note, short breaths between notes.
    vowels = [((700, 120, 1.0), (1200, 150, 0.6), (2600, 250, 0.3)),
              ((300, 80, 1.0), (2300, 200, 0.5), (3000, 300, 0.3)),
              ((500, 100, 1.0), (900, 120, 0.7), (2500, 250, 0.2))]
    scale = [196.0, 220.0, 261.6, 293.7, 329.6, 392.0, 440.0]
    vocals = torch.zeros(length, dtype=torch.float64)
    position = int(0.1 * sample_rate)
    while position < length:
        note_length = int(uniform(0.25, 0.6) * sample_rate)
        stop = min(length, position + note_length)
        span = stop - position
        f0 = scale[int(uniform(0, len(scale) - 1e-9))]
        vibrato = 1 + 0.015 * torch.sin(2 * math.pi * 5.5 * t[:span] + uniform(0, 2 * math.pi))
        vowel = vowels[int(uniform(0, len(vowels) - 1e-9))]
        tone = _harmonic_tone(f0 * vibrato, sample_rate, _formant_gain(vowel))
        vocals[position:stop] += tone * _envelope(span, int(0.03 * sample_rate), int(0.05 * sample_rate))
        position = stop + int(uniform(0.02, 0.15) * sample_rate)

    # Drums: exponentially decaying white-noise bursts (kick-like low-passed, snare, hats).
    drums = torch.zeros(length, dtype=torch.float64)
    beat = 0.25  # seconds per eighth note (120 bpm)
    for index in range(int(seconds / beat)):
        start = int(index * beat * sample_rate)
        decay, level = (0.06, 0.5) if index % 4 == 2 else (0.02, 0.25)
        if index % 4 == 0:
            decay, level = 0.08, 0.6
        span = min(length - start, int(6 * decay * sample_rate))
        noise = torch.randn(span, generator=generator, dtype=torch.float64)
        if index % 4 == 0:  # low-passed: a running mean over ~2 ms
            width = max(1, int(0.002 * sample_rate))
            noise = torch.nn.functional.avg_pool1d(noise[None, None], width, 1, width // 2)[0, 0, :span]
            noise = noise / noise.std()
        drums[start : start + span] += level * noise * torch.exp(-t[:span] / decay)

    # Bass: 0.5 s notes of a repeating line between 41 and 82 Hz, fundamental-heavy.
    line = [55.0, 55.0, 73.4, 65.4, 49.0, 49.0, 61.7, 73.4]
    bass = torch.zeros(length, dtype=torch.float64)
    note = int(0.5 * sample_rate)
    for index, start in enumerate(range(0, length, note)):
        span = min(note, length - start)
        f0 = torch.full((span,), line[index % len(line)], dtype=torch.float64)
        tone = _harmonic_tone(f0, sample_rate, lambda k, f: (f < 200).to(f.dtype) / k**2, max_partials=4)
        bass[start : start + span] = tone * _envelope(span, int(0.01 * sample_rate), int(0.02 * sample_rate))

    # Chords (other): four 1-s chords cycling (the accompaniment repeats), three notes each
    # with decaying partials, held for the whole second.
    chords = [(261.6, 329.6, 392.0), (220.0, 261.6, 329.6), (174.6, 220.0, 261.6), (196.0, 246.9, 293.7)]
    other = torch.zeros(length, dtype=torch.float64)
    for index, start in enumerate(range(0, length, sample_rate)):
        span = min(sample_rate, length - start)
        for pitch in chords[index % len(chords)]:
            f0 = torch.full((span,), pitch, dtype=torch.float64)
            tone = _harmonic_tone(f0, sample_rate, lambda k, f: 0.7**k, max_partials=12)
            other[start : start + span] += tone * _envelope(span, int(0.05 * sample_rate), int(0.1 * sample_rate))

    sources = torch.stack([vocals, drums, bass, other])
    rms = sources.pow(2).mean(dim=1, keepdim=True).sqrt()
    levels = torch.tensor([0.1, 0.1, 0.1, 0.07], dtype=torch.float64)[:, None]
    return sources / rms * levels


def stereo_mix(sample_rate: int, seconds: float = 8.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(4, 2, samples) float32 sources panned to two channels and their (2, samples) mix."""
    sources = synthetic_sources(sample_rate, seconds)
    pans = torch.tensor([0.5, 0.4, 0.5, 0.7], dtype=torch.float64)  # share of each source on the left
    stereo = torch.stack([sources * pans[:, None], sources * (1 - pans[:, None])], dim=1) * 2 ** 0.5
    stereo = stereo.float()
    return stereo, stereo.sum(dim=0)


def sdr_table(sources: torch.Tensor, estimates: torch.Tensor) -> list[float]:
    """Whole-signal SDR of each stem, 10 log10(sum s^2 / sum (s - s_hat)^2) (the project's
    utterance SDR: its eps of 1e-8 is negligible at these energies)."""
    return utterance_sdr(sources, estimates).tolist()


@functools.lru_cache(maxsize=None)
def _cached_mix(sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    return stereo_mix(sample_rate)


@functools.lru_cache(maxsize=None)
def _cached_separation(family: str, sample_rate: int) -> torch.Tensor:
    _, mix = _cached_mix(sample_rate)
    model = build_model(family, {"sample_rate": sample_rate})
    return model(mix[None])[0]


# ----------------------------------------------------------------------------- quality


@pytest.mark.parametrize("sample_rate", [44100, 16000])
@pytest.mark.parametrize("family", FAMILIES)
def test_beats_the_trivial_estimate_by_a_decibel(family, sample_rate):
    sources, mix = _cached_mix(sample_rate)
    estimates = _cached_separation(family, sample_rate)
    trivial = sdr_table(sources, (mix / 4).expand(len(STEMS), -1, -1))
    achieved = sdr_table(sources, estimates)
    margin = sum(achieved) / len(STEMS) - sum(trivial) / len(STEMS)
    report = ", ".join(f"{stem} {value:.2f} (trivial {base:.2f})" for stem, value, base in zip(STEMS, achieved, trivial))
    print(f"{family} @ {sample_rate} Hz: {report}; mean margin {margin:.2f} dB")
    assert margin >= 1.0, f"{family} @ {sample_rate} Hz only {margin:.2f} dB above mixture/4: {report}"


@pytest.mark.parametrize("sample_rate", [44100, 16000])
@pytest.mark.parametrize("family", FAMILIES)
def test_stems_sum_to_the_mixture(family, sample_rate):
    _, mix = _cached_mix(sample_rate)
    estimates = _cached_separation(family, sample_rate)
    assert estimates.shape == (len(STEMS), *mix.shape)
    assert (estimates.sum(dim=0) - mix).abs().max().item() < 1e-4
    # Not a trivial split: every stem carries some of the signal, none is the whole mix.
    energies = estimates.pow(2).sum(dim=(1, 2)) / mix.pow(2).sum()
    assert bool((energies > 1e-3).all()) and bool((energies < 0.9).all()), energies


@pytest.mark.parametrize("window_seconds", [0.0, 2.0])
def test_repeating_spectrum_ignores_a_one_off_event(window_seconds):
    """REPET-SIM's repeating spectrum of a cycling pattern with a one-off event keeps the
    pattern and drops the event (the event is small enough that the frame still resembles
    its own pattern most), whether similar frames come from the whole input or a window."""
    model = build_classic({"sample_rate": 16000, "repet_window_seconds": window_seconds})
    generator = torch.Generator().manual_seed(1)
    bins = model.spectral.n_fft // 2 + 1
    patterns = torch.rand(bins, 5, generator=generator) + 0.1
    frames = 600  # ~7 s of hops
    magnitude = patterns[:, torch.arange(frames) % 5].clone()
    event_frame = 300
    magnitude[40:48, event_frame] += 1.0
    repeating = model.repeating_spectrum(magnitude)
    assert repeating.shape == magnitude.shape
    assert torch.allclose(repeating[:, event_frame], patterns[:, event_frame % 5], atol=1e-6)
    assert torch.allclose(repeating, patterns[:, torch.arange(frames) % 5], atol=1e-6)


def test_repet_window_limits_where_similar_frames_come_from():
    """Frame 50 repeats only in frames 300-599 (3.5 s away): the whole-input search finds
    those copies, a 2-s window cannot."""
    generator = torch.Generator().manual_seed(5)
    model = build_classic({"sample_rate": 16000, "repet_window_seconds": 0.0})
    bins = model.spectral.n_fft // 2 + 1
    patterns = torch.rand(bins, 6, generator=generator) + 0.1
    index = torch.arange(600) % 5
    index[300:] = 5
    index[50] = 5
    magnitude = patterns[:, index].contiguous()
    whole = model.repeating_spectrum(magnitude)
    windowed = build_classic({"sample_rate": 16000, "repet_window_seconds": 2.0}).repeating_spectrum(magnitude)
    assert torch.allclose(whole[:, 50], patterns[:, 5])
    assert (windowed[:, 50] - patterns[:, 5]).abs().mean() > 0.1


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("family", FAMILIES)
def test_registry_builds_a_weightless_module_with_stems(family):
    model = build_model(family, {"sample_rate": 22050})
    assert model.STEMS == STEMS == ("vocals", "drums", "bass", "other")
    assert len(model.state_dict()) == 0 and not list(model.parameters())
    builder = {"classic": build_classic, "nmf": build_nmf}[family]
    assert type(builder({"sample_rate": 22050})) is type(model)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype_device_batch_and_mono(family, dtype):
    sample_rate = 8000
    generator = torch.Generator().manual_seed(2)
    mix = (0.1 * torch.randn(2, 1, 3 * sample_rate, generator=generator)).to(dtype)
    model = build_model(family, {"sample_rate": sample_rate}).to(mix.device)
    stems = model(mix)
    assert stems.shape == (2, 4, 1, 3 * sample_rate)
    assert stems.dtype == dtype and stems.device == mix.device
    tolerance = 1e-4 if dtype != torch.bfloat16 else 0.02 * mix.abs().max().item()
    assert (stems.float().sum(dim=1) - mix.float()).abs().max().item() < tolerance
    # Batch items are separated independently.
    alone = model(mix[1:])
    assert torch.allclose(alone.float(), stems[1:].float(), atol=1e-5 if dtype != torch.bfloat16 else 1e-2)


@pytest.mark.parametrize("family,config", [("classic", {}), ("classic", {"repet_window_seconds": 0.0}), ("nmf", {})])
def test_block_size_does_not_change_the_result(family, config):
    """Segmented STFT/iSTFT, tiled medians and blocked similarity (windowed or whole-input)
    equal whole-signal work."""
    _, mix = _cached_mix(16000)
    whole = build_model(family, {"sample_rate": 16000, "block_megabytes": 1e5, **config})(mix[None])
    pieces = build_model(family, {"sample_rate": 16000, "block_megabytes": 0.5, **config})(mix[None])
    assert torch.allclose(whole, pieces, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_runs_are_deterministic(family):
    _, mix = _cached_mix(16000)
    model = build_model(family, {"sample_rate": 16000})
    short = mix[None, :, : 3 * 16000]
    assert torch.equal(model(short), model(short))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sample_rate", [4000, 192000])
def test_extreme_rates_run(family, sample_rate):
    sources = synthetic_sources(sample_rate, seconds=2.0).float()
    mix = torch.stack([sources.sum(dim=0), 0.8 * sources.sum(dim=0)])[None]
    model = build_model(family, {"sample_rate": sample_rate})
    # The STFT window is the same duration at every rate.
    assert model.spectral.n_fft / sample_rate == pytest.approx(0.0464, rel=0.05)
    stems = model(mix)
    assert stems.shape == (1, 4, 2, mix.shape[-1])
    assert torch.isfinite(stems).all()
    assert (stems.sum(dim=1) - mix).abs().max().item() < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("length", [0, 1, 100, 5000])
def test_short_inputs(family, length):
    mix = 0.1 * torch.randn(1, 2, length, generator=torch.Generator().manual_seed(3))
    stems = build_model(family, {"sample_rate": 44100})(mix)
    assert stems.shape == (1, 4, 2, length)
    assert torch.isfinite(stems).all()
    if length:
        assert (stems.sum(dim=1) - mix).abs().max().item() < 1e-4


def test_config_errors_name_the_problem():
    with pytest.raises(ModelError, match="sample_rate"):
        build_classic({})
    with pytest.raises(ModelError, match="sample_rate"):
        build_nmf({"sample_rate": 44100.5})
    with pytest.raises(ModelError, match="below"):
        build_classic({"sample_rate": 200})
    with pytest.raises(ModelError, match="hop_fraction"):
        build_nmf({"sample_rate": 44100, "hop_fraction": 1.0})
    with pytest.raises(ModelError, match="repet_neighbors"):
        build_classic({"sample_rate": 44100, "repet_neighbors": 5})
    with pytest.raises(ModelError, match="input must be"):
        build_classic({"sample_rate": 44100})(torch.zeros(2, 100))


# ----------------------------------------------------------------------------- run contract


def _sdr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return 10 * math.log10(reference.double().pow(2).sum().item() / (reference - estimate).double().pow(2).sum().item())


def test_classic_chunked_run_equals_the_whole_signal():
    """inference.demix with the hint ("fade", any_length as the classical contract says) on an
    input several segments long whose end is half a hop off the STFT frames. The overlap's
    zero-weight quarter covers the receptive field of the default bounded window, and every
    chunk, the shorter last one included, starts on the whole signal's STFT frames (whole
    numbers of hops apart), so every output sample equals the whole-signal output to float
    rounding (measured 6e-8; 1e-5 allowed)."""
    from sfsep.inference import demix, fade_plan

    rate = 4000
    model = build_classic({"sample_rate": rate})
    segment, overlap = model.run_contract_hint()
    spectral, hop = model.spectral, model.spectral.hop
    margin = round(overlap * segment) // 4  # fade's zero-weight quarter of the overlap
    assert 0 < model.repet_window and margin >= spectral.n_fft + (model.repet_window + model.harmonic_kernel // 2) * hop
    assert segment % hop == 0 and (segment - round(overlap * segment)) % hop == 0
    _, mix = stereo_mix(rate, 3.3 * segment / rate)
    length = mix.shape[-1] - (mix.shape[-1] - segment) % hop - hop // 2
    mix = mix[:, :length]
    starts = fade_plan(length, segment, overlap, on_grid=True)
    assert len(starts) >= 4 and all(start % hop == 0 for start in starts) and length - starts[-1] < segment
    whole = model(mix[None])[0]
    chunked = demix(model, mix, chunk_size=segment, overlap=overlap, style="fade", any_length=True)
    error = (chunked - whole).abs().max().item()
    print(f"starts {starts}: max error {error:.1e}")
    assert error < 1e-5


def test_nmf_chunked_run_stays_close_to_the_whole_signal():
    """NMF's hint lays chunks on its factorisation blocks (here 3-s blocks to keep the test
    short: 9-s chunks, 3-s overlap), the shorter last one too (any_length): every weighted
    sample comes from a block that the whole-signal run factorises too; only the chunk's outer
    frames see zeros instead of neighbouring audio, so the result stays close (measured 24 dB;
    15 dB required)."""
    from sfsep.inference import demix, fade_plan

    rate = 4000
    model = build_nmf({"sample_rate": rate, "nmf_block_seconds": 3.0})
    segment, overlap = model.run_contract_hint()
    block = model.block_frames * model.spectral.hop
    assert segment % block == 0 and segment > block and round(overlap * segment) == block
    _, mix = stereo_mix(rate, 3.3 * segment / rate)
    starts = fade_plan(mix.shape[-1], segment, overlap, on_grid=True)
    assert all(start % block == 0 for start in starts) and len(starts) >= 4
    whole = model(mix[None])[0]
    chunked = demix(model, mix, chunk_size=segment, overlap=overlap, style="fade", any_length=True)
    closeness = _sdr_db(whole, chunked)
    print(f"NMF chunked vs whole: {closeness:.1f} dB")
    assert closeness > 15.0
    assert (chunked.sum(dim=0) - mix).abs().max().item() < 1e-4


def test_bounded_window_chunked_is_not_worse_than_the_whole_input_search():
    """Quality regression: on 100 s of the synthetic mix at 8 kHz, the default (bounded
    window, run chunk by chunk per the hint) is not worse than the old default (every frame
    compared with every other, whole signal at once) by more than 0.5 dB of mean SDR, nor
    1 dB on any stem. (bench/bench_classic.py --quality compares them with BSSEval on
    longer songs.)"""
    from sfsep.inference import demix

    rate = 8000
    sources, mix = stereo_mix(rate, 100.0)
    old = build_classic({"sample_rate": rate, "repet_window_seconds": 0.0})(mix[None])[0]
    model = build_classic({"sample_rate": rate})
    segment, overlap = model.run_contract_hint()
    assert mix.shape[-1] > segment
    new = demix(model, mix, chunk_size=segment, overlap=overlap, style="fade", any_length=True)
    old_sdr, new_sdr = sdr_table(sources, old), sdr_table(sources, new)
    report = ", ".join(f"{stem} {a:.2f} -> {b:.2f}" for stem, a, b in zip(STEMS, old_sdr, new_sdr))
    print(f"SDR old (whole input) -> new (bounded, chunked): {report}")
    assert sum(new_sdr) / len(STEMS) >= sum(old_sdr) / len(STEMS) - 0.5, report
    assert all(b >= a - 1.0 for a, b in zip(old_sdr, new_sdr)), report


# ----------------------------------------------------------------------------- memory

_LONG_RUN = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    from sfsep.models import build_model
    seconds, sample_rate, block_megabytes = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    window_seconds = float(sys.argv[4])
    mix = 0.1 * torch.randn(1, 1, int(seconds * sample_rate), generator=torch.Generator().manual_seed(4))
    model = build_model("classic", {"sample_rate": sample_rate, "block_megabytes": block_megabytes,
                                    "repet_window_seconds": window_seconds})
    def status_kb(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))
    # ru_maxrss is a lifetime peak (imports can exceed the run); reset the kernel's peak counter
    # (VmHWM) so that what is read afterwards is the peak of the run alone.
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = status_kb("VmRSS")
    start = time.perf_counter()
    stems = model(mix)
    elapsed = time.perf_counter() - start
    after = status_kb("VmHWM")
    frames = mix.shape[-1] // model.spectral.hop + 1
    print(frames, (after - before) * 1024, elapsed, float((stems.sum(dim=1) - mix).abs().max()))
    """
)


def _long_run(
    seconds: float, sample_rate: int, block_megabytes: float, window_seconds: float
) -> tuple[float, float, float, float]:
    result = subprocess.run(
        [sys.executable, "-c", _LONG_RUN, str(seconds), str(sample_rate), str(block_megabytes), str(window_seconds)],
        capture_output=True, text=True, timeout=240, cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr
    frames, grown_bytes, elapsed, sum_error = (float(value) for value in result.stdout.split())
    print(f"{frames:.0f} frames, block_megabytes={block_megabytes}, window {window_seconds} s: peak RSS grew "
          f"{grown_bytes / 2**20:.0f} MB in {elapsed:.1f} s")
    return frames, grown_bytes, elapsed, sum_error


def test_long_input_stays_within_a_memory_bound():
    """150 s at 4 kHz is ~13 000 frames (the hop is ~11.6 ms at every rate): a full
    frame-similarity matrix takes ~680 MB. Comparing every frame with every other
    (repet_window_seconds = 0), the default blocks keep the run far below that; with blocks
    large enough to hold the whole matrix the same measurement sees it (so the bound is a
    real check). Ten minutes would be 52 000 frames, 10.7 GB in full. The default bounded
    window never forms such a matrix."""
    seconds, sample_rate = 150.0, 4000
    frames, grown_bytes, _, sum_error = _long_run(seconds, sample_rate, 64.0, 0.0)
    full_matrix = frames**2 * 4
    assert full_matrix > 600 * 2**20
    assert grown_bytes < 200 * 2**20
    assert sum_error < 1e-4
    _, unblocked_grown_bytes, _, _ = _long_run(seconds, sample_rate, 1e5, 0.0)
    assert unblocked_grown_bytes > 0.8 * full_matrix
    default_window = build_classic({"sample_rate": sample_rate}).settings["repet_window_seconds"]
    _, windowed_grown_bytes, _, windowed_sum_error = _long_run(seconds, sample_rate, 64.0, default_window)
    assert windowed_grown_bytes < 200 * 2**20
    assert windowed_sum_error < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_a_signal_shorter_than_a_chunk_runs_unpadded(family):
    """A classical separator takes any length, so a track shorter than one chunk of its run-time
    contract (66 s for classic) runs as it is through `separate`: the same as the module on the
    whole signal, not a 66-s zero-padded chunk (which costs a whole chunk's work and changes the
    separation near the end of the signal)."""
    from sfsep.pipeline import separate

    rate = 16000
    _, mix = _cached_mix(rate)
    mix = mix[:, : 5 * rate + 123]
    direct = build_model(family, {"sample_rate": rate})(mix[None])[0]
    result = separate(mix, rate, family)
    assert result.strategy == "none"
    for index, name in enumerate(STEMS):
        assert torch.allclose(result.stems[name], direct[index], atol=1e-6), name
