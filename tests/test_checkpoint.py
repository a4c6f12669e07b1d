"""sfsep.checkpoint: safe reading of checkpoints (nothing in them runs), wrappers, demucs packages,
half precision, strict loading messages, MSST YAML configs; and load_separator with --weights and
--config on a tiny fixture."""

from __future__ import annotations

import fractions
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from sfsep import checkpoint
from sfsep.errors import ModelError, UsageError, WeightsError

from parity import load_fixture

torch.set_num_threads(1)  # the suite shares two cores; oversubscribed threads only slow it down



class Hostile:
    """Pickles to a call of os.system that would create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def small_state() -> dict[str, torch.Tensor]:
    return torch.nn.Linear(3, 2).state_dict()


@pytest.mark.parametrize("wrapper", [None, "state", "state_dict", "model_state_dict"])
def test_plain_and_wrapped_state_dicts(tmp_path, wrapper):
    state = small_state()
    content = state if wrapper is None else {wrapper: state, "epoch": 3, "best_metric": 1.5}
    torch.save(content, tmp_path / "m.ckpt")
    loaded = checkpoint.load_checkpoint(tmp_path / "m.ckpt")
    assert loaded.wrapper == wrapper
    assert set(loaded.state) == set(state)
    for key in state:
        assert torch.equal(loaded.state[key], state[key])


def test_legacy_serialization_format(tmp_path):
    """demucs v2's tasnet files predate torch's zip format."""
    state = small_state()
    torch.save(state, tmp_path / "tasnet-legacy.th", _use_new_zipfile_serialization=False)
    loaded = checkpoint.load_checkpoint(tmp_path / "tasnet-legacy.th")
    assert all(torch.equal(loaded.state[key], state[key]) for key in state)


def test_training_checkpoint_with_numpy_metrics(tmp_path):
    import numpy as np

    state = small_state()
    torch.save({"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-4}]},
                "best_metric": np.float64(9.5), "all_metrics": np.array([1.0, 2.0]), "epoch": np.int64(3)},
               tmp_path / "train.ckpt")
    loaded = checkpoint.load_checkpoint(tmp_path / "train.ckpt")
    assert loaded.wrapper == "model_state_dict" and set(loaded.state) == set(state)


def test_half_precision_is_upcast(tmp_path):
    state = {key: value.half() for key, value in small_state().items()}
    torch.save(state, tmp_path / "half.pt")
    loaded = checkpoint.load_checkpoint(tmp_path / "half.pt")
    assert loaded.upcast == 2
    assert all(tensor.dtype == torch.float32 for tensor in loaded.state.values())


@pytest.mark.parametrize("how", ["torch.save", "raw pickle", "inside a package"])
def test_hostile_pickle_is_refused_without_running(tmp_path, how):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    if how == "torch.save":
        torch.save({"state_dict": small_state(), "extra": Hostile(marker)}, path)
    elif how == "raw pickle":
        path.write_bytes(pickle.dumps(Hostile(marker), protocol=2))
    else:
        torch.save({"klass": Hostile(marker), "args": (), "kwargs": {}, "state": small_state()}, path)
    with pytest.raises(WeightsError) as caught:
        checkpoint.load_checkpoint(path)
    assert not marker.exists()
    assert str(path) in str(caught.value)
    if how != "raw pickle":
        assert "system" in str(caught.value)  # the refusal names what the file references


def _fake_demucs_class(module_name: str, class_name: str):
    """A stand-in demucs class importable under its real dotted name (only while saving)."""
    module = types.ModuleType(module_name)
    cls = type(class_name, (), {"__module__": module_name})
    module.__dict__[class_name] = cls
    return module, cls


def save_package(path: Path, state: dict, kwargs: dict, module_name="demucs.htdemucs", class_name="HTDemucs"):
    parent, _ = _fake_demucs_class("demucs", "Unused")
    module, cls = _fake_demucs_class(module_name, class_name)
    sys.modules["demucs"], sys.modules[module_name] = parent, module
    try:
        torch.save({"klass": cls, "args": (), "kwargs": kwargs, "state": state,
                    "training_args": {"dset": {"segment": 10}}, "metrics": ({"nsdr": 1.0}, {})}, path)
    finally:
        del sys.modules["demucs"], sys.modules[module_name]


def test_demucs_package_round_trip_runs_the_fixture(tmp_path):
    from sfsep.models import build_model

    data = load_fixture("htdemucs_demucsrepo_tiny")
    kwargs = {key: value for key, value in data["config"].items() if value is not None}
    kwargs["segment"] = fractions.Fraction(3, 10)
    path = tmp_path / "955717e8-00000000.th"
    save_package(path, data["state_dict"], kwargs)
    assert "demucs" not in sys.modules
    loaded = checkpoint.load_checkpoint(path)
    assert loaded.class_name == "demucs.htdemucs.HTDemucs"
    assert loaded.wrapper == "state"
    assert loaded.kwargs["segment"] == "3/10" and loaded.kwargs["sources"] == ["drums", "bass", "other", "vocals"]
    model = build_model("htdemucs", loaded.kwargs)
    checkpoint.load_state(model, loaded.state, source=path)
    with torch.no_grad():
        output = model(data["input"])
    torch.testing.assert_close(output, data["output"], atol=1e-4, rtol=1e-4)


def test_half_precision_package_loads(tmp_path):
    path = tmp_path / "pkg.th"
    save_package(path, {key: value.half() for key, value in small_state().items()}, {"sources": ["a"]},
                 module_name="demucs.demucs", class_name="Demucs")
    loaded = checkpoint.load_checkpoint(path)
    assert loaded.class_name == "demucs.demucs.Demucs" and loaded.upcast == 2


def test_unknown_class_in_a_package_is_refused(tmp_path):
    path = tmp_path / "pkg.th"
    save_package(path, small_state(), {}, module_name="demucs.newmodel", class_name="Secret")
    with pytest.raises(WeightsError, match="demucs.newmodel.Secret"):
        checkpoint.load_checkpoint(path)


def test_quantized_and_non_tensor_states_are_explained(tmp_path):
    torch.save({"state": {"__quantized": True, "w": torch.ones(1)}}, tmp_path / "q.th")
    with pytest.raises(WeightsError, match="DiffQ"):
        checkpoint.load_checkpoint(tmp_path / "q.th")
    torch.save({"w": torch.ones(1), "note": "text"}, tmp_path / "n.th")
    with pytest.raises(WeightsError, match="'note'"):
        checkpoint.load_checkpoint(tmp_path / "n.th")
    (tmp_path / "trunc.th").write_bytes((tmp_path / "n.th").read_bytes()[:100])
    with pytest.raises(WeightsError, match="not a readable"):
        checkpoint.load_checkpoint(tmp_path / "trunc.th")
    with pytest.raises(WeightsError, match="no such"):
        checkpoint.load_checkpoint(tmp_path / "absent.th")


def test_strict_load_mismatch_lists_keys_and_shapes():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 5))
    state = dict(model.state_dict())
    del state["1.bias"]
    state["0.weight"] = torch.zeros(4, 3)
    state["2.weight"] = torch.zeros(7, 7)
    with pytest.raises(ModelError) as caught:
        checkpoint.load_state(model, state, source="my.ckpt")
    message = str(caught.value)
    assert "my.ckpt" in message
    assert "1 missing from the checkpoint: 1.bias [5]" in message
    assert "1 unexpected in the checkpoint: 2.weight [7, 7]" in message
    assert "0.weight model [2, 3] vs file [4, 3]" in message


def test_strict_load_accepts_wrapper_prefixes_and_loads_values():
    model = torch.nn.Linear(3, 2)
    source = torch.nn.Linear(3, 2)
    checkpoint.load_state(model, {f"module.{k}": v for k, v in source.state_dict().items()})
    assert torch.equal(model.weight, source.weight)
    lightning = {f"model.{k}": v for k, v in source.state_dict().items()}
    checkpoint.load_state(torch.nn.Linear(3, 2), lightning)


def test_mismatch_list_is_capped():
    model = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(20)])
    with pytest.raises(ModelError, match=r"40 missing .* 32 more"):
        checkpoint.load_state(model, {"x": torch.ones(1)})


YAML = """\
audio:
  chunk_size: 8192
  sample_rate: 44100
model:
  band_SR: !!python/tuple [0.175, 0.392, 0.433]
  dims: !!python/tuple
    - 4
    - 8
  lr: 1e-3
  name: plain
training:
  instruments: [drums, vocals]
"""


def test_msst_yaml_with_tuples_and_short_floats():
    config = checkpoint.parse_yaml_config(YAML)
    assert config["model"]["band_SR"] == [0.175, 0.392, 0.433]
    assert config["model"]["dims"] == [4, 8]
    assert config["model"]["lr"] == pytest.approx(1e-3)
    assert config["model"]["name"] == "plain"
    assert config["audio"]["chunk_size"] == 8192


def test_yaml_refuses_other_python_tags(tmp_path):
    marker = tmp_path / "marker"
    hostile = f"a: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(UsageError, match="tag"):
        checkpoint.parse_yaml_config(hostile)
    with pytest.raises(UsageError, match="tag"):
        checkpoint.parse_yaml_config("a: !!python/name:os.system\n")
    assert not marker.exists()
    with pytest.raises(UsageError, match="mapping"):
        checkpoint.parse_yaml_config("- 1\n- 2\n")
    with pytest.raises(UsageError, match="cannot read"):
        checkpoint.load_yaml_config(tmp_path / "absent.yaml")


def _tuple_yaml(value) -> str:
    return "!!python/tuple [" + ", ".join(str(item) for item in value) + "]"


def test_load_separator_with_weights_and_msst_config(tmp_path):
    """A user's fine-tuned SCNet: --weights (wrapped in state_dict) + --config (MSST YAML)."""
    import yaml

    from sfsep.pipeline import load_separator

    data = load_fixture("scnet_tiny")
    config = data["config"]
    text = yaml.safe_dump({k: v for k, v in config.items() if k != "model"}, sort_keys=False)
    model_lines = "\n".join(f"  {key}: {_tuple_yaml(value) if isinstance(value, list) and key != 'sources' else value}"
                            for key, value in config["model"].items())
    (tmp_path / "my.yaml").write_text(text + "model:\n" + model_lines + "\n")
    torch.save({"state_dict": data["state_dict"], "epoch": 7}, tmp_path / "my.ckpt")
    separator = load_separator("scnet", device="cpu", weights=tmp_path / "my.ckpt", config=tmp_path / "my.yaml")
    spec = separator.spec
    assert spec.stems == ("drums", "vocals") and spec.chunk_size == 8192 and spec.num_overlap == 4
    assert spec.chunk_style == "msst" and spec.normalize == "msst" and spec.batch_size == 2
    (module,) = separator.modules(44100)
    with torch.no_grad():
        output = module(data["input"])
    torch.testing.assert_close(output, data["output"], atol=1e-4, rtol=1e-4)

    with pytest.raises(ModelError, match="does not fit"):
        load_separator("scnet", device="cpu", weights=tmp_path / "my.ckpt")  # published config, tiny weights
    with pytest.raises(UsageError, match="mdx23c"):
        load_separator("mdx23c", device="cpu", weights=tmp_path / "my.ckpt", config=tmp_path / "my.yaml")
    with pytest.raises(UsageError, match="no such file"):
        load_separator("scnet", device="cpu", weights=tmp_path / "absent.ckpt")


def test_load_separator_builds_a_demucs_package_from_its_own_kwargs(tmp_path):
    """The package's recorded kwargs (here a tiny model, sources in another order) win over
    models.toml's reconstructed config, and the stems follow the package's sources."""
    from sfsep.pipeline import load_separator

    data = load_fixture("htdemucs_demucsrepo_tiny")
    kwargs = {key: value for key, value in data["config"].items() if value is not None}
    kwargs["segment"] = fractions.Fraction(3, 10)
    kwargs["sources"] = ["vocals", "drums", "bass", "other"]
    path = tmp_path / "5c90dfd2-00000000.th"
    save_package(path, {key: value.half() for key, value in data["state_dict"].items()}, kwargs)
    separator = load_separator("htdemucs", device="cpu", weights=path)
    assert separator.spec.stems == ("vocals", "drums", "bass", "other")
    (module,) = separator.modules(44100)
    with torch.no_grad():
        output = module(data["input"])
    # float16 weights: close to the float32 fixture, not equal
    assert (output - data["output"]).abs().max() < 1e-2 * data["output"].abs().max()
