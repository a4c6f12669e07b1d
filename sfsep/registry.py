"""The model registry: models.toml -> ModelSpec.

models.toml (shipped inside the package) lists every model sfsep knows: its architecture family,
the architecture's configuration as plain data, the rate it was trained at, its stems in output
order, how to chunk it, and where its weights come from. Nothing here imports an architecture or
touches the network; `sfsep.hub` fetches weights and `sfsep.models` builds modules.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from .errors import ModelError, UnknownModelError, UsageError

DEFAULT_MODEL = "htdemucs"
"""The model `sfsep FILE` uses when --model is not given: demucs' own default, what its users
expect. Without its weights (offline, no network) the error suggests --model classic."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a checkpoint comes from: a Hugging Face repo file, a plain URL, a Google Drive id or
    a file shipped inside the sfsep package (`packaged`), and its mirrors, tried in order when this
    one fails: the same file on other hosts, or another file with the same weights and its own
    digest (e.g. a demucs model's safetensors on the Hub, then its legacy .th package)."""

    url: str | None = None
    packaged: str | None = None  # a path inside the sfsep package ("demo/demo.safetensors"): no download
    hf_repo: str | None = None
    hf_filename: str | None = None
    hf_revision: str | None = None
    gdrive_id: str | None = None  # a Google Drive file id (sfsep.hub handles Drive's confirmation page)
    filename: str | None = None  # the name in the cache
    sha256: str | None = None  # full hex digest, or a prefix (demucs names carry 8 hex digits)
    size: int | None = None  # bytes, where known
    checksum_source: str | None = None  # where sha256 and size were published
    mirrors: tuple["WeightsSource", ...] = ()  # the same file elsewhere (same name, digest, size), or another
    # file with the same weights (its own name, digest and size)

    @property
    def cache_name(self) -> str:
        if self.packaged:
            return PurePosixPath(self.packaged).name
        if self.filename:
            return self.filename
        if self.hf_filename:
            return Path(self.hf_filename).name
        if self.url:
            return self.url.rstrip("/").rsplit("/", 1)[-1]
        if self.gdrive_id:
            return f"gdrive-{self.gdrive_id}.pt"
        raise ModelError("a weights source needs a url, a Google Drive id or a Hugging Face repo and filename")


@dataclass(frozen=True)
class ModelSpec:
    """One model: what models.toml (or a user's MSST config) says about it, in typed fields."""

    name: str
    family: str
    stems: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)
    trained_rate: int | None = None  # None: the model runs at whatever rate the input has
    chunk_size: int | None = None
    overlap: float | None = 0.25  # a fraction of a chunk, for chunk styles "demucs" and "fade" only
    num_overlap: int | None = None  # MSST's count of chunks covering each sample ("msst", "msst_demucs")
    chunk_style: str = "fade"
    batch_size: int = 1
    normalize: str | None = None  # None, or how (inference.normalize_mixture): "msst", "demucs", "demucs_v2"
    description: str = ""
    license: str = ""
    citation: str = ""
    aliases: tuple[str, ...] = ()
    weights: tuple[WeightsSource, ...] = ()  # one per checkpoint (a bag has several)
    residual_stem: str | None = None  # a stem computed as the mixture minus the model's stems
    bag_weights: tuple[tuple[float, ...], ...] | None = None  # per checkpoint, per stem (demucs' bags)
    params: int | None = None  # parameter count of the published config (for size estimates)
    half_precision: bool = False  # the checkpoint stores float16 tensors (for size estimates)
    config_source: str = ""  # where the architecture config was taken from

    @property
    def any_rate(self) -> bool:
        return self.trained_rate is None

    def model_rate(self, input_rate: int) -> int:
        """The rate the model runs at for an input at `input_rate`."""
        return input_rate if self.trained_rate is None else self.trained_rate

    def config_copy(self) -> dict[str, Any]:
        return copy.deepcopy(self.config)


_SPEC_KEYS = frozenset(ModelSpec.__dataclass_fields__) - {"name"}
"""The keys a [models.NAME] table may hold: ModelSpec's fields, bar the name (the table's own)."""

_WEIGHTS_KEYS = set(WeightsSource.__dataclass_fields__)
_LOCATION_KEYS = {"url", "hf_repo", "hf_filename", "hf_revision", "gdrive_id"}
_OWN_FILE_KEYS = {"sha256", "size", "checksum_source"}
_MIRROR_KEYS = _LOCATION_KEYS | _OWN_FILE_KEYS
"""A mirror says where the same file is: the name in the cache, the digest and the size are its
entry's. A mirror that gives its own sha256 or size is another file holding the same weights
(demucs' legacy .th package behind its safetensors on the Hugging Face Hub): it keeps its own
name in the cache, and only its own digest and size hold for it."""


def _has_location(entry: dict) -> bool:
    return bool(entry.get("url") or entry.get("gdrive_id") or (entry.get("hf_repo") and entry.get("hf_filename"))
                or entry.get("packaged"))


def _check_packaged(name: str, entry: dict) -> None:
    """A packaged file is a relative path inside the package, with nothing else saying where it
    is, checked against its full sha256 (nothing is recorded for it, so models.toml vouches for it)."""
    packaged = entry.get("packaged")
    if packaged is None:
        return
    where = f"models.toml: model '{name}': packaged"
    path = PurePosixPath(packaged) if isinstance(packaged, str) else None
    if path is None or not packaged or path.is_absolute() or ".." in path.parts or "\\" in packaged:
        raise ModelError(f"{where} must be a relative path inside the sfsep package "
                         f"(e.g. \"demo/demo.safetensors\"), not {packaged!r}")
    others = sorted(key for key in ("url", "gdrive_id", "hf_repo", "hf_filename", "hf_revision", "filename", "mirrors")
                    if entry.get(key) is not None)
    if others:
        raise ModelError(f"{where}: a packaged file is found in the package only; drop {', '.join(others)}")
    sha256 = entry.get("sha256")
    if not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha256)):
        raise ModelError(f"{where}: a packaged file needs its full sha256 (64 hex digits), which every "
                         f"load checks")


def _mirrors(raw: Any, name: str, primary: WeightsSource) -> tuple[WeightsSource, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ModelError(f"models.toml: model '{name}': mirrors must be a list of tables "
                         f"([[models.{name}.weights.mirrors]])")
    mirrors = []
    for entry in raw:
        unknown = sorted(set(entry) - _MIRROR_KEYS)
        if unknown:
            raise ModelError(f"models.toml: model '{name}': unknown mirror keys {unknown} (a mirror takes "
                             f"{', '.join(sorted(_MIRROR_KEYS))}; its file name is the entry's unless it "
                             f"gives its own sha256 or size)")
        if not _has_location(entry):
            raise ModelError(f"models.toml: model '{name}': a mirror needs url, gdrive_id, or hf_repo and hf_filename")
        where = {key: entry.get(key) for key in _LOCATION_KEYS}
        if entry.get("sha256") is None and entry.get("size") is None:
            if entry.get("checksum_source") is not None:
                raise ModelError(f"models.toml: model '{name}': a mirror's checksum_source needs its own sha256 "
                                 f"or size (a mirror of the same file takes the entry's)")
            mirrors.append(replace(primary, filename=primary.cache_name, mirrors=(), **where))
            continue
        _check_sha256(name, entry.get("sha256"))
        own = {key: entry.get(key) for key in _OWN_FILE_KEYS}
        mirrors.append(WeightsSource(**where, **own))  # another file: its own name, digest and size
    return tuple(mirrors)


def _check_sha256(name: str, sha256: Any) -> None:
    if sha256 is not None and (not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{8,64}", sha256)):
        raise ModelError(f"models.toml: model '{name}': sha256 must be hex digits (the full 64, or a prefix "
                         f"of at least 8), not {sha256!r}")


def _weights_list(raw: Any, name: str = "?") -> tuple[WeightsSource, ...]:
    if raw is None:
        return ()
    entries = raw if isinstance(raw, list) else [raw]
    sources = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ModelError(f"models.toml: model '{name}': each weights entry must be a table")
        unknown = sorted(set(entry) - _WEIGHTS_KEYS)
        if unknown:
            raise ModelError(f"models.toml: model '{name}': unknown weights keys {unknown} "
                             f"(known: {', '.join(sorted(_WEIGHTS_KEYS))})")
        if not _has_location(entry):
            raise ModelError(f"models.toml: model '{name}': a weights entry needs url, gdrive_id, "
                             f"hf_repo and hf_filename, or packaged")
        _check_packaged(name, entry)
        fields = {key: value for key, value in entry.items() if key != "mirrors"}
        _check_sha256(name, fields.get("sha256"))
        primary = WeightsSource(**fields)
        sources.append(replace(primary, mirrors=_mirrors(entry.get("mirrors"), name, primary)))
    return tuple(sources)


CHUNK_STYLES = ("msst", "msst_demucs", "demucs", "fade", "bsrnn")
"""sfsep.inference's chunking styles ("bsrnn": BSRNN's reference separator, run by its executor).
Defined here, not in inference.py, so that reading the registry (`sfsep models`, `--help`) does
not import torch; inference.py takes them from here."""
NORMALIZATIONS = ("msst", "demucs", "demucs_v2")
"""How a reference standardizes the mixture (sfsep.inference.normalize_mixture says each formula)."""
COUNT_STYLES = ("msst", "msst_demucs")
"""Styles whose overlap is MSST's `num_overlap`: how many chunks cover each sample."""
FRACTION_STYLES = ("demucs", "fade")
"""Styles whose overlap is `overlap`: the fraction of a chunk shared with its neighbour."""
DEFAULT_OVERLAP = 0.25
DEFAULT_NUM_OVERLAP = 2
"""What a spec without the key gets (demucs' and sfsep's fraction; MSST's usual count)."""


def _chunk_style(name: str, value: str) -> str:
    if value not in CHUNK_STYLES:
        raise ModelError(f"models.toml: model '{name}': chunk_style must be one of {', '.join(CHUNK_STYLES)}")
    return value


def _normalize_kind(name: str, value: Any) -> str | None:
    """models.toml's `normalize`: false, or the reference's way of standardizing the mixture
    (true means "msst")."""
    if value is False or value is None:
        return None
    if value is True:
        return "msst"
    if value in NORMALIZATIONS:
        return value
    raise ModelError(f"models.toml: model '{name}': normalize must be false or one of {', '.join(NORMALIZATIONS)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _overlaps(name: str, style: str, table: dict[str, Any]) -> tuple[float | None, int | None]:
    """(overlap, num_overlap) of a table: each key belongs to its own chunk styles, with one
    meaning (a fraction of a chunk; MSST's integer count), so the other is None."""
    where = f"models.toml: model '{name}'"
    overlap, num_overlap = table.get("overlap"), table.get("num_overlap")
    if style in COUNT_STYLES:
        if overlap is not None:
            if _is_number(overlap) and overlap >= 1:
                raise ModelError(f"{where}: overlap = {overlap} is a count of chunks; chunk_style '{style}' "
                                 f"takes it as num_overlap = {overlap} (overlap is a fraction of a chunk, "
                                 f"for styles {' and '.join(FRACTION_STYLES)})")
            raise ModelError(f"{where}: overlap (a fraction of a chunk) does not apply to chunk_style "
                             f"'{style}'; give num_overlap, the integer count of chunks over each sample")
        if num_overlap is None:
            return None, DEFAULT_NUM_OVERLAP
        if not isinstance(num_overlap, int) or isinstance(num_overlap, bool) or num_overlap < 1:
            raise ModelError(f"{where}: num_overlap must be an integer count >= 1, not {num_overlap!r} "
                             f"(a fraction of a chunk is `overlap`, for styles {' and '.join(FRACTION_STYLES)})")
        return None, num_overlap
    if num_overlap is not None:
        raise ModelError(f"{where}: num_overlap is MSST's count, for chunk_style {' or '.join(COUNT_STYLES)}; "
                         f"chunk_style '{style}' "
                         + ("takes overlap, a fraction of a chunk in [0, 1)" if style in FRACTION_STYLES
                            else "has its own fixed chunking"))
    if style not in FRACTION_STYLES:
        if overlap is not None:
            raise ModelError(f"{where}: chunk_style '{style}' has its own fixed chunking; drop overlap")
        return None, None
    if overlap is None:
        return DEFAULT_OVERLAP, None
    if not _is_number(overlap) or not 0 <= overlap < 1:
        raise ModelError(f"{where}: overlap must be a fraction of a chunk in [0, 1), not {overlap!r}")
    return float(overlap), None


def _optional(name: str, table: dict[str, Any], key: str, kind: type, what: str) -> Any:
    """table[key] if it is a `kind` (bool is no int here), None when absent."""
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ModelError(f"models.toml: model '{name}': {key} must be {what}, not {value!r}")
    return value


def _bag_weights(name: str, value: Any) -> tuple[tuple[float, ...], ...] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or not value
            or not all(isinstance(row, list) and row and all(_is_number(item) for item in row) for row in value)):
        raise ModelError(f"models.toml: model '{name}': bag_weights must be one list of numbers per "
                         f"checkpoint (one number per stem), not {value!r}")
    return tuple(tuple(float(item) for item in row) for row in value)


def spec_from_table(name: str, table: dict[str, Any]) -> ModelSpec:
    """Build a ModelSpec from one [models.NAME] table; a key ModelSpec has no field for is an error."""
    unknown = sorted(set(table) - _SPEC_KEYS)
    if unknown:
        raise ModelError(f"models.toml: model '{name}': unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(unknown)} (known: {', '.join(sorted(_SPEC_KEYS))})")
    try:
        family = table["family"]
        stems = tuple(table["stems"])
    except KeyError as exc:
        raise ModelError(f"models.toml: model '{name}' lacks the key {exc}") from exc
    style = _chunk_style(name, table.get("chunk_style", "fade"))
    overlap, num_overlap = _overlaps(name, style, table)
    bag_weights = _bag_weights(name, table.get("bag_weights"))
    weights = _weights_list(table.get("weights"), name)
    if bag_weights is not None and (len(bag_weights) != len(weights)
                                    or any(len(row) != len(stems) for row in bag_weights)):
        raise ModelError(f"models.toml: model '{name}': bag_weights must be {len(weights)} rows (one per "
                         f"weights entry) of {len(stems)} numbers (one per stem)")
    return ModelSpec(
        name=name,
        family=family,
        stems=stems,
        config=dict(table.get("config", {})),
        trained_rate=table.get("trained_rate"),
        chunk_size=table.get("chunk_size"),
        overlap=overlap,
        num_overlap=num_overlap,
        chunk_style=style,
        batch_size=table.get("batch_size", 1),
        normalize=_normalize_kind(name, table.get("normalize", False)),
        description=table.get("description", ""),
        license=table.get("license", ""),
        citation=table.get("citation", ""),
        aliases=tuple(table.get("aliases", ())),
        weights=weights,
        residual_stem=_optional(name, table, "residual_stem", str, "a stem name"),
        bag_weights=bag_weights,
        params=_optional(name, table, "params", int, "an integer parameter count"),
        half_precision=bool(_optional(name, table, "half_precision", bool, "true or false")),
        config_source=_optional(name, table, "config_source", str, "a string") or "",
    )


def load_registry(path: str | Path | None = None) -> dict[str, ModelSpec]:
    """All models of a models.toml (the packaged one by default), by name."""
    if path is None:
        text = resources.files("sfsep").joinpath("models.toml").read_text(encoding="utf-8")
        source = "models.toml"
    else:
        text = Path(path).read_text(encoding="utf-8")
        source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"{source}: not valid TOML ({exc})") from exc
    return {name: spec_from_table(name, table) for name, table in data.get("models", {}).items()}


ENV_REGISTRY = "SFSEP_REGISTRY"


def registry() -> dict[str, ModelSpec]:
    """The packaged registry (or the models.toml that $SFSEP_REGISTRY names), read once."""
    return _registry_at(os.environ.get(ENV_REGISTRY) or None)


@lru_cache(maxsize=4)
def _registry_at(path: str | None) -> dict[str, ModelSpec]:
    if path is not None and not Path(path).is_file():
        raise ModelError(f"{ENV_REGISTRY}={path}: no such file (unset it to use the packaged models.toml)")
    return load_registry(path)


def get_spec(name: str) -> ModelSpec:
    """The spec of a model by name or alias; otherwise an UnknownModelError (a usage error) that
    suggests the closest names and lists the known ones."""
    import difflib

    models = registry()
    if name in models:
        return models[name]
    for spec in models.values():
        if name in spec.aliases:
            return spec
    known = ", ".join(sorted(models))
    names = list(models) + [alias for spec in models.values() for alias in spec.aliases]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(n) for n in close)}?" if close else ""
    raise UnknownModelError(f"unknown model '{name}'{hint} (known: {known}; `sfsep models` lists them)")


# --------------------------------------------------------------------------------------------
# User configs (MSST-style YAML, read by sfsep.checkpoint.load_yaml_config)

MSST_FAMILIES = ("bs_roformer", "mel_band_roformer", "scnet", "mdx23c", "htdemucs")
"""Families whose config is a whole MSST config (audio, model, training, inference sections)."""


def guess_family(config: dict[str, Any]) -> str | None:
    """The architecture an MSST config describes, from its keys; None when it cannot tell."""
    training = config.get("training") if isinstance(config.get("training"), dict) else {}
    declared = training.get("model_type") or config.get("model_type")
    if isinstance(declared, str) and declared:
        return declared
    if config.get("model") in ("htdemucs",) or isinstance(config.get("htdemucs"), dict):
        return "htdemucs"
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    if "num_bands" in model and "dim" in model:
        return "mel_band_roformer"
    if "freqs_per_bands" in model:
        return "bs_roformer"
    if "band_SR" in model or "num_dplayer" in model:
        return "scnet"
    if "num_scales" in model and "num_subbands" in model:
        return "mdx23c"
    if "bandsplits" in config and "t_timesteps" in config:
        return "bsrnn"
    return None


def spec_from_config(config: dict[str, Any], *, name: str, base: ModelSpec | None = None,
                     source: str = "--config") -> ModelSpec:
    """A ModelSpec for a user's config: an MSST YAML (stems, rate, chunking from its `training`,
    `audio` and `inference` sections) or, for other families, the architecture's own hparams.

    With `base` (the model named by --model) the family, weights source, license and citation
    come from it; without, the family is guessed from the config's keys.
    """
    guessed = guess_family(config)
    if base is not None and guessed is not None and guessed != base.family:
        raise UsageError(f"{source}: the config describes a {guessed} model but --model {base.name} is a "
                         f"{base.family}; drop --model or pick a {guessed} model")
    family = base.family if base is not None else guessed
    if family is None:
        raise UsageError(f"{source}: cannot tell which architecture this config is for; add --model NAME "
                         f"(a model of the same family, `sfsep models` lists them)")
    from .models.limits import check_fields  # every field's type and range, before anything reads them

    check_fields(family, config, source)
    common = dict(
        name=base.name if base is not None else name,
        family=family,
        description=f"{base.description if base is not None else family} (config from {source})",
        license=base.license if base is not None else "",
        citation=base.citation if base is not None else "",
        aliases=(),
        weights=base.weights if base is not None else (),
    )
    if family not in MSST_FAMILIES or ("model" not in config and "htdemucs" not in config):
        if base is None:
            raise UsageError(f"{source}: a {family} config carries no stems or rate; add --model NAME of a "
                             f"{family} model so that sfsep knows them")
        return replace(base, config=dict(config), description=common["description"], config_source=source)

    training = config.get("training") or {}
    audio = config.get("audio") or {}
    inference = config.get("inference") or {}
    instruments = [str(item) for item in training.get("instruments") or []]
    target = training.get("target_instrument")
    residual_stem: str | None = None
    if target:
        stems: tuple[str, ...] = (str(target),)
        others = [item for item in instruments if item != target]
        if len(others) == 1:
            residual_stem = others[0]
    elif instruments:
        stems = tuple(instruments)
    elif base is not None:
        stems = base.stems
    else:
        raise UsageError(f"{source}: the config has no training.instruments, so the stems are unknown")
    if family == "htdemucs":
        rate = int(training.get("samplerate") or audio.get("sample_rate") or 44100)
        chunk_size = int(round(rate * float(training.get("segment") or 11)))
        style = "msst_demucs"
    else:
        rate = int(audio.get("sample_rate") or (base.trained_rate if base is not None else None) or 44100)
        chunk_size = inference.get("chunk_size") or audio.get("chunk_size")
        chunk_size = int(chunk_size) if chunk_size else (base.chunk_size if base is not None else None)
        style = "msst"
    num_overlap = inference.get("num_overlap")
    if num_overlap is None and base is not None and base.chunk_style == style:
        num_overlap = base.num_overlap
    if num_overlap is None:
        num_overlap = DEFAULT_NUM_OVERLAP
    if not (_is_number(num_overlap) and int(num_overlap) == num_overlap and num_overlap >= 1):
        raise UsageError(f"{source}: inference.num_overlap must be an integer count >= 1, not {num_overlap!r}")
    num_overlap = int(num_overlap)
    return ModelSpec(
        **common,
        stems=stems,
        config=dict(config),
        trained_rate=rate,
        chunk_size=chunk_size,
        overlap=None,
        num_overlap=num_overlap,
        chunk_style=style,
        batch_size=int(inference.get("batch_size") or 1),
        normalize="msst" if inference.get("normalize", False) else None,
        residual_stem=residual_stem,
        config_source=source,
    )
