"""The model registry: models.toml -> ModelSpec.

models.toml (shipped inside the package) lists every model sfsep knows: its architecture family,
the architecture's configuration as plain data, the rate it was trained at, its stems in output
order, how to chunk it, and where its weights come from. Nothing here imports an architecture or
touches the network; `sfsep.hub` fetches weights and `sfsep.models` builds modules.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from .errors import ModelError

DEFAULT_MODEL = "classic"
"""The model `sfsep FILE` uses when --model is not given (the one that works offline)."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a checkpoint comes from: a Hugging Face repo file or a plain URL."""

    url: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None
    hf_revision: str | None = None
    filename: str | None = None  # the name in the cache
    sha256: str | None = None  # full hex digest, or a prefix (demucs names carry 8 hex digits)
    size: int | None = None  # bytes, where known

    @property
    def cache_name(self) -> str:
        if self.filename:
            return self.filename
        if self.hf_filename:
            return Path(self.hf_filename).name
        if self.url:
            return self.url.rstrip("/").rsplit("/", 1)[-1]
        raise ModelError("a weights source needs a url or a Hugging Face repo and filename")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    stems: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)
    trained_rate: int | None = None  # None: the model runs at whatever rate the input has
    chunk_size: int | None = None
    overlap: float = 0.25
    chunk_style: str = "fade"
    batch_size: int = 1
    normalize: bool = False
    description: str = ""
    license: str = ""
    citation: str = ""
    aliases: tuple[str, ...] = ()
    weights: tuple[WeightsSource, ...] = ()  # one per checkpoint (a bag has several)
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific settings

    @property
    def any_rate(self) -> bool:
        return self.trained_rate is None

    def model_rate(self, input_rate: int) -> int:
        """The rate the model runs at for an input at `input_rate`."""
        return input_rate if self.trained_rate is None else self.trained_rate

    def config_copy(self) -> dict[str, Any]:
        return copy.deepcopy(self.config)


_SPEC_KEYS = {
    "family", "stems", "config", "trained_rate", "chunk_size", "overlap", "chunk_style", "batch_size",
    "normalize", "description", "license", "citation", "aliases", "weights",
}


def _weights_list(raw: Any) -> tuple[WeightsSource, ...]:
    if raw is None:
        return ()
    entries = raw if isinstance(raw, list) else [raw]
    return tuple(WeightsSource(**entry) for entry in entries)


def spec_from_table(name: str, table: dict[str, Any]) -> ModelSpec:
    """Build a ModelSpec from one [models.NAME] table (unknown keys go to `extra`)."""
    try:
        family = table["family"]
        stems = tuple(table["stems"])
    except KeyError as exc:
        raise ModelError(f"models.toml: model '{name}' lacks the key {exc}") from exc
    extra = {key: value for key, value in table.items() if key not in _SPEC_KEYS}
    return ModelSpec(
        name=name,
        family=family,
        stems=stems,
        config=dict(table.get("config", {})),
        trained_rate=table.get("trained_rate"),
        chunk_size=table.get("chunk_size"),
        overlap=table.get("overlap", 0.25),
        chunk_style=table.get("chunk_style", "fade"),
        batch_size=table.get("batch_size", 1),
        normalize=table.get("normalize", False),
        description=table.get("description", ""),
        license=table.get("license", ""),
        citation=table.get("citation", ""),
        aliases=tuple(table.get("aliases", ())),
        weights=_weights_list(table.get("weights")),
        extra=extra,
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


@lru_cache(maxsize=1)
def registry() -> dict[str, ModelSpec]:
    """The packaged registry, read once."""
    return load_registry()


def get_spec(name: str) -> ModelSpec:
    """The spec of a model by name or alias; a ModelError that lists the known names otherwise."""
    models = registry()
    if name in models:
        return models[name]
    for spec in models.values():
        if name in spec.aliases:
            return spec
    known = ", ".join(sorted(models))
    raise ModelError(f"unknown model '{name}' (known: {known}; `sfsep models` lists them)")
