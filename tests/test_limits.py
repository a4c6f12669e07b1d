"""Absurd --config values are refused in one line naming the field, before any model is built:
types and ranges of every field sfsep reads, and a memory estimate (parameters counted on the
meta device, a lower bound of one chunk's activations) against the memory available."""

import copy
from pathlib import Path

import pytest
import torch
import yaml

from parity import load_manifest, shared_dir
from sfsep import registry
from sfsep.errors import UsageError
from conftest import one_line_error


def _limits():
    from sfsep.models import limits  # imported in the tests, so that the CLI tests also run without it

    return limits


def _config_with(model: str, path: str, value) -> dict:
    config = copy.deepcopy(registry.get_spec(model).config)
    target = config
    keys = path.split(".")
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value
    return config


@pytest.fixture
def never_built(monkeypatch):
    """Fails the test if a model is built for real (the refusal must come before)."""
    import sfsep.pipeline

    def refuse(family, config):
        raise AssertionError(f"a {family} model was built from an absurd config")

    monkeypatch.setattr(sfsep.pipeline, "build_model", refuse)


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    """A readable checkpoint (so that only the config can be what is refused)."""
    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(1)}}, path)
    return path


CASES = [
    # (model, field, value, words the one line must hold): the examples and their kin
    ("scnet", "model.num_dplayer", 1_000_000_000, ["model.num_dplayer", "from 0 to 256", "1000000000"]),
    ("scnet", "model.num_dplayer", 1e9, ["model.num_dplayer", "integer"]),
    ("bs_roformer", "model.dim", 1e9, ["model.dim", "integer"]),
    ("bs_roformer", "model.dim", 1_000_000_000, ["model.dim", "from 1 to 65536"]),
    ("scnet", "model.nfft", 1e9, ["model.nfft", "integer"]),
    ("bs_roformer", "audio.chunk_size", 1e12, ["audio.chunk_size = 1e+12", "available", "PB"]),
    ("mdx23c", "inference.batch_size", 100_000, ["inference.batch_size", "from 1 to 4096"]),
    ("bs_roformer", "model.stereo", "yes", ["model.stereo", "true or false"]),
    ("mel_roformer", "model.ff_dropout", float("nan"), ["model.ff_dropout", "nan"]),
    ("scnet", "model.dims", [4, 32, "wide"], ["model.dims", "a list of"]),
    ("bs_roformer", "model.depth", 200, ["model.depth x (time_transformer_depth + freq_transformer_depth)",
                                         "transformer layers"]),
]


@pytest.mark.parametrize("model,path,value,words", CASES, ids=[f"{c[1]}={c[2]!r}" for c in CASES])
def test_absurd_config_values_are_refused_before_any_build(run_cli, wav_file, tmp_path, never_built,
                                                           tiny_checkpoint, model, path, value, words):
    config = tmp_path / "absurd.yaml"
    config.write_text(yaml.safe_dump(_config_with(model, path, value)))
    song = wav_file("song.wav", rate=44100, seconds=0.2)
    result = run_cli(song, "--model", model, "--config", config, "--weights", tiny_checkpoint,
                     "--out", tmp_path / "out")
    one_line_error(result, f"--config {config}", *words)
    assert result.code == 2
    assert not (tmp_path / "out").exists()


def test_too_large_for_the_memory_available_names_the_field(run_cli, wav_file, tmp_path, never_built,
                                                             tiny_checkpoint, monkeypatch):
    """In range, but not on this machine: the estimate (parameters + one chunk) is compared with
    the memory available, and the field that makes the difference is named."""
    monkeypatch.setattr(_limits(), "available_memory", lambda: 300 * 10**6)
    song = wav_file("song.wav", rate=44100, seconds=0.2)
    big = tmp_path / "big.yaml"
    big.write_text(yaml.safe_dump(_config_with("scnet", "model.num_dplayer", 200)))  # ~300M parameters
    result = run_cli(song, "--model", "scnet", "--config", big, "--weights", tiny_checkpoint, "--out", tmp_path)
    one_line_error(result, "model.num_dplayer = 200", "parameters", "300.0 MB available", "published models use 6")
    # No --model: the family is guessed from the config, the same check applies.
    long_chunks = tmp_path / "long.yaml"
    long_chunks.write_text(yaml.safe_dump(_config_with("scnet", "audio.chunk_size", 44100 * 600)))
    result = run_cli(song, "--config", long_chunks, "--weights", tiny_checkpoint, "--out", tmp_path)
    one_line_error(result, "audio.chunk_size = 26460000", "one batch of 8 chunk(s)", "available")


def _tiny_scnet_files(shared, folder):
    """The tiny SCNet parity fixture as a user's checkpoint file and YAML config in `folder`."""
    fixture = torch.load(shared / "parity" / "scnet_tiny.pt", weights_only=True)
    checkpoint = folder / "tiny.ckpt"
    torch.save({"state_dict": fixture["state_dict"]}, checkpoint)
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(fixture["config"]))
    return checkpoint, config


def test_a_config_that_fits_still_runs(run_cli, wav_file, tmp_path, shared, monkeypatch):
    """The tiny SCNet fixture with a user config goes through the checks and separates."""
    checkpoint, config = _tiny_scnet_files(shared, tmp_path)
    song = wav_file("song.wav", rate=44100, seconds=0.5)
    result = run_cli(song, "--model", "scnet", "--config", config, "--weights", checkpoint, "--out", tmp_path / "o")
    assert result.code == 0, result
    assert (tmp_path / "o" / "scnet" / "song" / "vocals.wav").exists()


def test_published_configs_pass_and_their_parameters_are_counted_exactly():
    limits = _limits()
    for manifest in sorted((shared_dir() / "parity").glob("*.manifest.json")):
        data = load_manifest(manifest.name)
        family = registry.guess_family(data["config"]) or manifest.name.split(".")[0].replace("_demucsrepo", "")
        assert limits.field_rules(family, data["config"]), manifest.name
        limits.check_fields(family, data["config"], manifest.name)
    for name in ("bs_roformer", "mel_roformer", "scnet", "mdx23c", "htdemucs", "conv_tasnet", "bsrnn"):
        spec = registry.get_spec(name)
        limits.check_fields(spec.family, spec.config, name)
        found = limits.estimate(spec)
        assert found.params == spec.params, name
        assert 0 < found.activation_bytes < 4 * 10**9, name  # a lower bound, not a guess


def test_field_messages_say_what_the_field_must_hold():
    limits = _limits()
    config = _config_with("bsrnn", "bandsplits", [[20000, 0.001]])
    with pytest.raises(UsageError, match=r"x.yaml: the bands of bandsplits = 20,000,001 bands"):
        limits.check_fields("bsrnn", config, "x.yaml")
    with pytest.raises(UsageError, match=r"training.segment must be a number of seconds from 0 to 3600, not '1/0'"):
        limits.check_fields("htdemucs", _config_with("htdemucs_msst", "training.segment", "1/0"), "x.yaml")
    limits.check_fields("htdemucs", _config_with("htdemucs", "segment", "39/5"), "x.yaml")
    with pytest.raises(UsageError, match=r"htdemucs.t_emb must be one of sin, cape, scaled"):
        limits.check_fields("htdemucs", _config_with("htdemucs_msst", "htdemucs.t_emb", "cos"), "x.yaml")
    with pytest.raises(UsageError, match=r"X x R = 2,000 convolution blocks; sfsep builds at most 1,024"):
        limits.check_fields("conv_tasnet", dict(_config_with("conv_tasnet", "X", 100), R=20), "x.yaml")


def test_available_memory_reads_the_system():
    available = _limits().available_memory()
    assert available is None or available > 0


def test_an_absurd_chunk_seconds_is_refused_before_the_first_chunk(run_cli, wav_file, tmp_path, shared):
    """--chunk-seconds is the command line's chunk_size: 1e9 s asked the allocator for 176 TB at
    the first chunk of the tiny SCNet (a traceback). A model that takes any length (classic) runs
    a track shorter than one chunk as it is, so the same value costs it nothing and still runs."""
    checkpoint, config = _tiny_scnet_files(shared, tmp_path)
    song = wav_file("song.wav", rate=44100, seconds=0.5)
    result = run_cli(song, "--model", "scnet", "--config", config, "--weights", checkpoint,
                     "--chunk-seconds", "1e9", "--out", tmp_path / "o")
    one_line_error(result, "--chunk-seconds 1e+09", "44,100,000,000,000 samples", "available",
                    "use a shorter --chunk-seconds")
    assert result.code == 2 and not (tmp_path / "o").exists()
    short = wav_file("short.wav", rate=8000, seconds=0.5)
    result = run_cli(short, "--model", "classic", "--chunk-seconds", "1e9", "--out", tmp_path / "c")
    assert result.code == 0, result
    assert (tmp_path / "c" / "classic" / "short" / "vocals.wav").exists()
