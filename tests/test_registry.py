"""models.toml and sfsep.registry: every published checkpoint is listed with a config that builds
the exact published state_dict, sane chunking and sources; MSST configs become specs; the
`sfsep models` and `sfsep cache` commands."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch

from sfsep import registry as reg
from sfsep.errors import ModelError, UsageError
from sfsep.models import ARCHITECTURES, build_model

from parity import load_manifest

torch.set_num_threads(1)

# registry name -> the parity manifest holding its published config and state_dict
MANIFESTS = {
    "htdemucs": "htdemucs_demucsrepo", "htdemucs_ft": "htdemucs_demucsrepo", "htdemucs_msst": "htdemucs",
    "bs_roformer": "bs_roformer", "bs_roformer_vocals": "bs_roformer_viperx_ep317",
    "mel_roformer": "mel_band_roformer", "mel_roformer_viperx": "mel_band_roformer_viperx_ep3005",
    "scnet": "scnet", "scnet_large": "scnet_large", "mdx23c": "mdx23c", "mdx23c_vocals": "mdx23c_vocals",
    "conv_tasnet": "conv_tasnet", "conv_tasnet_extra": "conv_tasnet", "bsrnn": "bsrnn",
}
TYPED_NAMES = ["htdemucs", "htdemucs_ft", "bs_roformer", "mel_roformer", "scnet", "scnet_large", "mdx23c",
               "conv_tasnet", "bsrnn", "classic", "nmf"]


@pytest.fixture(autouse=True)
def packaged_registry(monkeypatch):
    monkeypatch.delenv("SFSEP_REGISTRY", raising=False)



def test_every_published_checkpoint_is_listed():
    models = reg.registry()
    assert set(MANIFESTS) <= set(models)
    for name in TYPED_NAMES:
        assert reg.get_spec(name).name == name
    assert reg.get_spec("demucs").name == "htdemucs"
    assert reg.get_spec("mel_band_roformer").name == "mel_roformer"
    names = list(models) + [alias for spec in models.values() for alias in spec.aliases]
    assert len(names) == len(set(names)), "a name or alias is used twice"
    with pytest.raises(ModelError, match="htdemucs"):
        reg.get_spec("no_such_model")


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_config_builds_the_published_state_dict(name):
    spec = reg.get_spec(name)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = build_model(spec.family, spec.config_copy())
    published = load_manifest(MANIFESTS[name])["state_dict"]
    published = {key: list(value if isinstance(value, list) else value["shape"]) for key, value in published.items()}
    ours = {key: list(tensor.shape) for key, tensor in module.state_dict().items()}
    assert sorted(set(published) - set(ours))[:5] == [] and sorted(set(ours) - set(published))[:5] == []
    assert ours == published


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_stems_rate_chunking_and_sources(name):
    spec = reg.get_spec(name)
    assert spec.family in ARCHITECTURES
    assert spec.trained_rate == 44100
    assert spec.stems and len(set(spec.stems)) == len(spec.stems)
    assert spec.chunk_style in reg.CHUNK_STYLES and spec.chunk_size and spec.chunk_size > 0
    assert spec.license and spec.citation and spec.description
    assert spec.weights, "a published model needs a weights source"
    config = load_manifest(MANIFESTS[name]).get("config", {})
    if spec.chunk_style in ("msst", "msst_demucs"):
        assert isinstance(spec.num_overlap, int) and spec.num_overlap == config["inference"]["num_overlap"]
        assert spec.overlap is None
        assert spec.batch_size == config["inference"]["batch_size"]
        training = config["training"]
        target = training.get("target_instrument")
        assert list(spec.stems) == ([target] if target else training["instruments"])
        if spec.chunk_style == "msst":
            assert spec.chunk_size == config["audio"]["chunk_size"]
            assert (spec.normalize == "msst") == bool(config["inference"].get("normalize", False))
        else:
            assert spec.chunk_size == training["samplerate"] * training["segment"]
    if spec.chunk_style == "demucs":
        assert spec.overlap == 0.25 and spec.num_overlap is None
        assert spec.normalize == ("demucs" if spec.family == "htdemucs" else "demucs_v2")
    if spec.family == "htdemucs" and spec.chunk_style == "demucs":
        assert spec.chunk_size == 343980  # the 7.8 s (39/5) segment of demucs' v4 models
        assert spec.config["segment"] == "39/5"
    if spec.family in ("htdemucs", "conv_tasnet") and "sources" in spec.config:
        assert list(spec.config["sources"]) == list(spec.stems)
    if len(spec.stems) == 1:
        assert spec.residual_stem == "other"
    for source in [candidate for entry in spec.weights for candidate in (entry, *entry.mirrors)]:
        url = source.url or ""
        if "dl.fbaipublicfiles.com" in url:
            prefix = re.search(r"-([0-9a-f]{8})\.th$", url).group(1)
            assert source.sha256.startswith(prefix)  # demucs names carry their sha256's first 8 hex digits
        if source.sha256:
            assert re.fullmatch(r"[0-9a-f]{8,64}", source.sha256)


def test_sources_match_the_research_notes():
    assert reg.get_spec("mel_roformer").weights[0].hf_repo == "KimberleyJSN/melbandroformer"
    assert reg.get_spec("mel_roformer").weights[0].hf_filename == "MelBandRoformer.ckpt"
    assert reg.get_spec("bsrnn").weights[0].gdrive_id == "14FzOPUcf4BKym1kCRqRH1PeJWSvv4qHE"
    assert reg.get_spec("bs_roformer_vocals").weights[0].url.endswith("model_bs_roformer_ep_317_sdr_12.9755.ckpt")
    for name in MANIFESTS:
        url = load_manifest(MANIFESTS[name]).get("checkpoint_url")
        if url and name not in ("htdemucs_ft",):
            first = reg.get_spec(name).weights[0]
            if "dl.fbaipublicfiles.com" in url:  # demucs' legacy file: the fallback behind its Hub export
                assert [mirror.url for mirror in first.mirrors] == [url]
            else:
                assert first.url == (None if "huggingface.co" in url else url)


def test_htdemucs_ft_is_a_bag_with_per_source_weights():
    spec = reg.get_spec("htdemucs_ft")
    assert len(spec.weights) == 4
    assert spec.bag_weights == tuple(tuple(1.0 if i == j else 0.0 for j in range(4)) for i in range(4))
    signatures = ["f7e0c4bc", "d12395a8", "92cfc3b6", "04573f0d"]
    assert [w.hf_filename for w in spec.weights] == [f"{sig}.safetensors" for sig in signatures]
    assert [w.mirrors[0].cache_name.split("-")[0] for w in spec.weights] == signatures
    assert reg.get_spec("htdemucs_6s").stems == ("drums", "bass", "other", "vocals", "guitar", "piano")


def test_registry_override_and_bad_entries(tmp_path, monkeypatch):
    path = tmp_path / "models.toml"
    path.write_text('[models.x]\nfamily = "classic"\nstems = ["a"]\n'
                    '[[models.x.weights]]\nurl = "http://127.0.0.1/x.th"\nsha265 = "typo"\n')
    monkeypatch.setenv("SFSEP_REGISTRY", str(path))
    with pytest.raises(ModelError, match="sha265"):
        reg.registry()
    path.write_text('[models.x]\nfamily = "classic"\nstems = ["a"]\n[[models.x.weights]]\nsize = 3\n')
    monkeypatch.setenv("SFSEP_REGISTRY", str(tmp_path / "other.toml"))
    with pytest.raises(ModelError, match="no such file"):
        reg.registry()
    (tmp_path / "other.toml").write_text(path.read_text())
    with pytest.raises(ModelError, match="needs url"):
        reg.registry()


def _write_models(tmp_path, body: str):
    path = tmp_path / "models.toml"
    path.write_text(body)
    return path


def test_family_settings_are_typed_fields(tmp_path):
    path = _write_models(tmp_path, """
[models.bag]
family = "htdemucs"
stems = ["drums", "vocals"]
chunk_style = "demucs"
params = 12345
half_precision = true
config_source = "made up for this test"
bag_weights = [[1, 0], [0.5, 1.0]]
[[models.bag.weights]]
url = "http://127.0.0.1/a.th"
[[models.bag.weights]]
url = "http://127.0.0.1/b.th"

[models.voice]
family = "bs_roformer"
stems = ["vocals"]
chunk_style = "msst"
num_overlap = 4
residual_stem = "other"

[models.voice_default]
family = "bs_roformer"
stems = ["vocals"]
chunk_style = "msst_demucs"

[models.plain]
family = "classic"
stems = ["a"]
overlap = 0

[models.rnn]
family = "bsrnn"
stems = ["vocals"]
chunk_style = "bsrnn"
""")
    models = reg.load_registry(path)
    bag = models["bag"]
    assert (bag.params, bag.half_precision) == (12345, True)
    assert bag.config_source == "made up for this test"
    assert bag.bag_weights == ((1.0, 0.0), (0.5, 1.0))
    assert all(isinstance(value, float) for row in bag.bag_weights for value in row)
    assert (bag.overlap, bag.num_overlap, bag.residual_stem) == (0.25, None, None)
    assert not hasattr(bag, "extra")
    assert not hasattr(bag, "padded_length")  # the loaded demucs package says its valid length
    voice = models["voice"]
    assert (voice.overlap, voice.num_overlap, voice.residual_stem) == (None, 4, "other")
    assert (voice.params, voice.half_precision, voice.config_source) == (None, False, "")
    assert (voice.bag_weights, models["voice_default"].num_overlap) == (None, reg.DEFAULT_NUM_OVERLAP)
    assert models["voice_default"].overlap is None
    assert (models["plain"].overlap, models["plain"].num_overlap) == (0.0, None)
    assert (models["rnn"].overlap, models["rnn"].num_overlap) == (None, None)
    htdemucs = reg.get_spec("htdemucs")
    assert (htdemucs.chunk_size, htdemucs.params, htdemucs.half_precision) == (343980, 41984456, True)
    assert htdemucs.config_source.startswith("reconstructed from demucs")


@pytest.mark.parametrize("lines,match", [
    # MSST's count in the fraction's key, and the other way round
    ('chunk_style = "msst"\noverlap = 2', r"overlap = 2 is a count.*num_overlap = 2"),
    ('chunk_style = "msst_demucs"\noverlap = 4', r"num_overlap = 4"),
    ('chunk_style = "msst"\noverlap = 0.25', r"does not apply to chunk_style 'msst'"),
    ('chunk_style = "msst"\nnum_overlap = 0.5', r"num_overlap must be an integer count >= 1, not 0\.5"),
    ('chunk_style = "msst"\nnum_overlap = 2.0', r"num_overlap must be an integer count"),
    ('chunk_style = "msst"\nnum_overlap = 0', r"num_overlap must be an integer count"),
    ('chunk_style = "demucs"\nnum_overlap = 2', r"num_overlap is MSST's count.*takes overlap, a fraction"),
    ('num_overlap = 2', r"chunk_style 'fade' takes overlap"),
    ('chunk_style = "fade"\noverlap = 2', r"overlap must be a fraction of a chunk in \[0, 1\), not 2"),
    ('chunk_style = "bsrnn"\noverlap = 0.25', r"own fixed chunking"),
    # keys ModelSpec has no field for
    ('overlapp = 0.5', r"unknown key overlapp \(known: .*num_overlap.*residual_stem"),
    ('extra = {residual_stem = "other"}', r"unknown key extra"),
    ('foo = 1\nbar = 2', r"unknown keys bar, foo"),
    ('padded_length = 343980', r"unknown key padded_length"),  # a demucs package carries it
    # typed fields
    ('residual_stem = 1', r"residual_stem must be a stem name"),
    ('half_precision = "yes"', r"half_precision must be true or false"),
    ('params = true', r"params must be an integer"),
    ('params = 1.5', r"params must be an integer"),
    ('bag_weights = [1.0]', r"bag_weights must be one list of numbers per checkpoint"),
    ('bag_weights = [[1.0, 0.0]]', r"bag_weights must be 0 rows .* of 1 numbers"),
])
def test_bad_tables_name_the_model_and_the_key(tmp_path, lines, match):
    path = _write_models(tmp_path, f'[models.mine]\nfamily = "bs_roformer"\nstems = ["vocals"]\n{lines}\n')
    with pytest.raises(ModelError, match=r"model 'mine'.*" + match):
        reg.load_registry(path)


def test_spec_from_table_checks_what_it_is_given():
    table = {"family": "scnet", "stems": ["vocals"], "chunk_style": "msst", "num_overlap": 3}
    spec = reg.spec_from_table("direct", table)
    assert (spec.num_overlap, spec.overlap) == (3, None)
    with pytest.raises(ModelError, match=r"'direct'.*overlap = 4 is a count"):
        reg.spec_from_table("direct", {"family": "scnet", "stems": ["vocals"], "chunk_style": "msst",
                                       "overlap": 4})
    with pytest.raises(ModelError, match=r"'direct'.*unknown key padded"):
        reg.spec_from_table("direct", dict(table, padded=3))


def test_msst_config_num_overlap_is_a_count():
    config = {"model": {"freqs_per_bands": [1]}, "audio": {"chunk_size": 1000, "sample_rate": 44100},
              "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals"},
              "inference": {"num_overlap": 3, "batch_size": 2}}
    spec = reg.spec_from_config(config, name="mine", source="my.yaml")
    assert (spec.overlap, spec.num_overlap, spec.chunk_style) == (None, 3, "msst")
    assert (spec.residual_stem, spec.config_source) == ("other", "my.yaml")
    del config["inference"]["num_overlap"]
    assert reg.spec_from_config(config, name="mine").num_overlap == reg.DEFAULT_NUM_OVERLAP
    base = reg.get_spec("scnet")  # num_overlap 4; a config without one keeps the model's
    scnet = reg.spec_from_config({"model": {"band_SR": [1.0]}, "training": {"instruments": ["vocals"]}},
                                 name="x", base=base)
    assert scnet.num_overlap == base.num_overlap == 4
    with pytest.raises(UsageError, match=r"my.yaml: inference.num_overlap must be an integer count"):
        reg.spec_from_config(dict(config, inference={"num_overlap": 0.5}), name="mine", source="my.yaml")


def test_msst_configs_become_specs():
    viperx = load_manifest("bs_roformer_viperx_ep317")["config"]
    assert reg.guess_family(viperx) == "bs_roformer"
    spec = reg.spec_from_config(viperx, name="mine")
    assert spec.family == "bs_roformer" and spec.stems == ("vocals",)
    assert spec.residual_stem == "other" and spec.overlap is None
    assert (spec.chunk_size, spec.num_overlap, spec.chunk_style, spec.batch_size) == (352800, 2, "msst", 4)
    assert reg.guess_family(load_manifest("mel_band_roformer")["config"]) == "mel_band_roformer"
    assert reg.guess_family(load_manifest("scnet")["config"]) == "scnet"
    assert reg.guess_family(load_manifest("mdx23c")["config"]) == "mdx23c"
    assert reg.guess_family(load_manifest("bsrnn")["config"]) == "bsrnn"
    ht = reg.spec_from_config(load_manifest("htdemucs")["config"], name="ht")
    assert (ht.family, ht.chunk_style, ht.chunk_size, ht.num_overlap) == ("htdemucs", "msst_demucs", 485100, 4)
    base = reg.get_spec("scnet")
    scnet = reg.spec_from_config(load_manifest("scnet_large")["config"], name="x", base=base)
    assert scnet.name == "scnet" and scnet.weights == base.weights and scnet.normalize is None
    with pytest.raises(UsageError, match="bs_roformer"):
        reg.spec_from_config(viperx, name="x", base=base)
    with pytest.raises(UsageError, match="cannot tell"):
        reg.spec_from_config({"model": {"foo": 1}}, name="x")
    hparams = dict(load_manifest("bsrnn")["config"], num_layers=6)
    bsrnn = reg.spec_from_config(hparams, name="x", base=reg.get_spec("bsrnn"))
    assert bsrnn.config["num_layers"] == 6 and bsrnn.stems == ("vocals",) and bsrnn.weights
    with pytest.raises(UsageError, match="--model"):
        reg.spec_from_config(hparams, name="x")


def run_cli(args, capsys):
    from sfsep.cli import main

    with pytest.raises(SystemExit) as caught:
        main(list(args))
    out, err = capsys.readouterr()
    return caught.value.code, out, err


def test_models_command_json_and_table(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "cache"))
    code, out, _ = run_cli(["models", "--json"], capsys)
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert set(rows) == set(reg.registry())
    assert rows["htdemucs_ft"]["files"] == 4 and rows["htdemucs_ft"]["cached"] is False
    assert rows["classic"]["cached"] is None and rows["classic"]["available"] is True
    assert rows["bs_roformer_vocals"]["stems"] == ["vocals", "other"]
    assert rows["mel_roformer"]["sources"][0]["host"] == "huggingface.co"
    assert rows["htdemucs"]["size_estimate_bytes"] == 41984456 * 2
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0 and "htdemucs_ft" in out  # names never wrap, even at 80 columns
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(["models"], capsys)
    line = next(line for line in out.splitlines() if line.strip().startswith("htdemucs_ft "))
    assert "drums, bass, other, vocals" in line and "no" in line.split() and "huggingface.co" in line  # demucs' Hub


def test_unimplemented_architecture_is_listed_and_refused_clearly(capsys, tmp_path, monkeypatch):
    from sfsep.pipeline import load_separator

    path = tmp_path / "models.toml"
    path.write_text('[models.future]\nfamily = "future_net"\ntrained_rate = 44100\nstems = ["vocals"]\n'
                    '[[models.future.weights]]\nurl = "http://127.0.0.1:9/future.ckpt"\n')
    monkeypatch.setenv("SFSEP_REGISTRY", str(path))
    code, out, _ = run_cli(["models", "--json"], capsys)
    (row,) = json.loads(out)
    assert row["name"] == "future" and row["available"] is False
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(["models"], capsys)
    assert "not implemented yet" in out
    with pytest.raises(ModelError, match="not available in this version"):
        load_separator("future", device="cpu")
    import soundfile

    soundfile.write(tmp_path / "song.wav", np.zeros((800, 2), np.float32) + 0.1, 8000)
    code, _, err = run_cli(["separate", str(tmp_path / "song.wav"), "--model", "future"], capsys)
    assert code == 1 and "not available" in err and "Traceback" not in err


def test_cache_path_command(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "c"))
    code, out, _ = run_cli(["cache", "path"], capsys)
    assert code == 0 and out.strip() == str(tmp_path / "c")
    code, _, err = run_cli(["cache", "wipe"], capsys)
    assert code == 2 and "cache path" in err


def test_offline_separate_without_cached_weights_says_how(capsys, tmp_path, monkeypatch):
    import numpy as np
    import soundfile as sf

    monkeypatch.setenv("SFSEP_CACHE", str(tmp_path / "empty"))
    song = tmp_path / "song.wav"
    sf.write(song, np.zeros((4410, 2), dtype=np.float32), 44100)
    code, _, err = run_cli(["separate", str(song), "--model", "scnet", "--offline", "-o", str(tmp_path / "out")],
                           capsys)
    assert code == 1
    assert "scnet_checkpoint_musdb18.ckpt" in err and "sfsep fetch scnet" in err and "--weights" in err
    code, _, err = run_cli(["separate", str(song), "--weights", str(song)], capsys)
    assert code == 2 and "--model" in err
