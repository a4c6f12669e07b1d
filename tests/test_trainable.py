"""Trainable-kernel resampling: the MLP kernel, its training loop, its files, the pipeline hook.

The separator here is a tiny differentiable model whose behaviour is known: it was "trained" at
16 kHz and only trusts its input when the band above 2.4 kHz carries energy. Its first stem is
the mixture times a gain g = rho / (rho + FLOOR), rho the fraction of the input's energy above
2.4 kHz, its second stem the rest. A 4 kHz input upsampled with the conventional kernel has
almost nothing up there (rho ~ 1e-5), so g ~ 0 and the first stem is lost; a kernel that leaves
some energy above 2 kHz raises g. The references ask for the whole mixture in the first stem,
so training the kernel must raise g, and the validation loss must fall.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from sfsep.errors import DatasetError, ResampleError, UsageError
from sfsep.inference import RunContract
from sfsep.evaluate.musdb import list_tracks
from sfsep.pipeline import Separator, separate
from sfsep.registry import ModelSpec
from sfsep.resample import conventional_kernel, kernel_time_offsets, resample
from sfsep.resample.trainable import (
    TrainableKernel,
    fit_error,
    fit_windowed_sinc,
    kernel_path,
    load_kernel_file,
    save_kernel,
    windowed_sinc,
)
from sfsep.training import (
    MusdbSegments,
    TrainSettings,
    kernel_loss,
    separate_function,
    train_kernel,
    train_kernel_for_model,
)

INPUT_RATE = 4000
TRAINED_RATE = 16000
FLOOR = 1e-3
MODEL_LENGTH = 4096
LOW_LENGTH = MODEL_LENGTH * INPUT_RATE // TRAINED_RATE


class HighBandGate(torch.nn.Module):
    """(B, C, T) at 16 kHz -> (B, 2, C, T): [g * mix, (1 - g) * mix], g from the energy above 2.4 kHz."""

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        low_band = resample(resample(mix, TRAINED_RATE, 4800), 4800, TRAINED_RATE)[..., : mix.shape[-1]]
        high = (mix - low_band).square().mean(dim=(-2, -1))
        ratio = high / mix.square().mean(dim=(-2, -1)).clamp_min(1e-12)
        gain = (ratio / (ratio + FLOOR))[:, None, None]
        return torch.stack([gain * mix, (1 - gain) * mix], dim=1)


def tiny_spec(name: str = "tiny-gate") -> ModelSpec:
    return ModelSpec(name=name, family="classic", stems=("vocals", "other"), trained_rate=TRAINED_RATE,
                     chunk_size=MODEL_LENGTH)


def batch_of_noise(generator: torch.Generator, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-rate white-noise mixtures; references: everything in the first stem."""
    mix = 0.3 * torch.randn(batch, 2, LOW_LENGTH, generator=generator)
    return mix, torch.stack([mix, torch.zeros_like(mix)], dim=1)


@pytest.fixture(scope="module")
def fitted() -> TrainableKernel:
    kernel = TrainableKernel()
    fit_windowed_sinc(kernel, steps=1500, seed=0)
    return kernel


def separate_fn():
    return separate_function([HighBandGate()], predicted=("vocals", "other"), wanted=("vocals", "other"))


# --------------------------------------------------------------------------------------------


def test_initial_fit_approximates_the_windowed_sinc(fitted):
    """After 1500 fit steps (3000 by default) k(t) is within 2e-2 (max) and 2e-3 (rms) of
    sinc(t) kaiser(t), whose peak is 1; an unfitted MLP is nowhere near (error ~1)."""
    error = fit_error(fitted)
    assert error["max_abs"] < 2e-2 and error["rms"] < 2e-3, error
    assert fit_error(TrainableKernel())["max_abs"] > 0.3
    # The kernel matrix is the function on the conventional grid, times the gain.
    matrix = fitted.matrix(INPUT_RATE, TRAINED_RATE)
    assert matrix.shape == conventional_kernel(INPUT_RATE, TRAINED_RATE).shape
    offsets = kernel_time_offsets(INPUT_RATE, TRAINED_RATE, dtype=torch.float32)
    assert (matrix[offsets.abs() >= 24] == 0).all()  # clamped taps carry no weight, as conventionally
    difference = (matrix - conventional_kernel(INPUT_RATE, TRAINED_RATE)).abs().max()
    assert difference < 2e-2
    # Row sums (DC gain) stay close to 1.
    assert (matrix.sum(1) - 1).abs().max() < 2e-2
    # And the resampled signal is close to the conventional one.
    signal = torch.randn(2, 2000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        learned = resample(signal, INPUT_RATE, TRAINED_RATE, "trainable", kernel=fitted)
    reference = resample(signal, INPUT_RATE, TRAINED_RATE)
    relative = (learned - reference).norm() / reference.norm()
    assert relative < 2e-2, relative


def test_windowed_sinc_is_the_conventional_kernel_function():
    from sfsep.resample import kernel_geometry

    offsets = kernel_time_offsets(INPUT_RATE, TRAINED_RATE)
    gain = kernel_geometry(INPUT_RATE, TRAINED_RATE).gain
    expected = conventional_kernel(INPUT_RATE, TRAINED_RATE, dtype=torch.float64)
    assert torch.allclose(gain * windowed_sinc(offsets), expected, rtol=0, atol=1e-15)


def test_gradients_reach_theta_and_match_finite_differences(fitted):
    kernel = TrainableKernel()
    kernel.load_state_dict(fitted.state_dict())
    kernel = kernel.double()
    run = separate_fn()
    mix, references = batch_of_noise(torch.Generator().manual_seed(1), batch=2)
    batch = (mix.double(), references.double())

    def loss() -> torch.Tensor:
        return kernel_loss(kernel, run, batch, INPUT_RATE, TRAINED_RATE, MODEL_LENGTH)[0]

    kernel.zero_grad()
    loss().backward()
    parameters = dict(kernel.named_parameters())
    checked = 0
    for name, index in [("mlp.0.weight", (3, 1)), ("mlp.0.bias", (7,)), ("mlp.3.weight", (5, 11)),
                        ("mlp.6.weight", (0, 4)), ("mlp.6.bias", (0,))]:
        parameter = parameters[name]
        analytic = float(parameter.grad[index])
        step = 1e-6
        with torch.no_grad():
            original = float(parameter[index])
            parameter[index] = original + step
            up = float(loss())
            parameter[index] = original - step
            down = float(loss())
            parameter[index] = original
        numeric = (up - down) / (2 * step)
        assert abs(analytic - numeric) <= 1e-4 * max(1e-3, abs(numeric)) + 1e-9, (name, analytic, numeric)
        checked += analytic != 0
    assert checked >= 4  # the gradient really reaches the parameters
    # The separator's parameters stay frozen, nothing else needs gradients.
    assert all(p.grad is not None for p in kernel.parameters())


def test_training_lowers_the_validation_loss(fitted):
    kernel = TrainableKernel()
    kernel.load_state_dict(fitted.state_dict())
    generator = torch.Generator().manual_seed(5)
    valid = [batch_of_noise(generator) for _ in range(2)]
    settings = TrainSettings(rate=INPUT_RATE, epochs=6, steps_per_epoch=4, patience=10)
    events = []
    result = train_kernel(separate_fn(), batch_of_noise, valid, trained_rate=TRAINED_RATE,
                          model_length=MODEL_LENGTH, settings=settings, kernel=kernel, progress=events.append)
    curve = result.valid_curve
    assert len(curve) == 7 and len(result.train_curve) == 6
    assert min(curve[1:]) < 0.8 * curve[0], curve
    assert result.best_epoch > 0 and curve[result.best_epoch] == min(curve)
    assert [e.phase for e in events].count("step") == 24 and events[-1].phase == "done"
    # The learned kernel now leaves energy above 2 kHz, which the gate model needed.
    signal = valid[0][0][:1]
    with torch.no_grad():
        learned = resample(signal, INPUT_RATE, TRAINED_RATE, "trainable", kernel=result.kernel)
        gate = HighBandGate()
        gain_learned = gate(learned)[0, 0].norm() / learned.norm()
        conventional = resample(signal, INPUT_RATE, TRAINED_RATE)
        gain_conventional = gate(conventional)[0, 0].norm() / conventional.norm()
    assert gain_learned > gain_conventional + 0.1, (gain_learned, gain_conventional)


def test_early_stopping_after_patience_epochs(fitted):
    """With a learning rate of ~0 nothing improves: training stops after `patience` epochs."""
    kernel = TrainableKernel()
    kernel.load_state_dict(fitted.state_dict())
    generator = torch.Generator().manual_seed(5)
    valid = [batch_of_noise(generator, batch=2)]
    settings = TrainSettings(rate=INPUT_RATE, epochs=50, steps_per_epoch=1, patience=3, learning_rate=1e-30,
                             batch_size=2)
    result = train_kernel(separate_fn(), lambda g: batch_of_noise(g, 2), valid, trained_rate=TRAINED_RATE,
                          model_length=MODEL_LENGTH, settings=settings, kernel=kernel)
    assert result.stopped_early and len(result.train_curve) == 3 and result.best_epoch == 0


def test_saved_kernel_reloads_and_reproduces_its_output(fitted, tmp_path):
    path = save_kernel(fitted, tmp_path / "k.pt", model="m", input_rate=INPUT_RATE, valid_curve=[1.0, 0.5])
    loaded, record = load_kernel_file(path)
    assert record["valid_curve"] == [1.0, 0.5] and record["kernel_settings"]["hidden"] == 32
    signal = torch.randn(2, 3000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = resample(signal, INPUT_RATE, TRAINED_RATE, "trainable", kernel=fitted)
        after = resample(signal, INPUT_RATE, TRAINED_RATE, "trainable", kernel=loaded)
    assert torch.equal(before, after)
    (tmp_path / "bad.pt").write_bytes(b"not a kernel")
    with pytest.raises(ResampleError, match="bad.pt"):
        load_kernel_file(tmp_path / "bad.pt")


def test_trainable_without_kernel_gives_the_train_command(monkeypatch, tmp_path):
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))
    separator = Separator(tiny_spec(), device="cpu", modules=[HighBandGate()])
    audio = torch.randn(2, 2000)
    with pytest.raises(ResampleError, match="sfsep train-kernel --model tiny-gate --rate 4000"):
        separate(audio, INPUT_RATE, separator, "trainable")
    with pytest.raises(ResampleError, match="sfsep train-kernel"):
        resample(audio, INPUT_RATE, TRAINED_RATE, "trainable")


def _write_track(folder, seconds: float, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    vocals = 0.2 * rng.standard_normal((int(44100 * seconds), 2)).astype(np.float32)
    zeros = np.zeros_like(vocals)
    for name, data in [("mixture", vocals), ("vocals", vocals), ("drums", zeros), ("bass", zeros),
                       ("other", zeros)]:
        sf.write(folder / f"{name}.wav", data, 44100, subtype="FLOAT")


def test_train_kernel_on_a_musdb_folder_saves_and_the_pipeline_uses_it(monkeypatch, tmp_path, fitted):
    """The whole command path: MUSDB-layout folder (train and valid splits), training, the file
    in <cache>/kernels/<model>/<rate>.pt, and `--resampler trainable` in the pipeline."""
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "musdb"
    _write_track(root / "train" / "A - One", 1.0, 1)
    _write_track(root / "train" / "B - Two", 1.0, 2)
    _write_track(root / "train" / "Actions - One Minute Smile", 1.0, 3)  # a validation track
    separator = Separator(tiny_spec(), device="cpu", modules=[HighBandGate()])
    settings = TrainSettings(rate=INPUT_RATE, epochs=2, steps_per_epoch=2, valid_segments=2, fit_steps=300)
    path, result = train_kernel_for_model(separator, root, settings)
    assert path == kernel_path("tiny-gate", INPUT_RATE) == tmp_path / "cache" / "kernels" / "tiny-gate" / "4000.pt"
    _, record = load_kernel_file(path)
    assert record["valid_curve"] == result.valid_curve and len(record["valid_curve"]) == 3
    assert record["train_settings"]["batch_size"] == 4 and record["stems"] == ["vocals", "other"]
    assert record["trained_rate"] == TRAINED_RATE and record["fit_error"]["rms"] > 0
    audio = torch.randn(2, 3000, generator=torch.Generator().manual_seed(4))
    out = separate(audio, INPUT_RATE, separator, "trainable")
    assert out.strategy == "trainable" and out.stems["vocals"].shape == (2, 3000)
    # The segments really come from the wav files, brought down to the input rate.
    segments = MusdbSegments(list_tracks(root, "valid"), INPUT_RATE, LOW_LENGTH, ["vocals", "other"])
    mix, stems = segments.fixed_batches(1, 4)[0]
    assert mix.shape == (1, 2, LOW_LENGTH) and stems.shape == (1, 2, 2, LOW_LENGTH)
    assert torch.allclose(mix, stems[:, 0], atol=1e-6) and stems[:, 1].abs().max() == 0


def test_segment_length_follows_the_loaded_models_contract(tmp_path):
    """The segment and its bound come from the loaded model (a demucs package says its own),
    not from models.toml: here the spec's chunk_size (a fallback) is longer than the model takes."""
    contract = RunContract(style="demucs", segment=MODEL_LENGTH // 2, overlap=0.25, padded_length=MODEL_LENGTH)
    spec = ModelSpec(name="tiny-gate", family="classic", stems=("vocals", "other"), trained_rate=TRAINED_RATE,
                     chunk_size=4 * MODEL_LENGTH, chunk_style="demucs")
    separator = Separator(spec, device="cpu", modules=[HighBandGate()], contract=contract)
    too_long = TrainSettings(rate=INPUT_RATE, segment_seconds=(MODEL_LENGTH + 1) / TRAINED_RATE)
    with pytest.raises(UsageError, match=f"--segment-seconds: model 'tiny-gate' takes at most "
                                         f"{MODEL_LENGTH / TRAINED_RATE:.2f} s"):
        train_kernel_for_model(separator, tmp_path, too_long)
    # The contract's segment (not chunk_size) is the default, and the full valid length is allowed:
    # both get past the check to the (empty) dataset folder.
    for settings in (TrainSettings(rate=INPUT_RATE), TrainSettings(rate=INPUT_RATE,
                                                                   segment_seconds=MODEL_LENGTH / TRAINED_RATE)):
        with pytest.raises(DatasetError):
            train_kernel_for_model(separator, tmp_path, settings)


def _tiny_scnet(shared, tmp_path):
    """The tiny SCNet parity fixture (44.1 kHz) as a user's checkpoint and MSST YAML config."""
    import yaml

    data = torch.load(shared / "parity" / "scnet_tiny.pt", weights_only=True)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data["config"], sort_keys=False))
    torch.save({"state_dict": data["state_dict"]}, tmp_path / "tiny.ckpt")
    return tmp_path / "tiny.ckpt", tmp_path / "tiny.yaml"


def test_cli_train_kernel_then_resampler_trainable(run_cli, shared, tmp_path, monkeypatch, wav_file):
    """A real architecture through the commands: `sfsep train-kernel` (one tiny epoch), then
    `--resampler trainable` finds the kernel; another rate gives the clear error."""
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))
    ckpt, config = _tiny_scnet(shared, tmp_path)
    root = tmp_path / "musdb"
    _write_track(root / "train" / "A - One", 0.5, 1)
    _write_track(root / "train" / "Actions - One Minute Smile", 0.5, 3)
    model = ("--model", "scnet", "--weights", ckpt, "--config", config)
    song = wav_file("phone.wav", rate=8000, seconds=0.3)
    missing = run_cli(song, *model, "--out", tmp_path / "out", "--resampler", "trainable")
    assert missing.code == 1 and "sfsep train-kernel --model scnet --rate 8000" in missing.err, missing
    trained = run_cli("train-kernel", *model, "--rate", "8000", "--musdb", root, "--epochs", "1",
                      "--steps-per-epoch", "1", "--batch-size", "1", "--valid-segments", "1", "--fit-steps", "50")
    assert trained.code == 0, trained
    assert (tmp_path / "cache" / "kernels" / "scnet" / "8000.pt").is_file()
    assert "validation loss" in trained.out and "8000.pt" in trained.out
    used = run_cli(song, *model, "--out", tmp_path / "out", "--resampler", "trainable")
    assert used.code == 0 and "resampler trainable" in used.out, used
    other = run_cli(wav_file("radio.wav", rate=16000, seconds=0.3), *model, "--out", tmp_path / "out",
                    "--resampler", "trainable")
    assert other.code == 1 and "--rate 16000" in other.err
    bad = run_cli("train-kernel", *model, "--rate", "44100", "--musdb", root)
    assert bad.code == 2 and "--rate 44100" in bad.err
