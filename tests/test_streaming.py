"""Streaming: a file separated block by block gives the whole-signal result.

Three levels, each against an independent whole-signal computation:
- the stateful resampler against `resample` / `apply_kernel` on the whole signal;
- the chunk executor fed in blocks against the same executor fed the whole signal (whose own
  correctness the parity tests check through `demix`);
- `separate_file` with small blocks against a whole-signal pipeline composed here from the
  public whole-signal functions (resample, normalize_mixture, demix, energy_gate), for every
  chunk style, resampler, mono and stereo, and awkward lengths.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from parity import load_fixture
from sfsep.inference import RunContract, normalize_mixture, run_chunks, run_whole
from sfsep.models import build_model
from sfsep.pipeline import OutputOptions, Separator, Settings, separate, separate_file
from sfsep.postprocess import energy_gate
from sfsep.registry import get_spec, spec_from_config
from sfsep.resample import noisy_kernel, resample
from sfsep.resample.kernel import cached_conventional_kernel, kernel_geometry
from sfsep.resample.stream import StreamResampler

TOLERANCE = 1e-5


def _pieces(signal: torch.Tensor, size: int):
    return [signal[..., first : first + size] for first in range(0, signal.shape[-1], size)]


# --------------------------------------------------------------------------------------------
# The resampler


@pytest.mark.parametrize("rates", [(8000, 44100), (44100, 8000), (16000, 44100), (44100, 48000), (11025, 22050)])
@pytest.mark.parametrize("kind", ["conventional", "noisy", "arbitrary"])
def test_stream_resampler_equals_whole_signal(rates, kind):
    input_rate, output_rate = rates
    generator = torch.Generator().manual_seed(3)
    geometry = kernel_geometry(input_rate, output_rate)
    if kind == "conventional":
        kernel = cached_conventional_kernel(input_rate, output_rate, torch.float32, torch.device("cpu"))
    elif kind == "noisy":
        kernel = noisy_kernel(input_rate, output_rate, generator=generator)
    else:  # any (phases, taps) kernel, e.g. a learned one
        kernel = torch.randn(geometry.phases, geometry.taps, generator=generator) / geometry.taps
    for length in (1, 7, 997, 12345):
        signal = torch.randn(2, length, generator=generator)
        whole = resample(signal, input_rate, output_rate, "trainable", kernel=kernel)
        assert whole.shape[-1] == geometry.output_length(length)
        for size in ((1, 13, 4096, length) if length < 1000 else (13, 4096, length)):
            stream = StreamResampler(kernel, input_rate, output_rate)
            parts = [stream.push(piece) for piece in _pieces(signal, size)] + [stream.finish()]
            streamed = torch.cat(parts, dim=-1)
            assert streamed.shape == whole.shape, (length, size)
            assert (streamed - whole).abs().max().item() < 1e-6, (length, size)


def test_stream_resampler_refuses_a_kernel_of_the_wrong_shape():
    with pytest.raises(ValueError, match="must be shaped"):
        StreamResampler(torch.zeros(3, 3), 8000, 44100)


# --------------------------------------------------------------------------------------------
# The chunk executor


class _Conv(torch.nn.Module):
    """A local model (receptive field 8 samples each side): 3 stems of 2 channels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(2, 6, 17, padding=8)

    def forward(self, mix):
        batch, _, length = mix.shape
        return self.conv(mix).view(batch, 3, 2, length)


CONTRACTS = [
    RunContract("msst", 1000, num_overlap=4, batch_size=3),
    RunContract("msst", 1000, num_overlap=2),
    RunContract("msst_demucs", 1000, num_overlap=4, batch_size=2),
    RunContract("demucs", 1000, overlap=0.25, batch_size=2),
    RunContract("demucs", 1000, overlap=0.25, padded_length=1200, batch_size=3),
    RunContract("fade", 1000, overlap=0.25, batch_size=2),
    RunContract("bsrnn", 1000, hop=300, edge_padding=200, batch_size=2),
    RunContract("bsrnn", 1000, hop=300, edge_padding=200, synthesis_window="hann"),
]


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: f"{c.style}-{c.batch_size}")
def test_chunk_executor_does_not_depend_on_the_blocks(contract):
    model = _Conv().eval()
    generator = torch.Generator().manual_seed(1)
    for length in (1, 999, 1000, 1001, 7777):  # shorter than a chunk, one chunk, odd lengths
        signal = torch.randn(2, length, generator=generator)
        whole = run_whole(model, signal, contract)
        assert whole.shape == (3, 2, length)
        for size in (1, 13, 400, 5000):
            parts = list(run_chunks(model, _pieces(signal, size), length, contract, device=torch.device("cpu")))
            streamed = torch.cat(parts, dim=-1)
            assert (streamed - whole).abs().max().item() < 1e-6, (length, size)


def test_chunk_executor_holds_a_bounded_stretch_of_the_signal():
    """Memory does not grow with the length: the executor never holds more than a few chunks."""
    model = _Conv().eval()
    contract = RunContract("msst", 1000, num_overlap=4, batch_size=2)
    held = []

    def blocks(length):
        for first in range(0, length, 256):
            held.append(first)
            yield torch.zeros(2, min(256, length - first))

    emitted = 0
    pulled_ahead = 0
    for block in run_chunks(model, blocks(200_000), 200_000, contract, device=torch.device("cpu")):
        emitted += block.shape[-1]
        pulled_ahead = max(pulled_ahead, held[-1] + 256 - emitted)
    assert emitted == 200_000
    assert pulled_ahead < 4 * 1000  # a batch of chunks plus the reflected border, not the track


# --------------------------------------------------------------------------------------------
# Files, through separate_file, against a whole-signal pipeline composed of public functions


def _scnet():
    fixture = load_fixture("scnet_tiny")
    spec = spec_from_config(fixture["config"], name="scnet_tiny", base=get_spec("scnet"))
    return spec, fixture


def _separator(name: str) -> Separator:
    if name == "scnet_msst":  # style msst, with MSST's whole-track normalization
        spec, fixture = _scnet()
        assert spec.chunk_style == "msst" and spec.normalize == "msst"
    elif name == "htdemucs_msst":  # style msst_demucs (an MSST-configured HT-Demucs, at 4096 Hz)
        fixture = load_fixture("htdemucs_tiny")
        spec = spec_from_config(fixture["config"], name="htdemucs_tiny")
        assert spec.chunk_style == "msst_demucs"
    elif name == "htdemucs_package":  # style demucs, the package's own 3/10 s segment, demucs normalization
        fixture = load_fixture("htdemucs_demucsrepo_tiny")
        config = {key: value for key, value in fixture["config"].items() if value is not None}
        spec = replace(get_spec("htdemucs"), config=config)
    elif name == "conv_tasnet":  # style demucs from models.toml's numbers, demucs v2 normalization
        fixture = load_fixture("conv_tasnet_tiny")
        spec = replace(get_spec("conv_tasnet"), config=fixture["config"], chunk_size=8000)
    elif name == "bsrnn":  # BSRNN's reference chunking, residual stem
        fixture = load_fixture("bsrnn_tiny")
        config = dict(fixture["config"], _audio_params={"win_size": 1408 / 44100, "hop_size": 300 / 44100,
                                                        "batch_size": 3})
        spec = replace(get_spec("bsrnn"), config=config)
    else:
        raise AssertionError(name)
    module = build_model(spec.family, spec.config_copy())
    module.load_state_dict(fixture["state_dict"], strict=True)
    return Separator(spec, device="cpu", modules=[module])


def _reference(separator: Separator, mix: torch.Tensor, rate: int, settings: Settings) -> dict[str, torch.Tensor]:
    """The flow on a whole signal, composed of the whole-signal functions: resample up, normalize,
    chunk (demix's executor on one block), shifts, denormalize, residual, resample down, gate."""
    from sfsep.pipeline import _pick_strategy

    spec = separator.spec
    model_rate = spec.model_rate(rate)
    strategy, _ = _pick_strategy(settings.resampler, rate, model_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    stereo = mix.expand(2, -1) if mix.shape[0] == 1 else mix
    up = resample(stereo, rate, model_rate, strategy, sigma=settings.sigma, generator=generator)
    contract = separator.contract(model_rate, settings)
    model_input, restore = (normalize_mixture(up, contract.normalize) if contract.normalize
                            else (up, lambda stems: stems))
    modules = separator.modules(model_rate)

    def run(signal):
        return run_whole(modules[0], signal, contract)

    if settings.shifts:
        from sfsep.models.demucs import apply_shifts

        stems = apply_shifts(run, model_input, settings.shifts, model_rate // 2, generator)
    else:
        stems = run(model_input)
    stems = restore(stems)
    names = list(spec.stems)
    if contract.residual_stem:
        stems = torch.cat([stems, (up - stems.sum(0))[None]])
        names.append(contract.residual_stem)
    back = resample(stems, model_rate, rate, "conventional")[..., : mix.shape[-1]]
    back = torch.nn.functional.pad(back, (0, mix.shape[-1] - back.shape[-1]))
    result = {}
    for name, stem in zip(names, back):
        if settings.gate_db is not None:
            stem = energy_gate(stem, stereo, rate, settings.gate_db)
        result[name] = stem.mean(0, keepdim=True) if mix.shape[0] == 1 else stem
    return result


def _write(path, mix: torch.Tensor, rate: int):
    sf.write(path, mix.T.numpy(), rate, subtype="FLOAT")


def _read_stems(result) -> dict[str, torch.Tensor]:
    return {p.stem: torch.from_numpy(np.ascontiguousarray(sf.read(p, dtype="float32", always_2d=True)[0].T))
            for p in result.outputs}


def _signal(rate: int, seconds: float, channels: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    length = int(rate * seconds)
    t = torch.arange(length) / rate
    tone = 0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.1 * torch.sin(2 * torch.pi * 1234.5 * t)
    drift = 0.2 * t / max(seconds, 1e-9)  # a slow DC drift: block means differ from the track's
    return (tone + drift + 0.05 * torch.randn(channels, length, generator=generator)).float()


CASES = [
    # (model, input rate, seconds, channels, resampler, extra settings)
    ("scnet_msst", 8000, 0.83, 2, "noisy", {}),
    ("scnet_msst", 8000, 0.05, 1, "conventional", {}),  # shorter than one chunk, mono
    ("scnet_msst", 44100, 0.6, 2, "auto", {"gate_db": -25.0}),  # no resampling, gate
    ("scnet_msst", 8000, 1.1, 2, "noisy", {"overlap": 0.25}),  # --overlap: sfsep's fade style
    ("htdemucs_msst", 8000, 3.3, 1, "auto", {}),  # 4096 Hz model: downsampled in, upsampled out
    ("htdemucs_package", 8000, 0.71, 2, "noisy", {"shifts": 2}),
    ("htdemucs_package", 44100, 0.77, 1, "auto", {}),
    ("conv_tasnet", 16000, 0.93, 2, "conventional", {}),
    ("bsrnn", 8000, 0.61, 2, "noisy", {"gate_db": -30.0}),  # residual stem and gate together
    ("bsrnn", 44100, 0.03, 1, "auto", {}),  # shorter than one chunk
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}ch-{c[4]}")
def test_separate_file_streamed_equals_whole_signal(case, tmp_path):
    name, rate, seconds, channels, resampler, extra = case
    separator = _separator(name)
    mix = _signal(rate, seconds, channels, seed=7)
    path = tmp_path / "in.wav"
    _write(path, mix, rate)
    settings = Settings(resampler=resampler, seed=11, **extra)
    output = OutputOptions(out=tmp_path / "out", bits=32, clip="none")
    result = separate_file(path, separator, output=output, settings=settings, block_frames=1009)
    streamed = _read_stems(result)
    expected = _reference(separator, mix, rate, settings)
    assert list(streamed) == list(expected) == separator.stem_names
    for stem, reference in expected.items():
        assert streamed[stem].shape == reference.shape == (channels, mix.shape[-1])
        error = (streamed[stem] - reference).abs().max().item()
        assert error <= TOLERANCE, (stem, error)


@pytest.mark.parametrize("resampler", ["noise", "trainable"])
@pytest.mark.parametrize("channels", [1, 2])
def test_random_and_learned_resamplers_stream_like_the_whole_signal(resampler, channels, tmp_path, monkeypatch):
    """"noise" draws its noise block by block and "trainable" reads a learned kernel: the file
    streamed in small blocks equals `separate` on the whole tensor with the same seed."""
    from sfsep.resample.trainable import TrainableKernel, kernel_path, save_kernel

    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))
    separator = _separator("scnet_msst")
    rate = 8000
    if resampler == "trainable":
        torch.manual_seed(0)
        save_kernel(TrainableKernel(), kernel_path(separator.name, rate))
    mix = _signal(rate, 0.61, channels, seed=5)
    path = tmp_path / "in.wav"
    _write(path, mix, rate)
    settings = Settings(resampler=resampler, seed=3)
    output = OutputOptions(out=tmp_path / "out", bits=32, clip="none")
    streamed = _read_stems(separate_file(path, separator, output=output, settings=settings, block_frames=777))
    whole = separate(mix, rate, separator, resampler, settings=settings)
    assert whole.strategy == resampler
    for stem, reference in whole.stems.items():
        assert (streamed[stem] - reference).abs().max().item() <= TOLERANCE


def test_noise_resampler_is_at_the_requested_snr():
    """The block-drawn noise is scaled on the whole upsampled signal: exactly --snr dB below it."""
    from sfsep.pipeline import Mixture, _Flow

    separator = _separator("scnet_msst")
    mix = _signal(8000, 0.8, 2, seed=2)
    settings = Settings(resampler="noise", seed=1, snr_db=17.0)
    flow = _Flow(separator, Mixture.of_tensor(mix, 8000, block=300), settings)
    noisy = torch.cat(list(flow.model_rate_blocks()), dim=-1)
    clean = resample(mix, 8000, flow.model_rate, "conventional")
    snr = 10 * torch.log10(clean.double().pow(2).sum() / (noisy - clean).double().pow(2).sum())
    assert abs(snr.item() - 17.0) < 1e-3


def test_progress_counts_the_whole_files_chunks_from_the_start(tmp_path):
    separator = _separator("htdemucs_package")
    mix = _signal(8000, 0.9, 2, seed=1)
    path = tmp_path / "in.wav"
    _write(path, mix, 8000)
    calls = []
    separate_file(path, separator, output=OutputOptions(out=tmp_path / "out"), settings=Settings(seed=0, shifts=2),
                  progress=lambda done, total: calls.append((done, total)), block_frames=500)
    total = calls[0][1]
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert all(t == total for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    # two shifted runs over 0.9 s at 44.1 kHz in 13230-sample chunks every 9922 samples
    assert total > 2 * (0.9 * 44100 // 9922)


def test_ctrl_c_during_a_streamed_run_leaves_the_previous_stems_and_no_parts(tmp_path):
    """SIGINT to `sfsep` while it writes staged stems: exit 130, the 'interrupted' line, no
    .part file, and the stems of an earlier run (which --overwrite would replace) intact."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    rate = 16000
    song = tmp_path / "song.wav"
    _write(song, _signal(rate, 240.0, 2, seed=4), rate)
    script = Path(sys.executable).with_name("sfsep")
    out = tmp_path / "out"
    folder = out / "classic" / "song"
    folder.mkdir(parents=True)
    before = {}
    for name in ("vocals", "drums", "bass", "other"):
        sf.write(folder / f"{name}.wav", np.full((100, 2), 0.25, dtype=np.float32), rate)
        before[name] = (folder / f"{name}.wav").read_bytes()
    env = {**os.environ, "SFSEP_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([str(script), str(song), "--model", "classic", "--out", str(out), "--overwrite"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list(folder.glob(".*.part.*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before its stems were staged"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not list(folder.glob(".*part*")), list(folder.iterdir())
    assert {name: (folder / f"{name}.wav").read_bytes() for name in before} == before


def test_a_paused_stream_leaves_the_callers_autograd_alone():
    """The executor is a generator: while it waits at a block, the caller is not in inference
    mode (a mode entered around its yield leaked into the caller and broke later training)."""
    stream = run_chunks(_Conv().eval(), [torch.randn(2, 5000)], 5000, CONTRACTS[0], device=torch.device("cpu"))
    first = next(stream)
    assert not torch.is_inference_mode_enabled()
    assert not first.is_inference()
    weight = torch.ones(1, requires_grad=True)
    assert (weight * 2).requires_grad
    stream.close()
