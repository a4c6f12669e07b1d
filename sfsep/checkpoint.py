"""Checkpoints and configs from disk, read without running anything they contain.

`load_checkpoint(path)` returns the state_dict of a checkpoint file and, for demucs packages, the
recorded class name and constructor kwargs. Every file goes through
`torch.load(weights_only=True)`: torch's restricted unpickler, which builds tensors and plain
containers and refuses any other global reference. A demucs "package" (`{klass, args, kwargs,
state, ...}`) pickles the model class by reference, so for it the restricted unpickler is told
about a short list of known class names (`demucs.htdemucs.HTDemucs`, ...), each mapped to an inert
placeholder class that records the name and has no behaviour; `fractions.Fraction` (the segment
length) and numpy's array/scalar rebuilders (metrics in training checkpoints) are the only other
additions. A pickle that names anything else (e.g. `os.system` in a
`__reduce__`) is refused before that object is built, and the refusal names the reference.

A safetensors file (recognised by its header, whatever its name) is read with the `safetensors`
package, which parses a JSON header and raw tensor bytes: no pickle at all. demucs 4.1.0 exports
its models to the Hugging Face Hub this way, one `<signature>.safetensors` per model: the package's
state as the tensors, and the rest of the package as string metadata, `klass` (the class's dotted
name), `args` and `kwargs` as JSON, in which a Fraction (the segment) is the object
`{"_type": "fraction", "numerator": n, "denominator": d}`. Such a file yields the same Checkpoint
as the .th package it was made from (class name, kwargs with the segment as "n/d", state). A
safetensors file without that metadata is a plain state_dict. Quantized exports (a `structure`
key) are refused like their .th originals.

Wrappers are peeled in the order the reference loader uses: `state` (demucs packages), then
`state_dict`, then `model_state_dict` (full training checkpoints). Half-precision tensors are
upcast to float32. `load_state(module, state)` is a strict load whose error lists the first
missing, unexpected and mis-shaped keys.

`load_yaml_config(path)` reads an MSST-style YAML config with a safe loader that also accepts the
`!!python/tuple` tag (as a list) and YAML-1.2-style floats such as `1e-3`; every other
`!!python/...` tag is refused.
"""

from __future__ import annotations

import fractions
import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .errors import ModelError, UsageError, WeightsError

WRAPPER_KEYS = ("state", "state_dict", "model_state_dict")
MISMATCH_LINES = 8  # keys listed per kind in a mismatch message


class Placeholder:
    """Stands for a class that a checkpoint references by name; never instantiated or called."""

    dotted_name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - defensive
        raise WeightsError(f"checkpoint: refusing to instantiate {self.dotted_name}")


def _placeholder(dotted_name: str) -> type:
    name = dotted_name.rpartition(".")[2]
    return type(f"Placeholder_{name}", (Placeholder,), {"dotted_name": dotted_name, "__module__": __name__})


KNOWN_CLASSES = (
    "demucs.htdemucs.HTDemucs",
    "demucs.hdemucs.HDemucs",
    "demucs.demucs.Demucs",
    "demucs.tasnet.ConvTasNet",
    "demucs.tasnet_v2.ConvTasNet",
    "demucs.transformer.CrossTransformerEncoder",
)
"""Class references a demucs package may hold; each is read as an inert placeholder."""

_PLACEHOLDERS = {name: _placeholder(name) for name in KNOWN_CLASSES}


@dataclass
class Checkpoint:
    """What a checkpoint file holds, as plain data."""

    path: Path
    state: dict[str, torch.Tensor]
    wrapper: str | None = None  # the key the state_dict came from, if any
    class_name: str | None = None  # demucs packages: the model class they name
    kwargs: dict[str, Any] = field(default_factory=dict)  # demucs packages: constructor kwargs
    upcast: int = 0  # tensors converted from half precision


def _numpy_globals() -> list:
    """numpy arrays and scalars (training checkpoints store metrics as numpy values): their
    rebuild functions only make arrays from bytes, under either numpy module path."""
    import numpy

    core = getattr(numpy, "_core", None) or numpy.core
    multiarray = core.multiarray
    found = []
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        found += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    dtypes = getattr(numpy, "dtypes", None)
    dtype_classes = [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType") and name != "ObjectDType"] \
        if dtypes is not None else []
    return found + [numpy.ndarray, numpy.dtype] + dtype_classes


def _safe_globals() -> list:
    return [(cls, name) for name, cls in _PLACEHOLDERS.items()] + [fractions.Fraction] + _numpy_globals()


def _refused_reference(message: str) -> str | None:
    match = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"global ([\w.]+)", message)
    return match.group(1) if match else None


def read_pickle(path: str | Path) -> Any:
    """`torch.load(weights_only=True)` with the known demucs classes as placeholders."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file (check --weights)")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reference = _refused_reference(str(exc))
        what = f"references {reference}, which" if reference else "holds an object that"
        raise WeightsError(
            f"{path}: refused to load: the checkpoint {what} sfsep does not allow (only tensors, plain "
            f"containers and known model class names are read; nothing in a checkpoint is executed). "
            f"If you trust this file, convert it to a plain state_dict with the tool that made it") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path}: not a readable PyTorch checkpoint ({first}); the file may be truncated or of another "
            f"format (delete it from the cache and fetch it again, or check --weights)") from exc


def _plain(value: Any) -> Any:
    """Package kwargs as plain data: Fractions become 'n/d' strings, tuples lists."""
    if isinstance(value, fractions.Fraction):
        return f"{value.numerator}/{value.denominator}"
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def unwrap(content: Any, path: Path) -> tuple[dict[str, torch.Tensor], str | None, dict]:
    """The state_dict inside a loaded checkpoint, the wrapper key it came from, and the package."""
    package: dict = {}
    wrapper = None
    state = content
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            if wrapper is None:
                package = state
                wrapper = key
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{path}: holds no state_dict (a {type(content).__name__} without tensors)")
    if state.get("__quantized"):
        raise WeightsError(
            f"{path}: a DiffQ-quantized demucs checkpoint (mdx_q / mdx_extra_q), which sfsep does not read; "
            f"use the unquantized model")
    tensors = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: the state_dict entry '{key}' is a {type(value).__name__}, not a tensor")
        tensors[str(key)] = value
    return tensors, wrapper, package


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file safely (see the module docstring): a safetensors file or a pickle."""
    path = Path(path)
    if is_safetensors(path):
        state, class_name, kwargs = read_safetensors(path)
        wrapper = None
    else:
        content = read_pickle(path)
        state, wrapper, package = unwrap(content, path)
        klass = package.get("klass") if package else None
        class_name = klass.dotted_name if isinstance(klass, type) and issubclass(klass, Placeholder) else None
        kwargs = _plain(package.get("kwargs") if isinstance(package.get("kwargs"), dict) else {})
    upcast = 0
    for key, tensor in state.items():
        if tensor.dtype in (torch.float16, torch.bfloat16):
            state[key] = tensor.float()
            upcast += 1
    return Checkpoint(path, state, wrapper, class_name, kwargs, upcast)


# --------------------------------------------------------------------------------------------
# safetensors (demucs' Hugging Face exports, or a plain state_dict)

SAFETENSORS_SUFFIX = ".safetensors"
PACKAGE_METADATA = ("klass", "args", "kwargs")
"""The metadata keys of a demucs export: the package's class, positional and keyword arguments."""
MODEL_CLASSES = tuple(name for name in KNOWN_CLASSES if name != "demucs.transformer.CrossTransformerEncoder")
"""The classes an export's `klass` may name: demucs' models (the transformer is only a part)."""


def is_safetensors(path: Path) -> bool:
    """True when the file is named *.safetensors or starts like one: an 8-byte little-endian
    header length that fits in the file, then the JSON header's '{'. (A PyTorch zip starts with
    'PK', a legacy pickle with 0x80: neither reads as such a length.)"""
    if path.suffix == SAFETENSORS_SUFFIX:
        return True
    try:
        with open(path, "rb") as handle:
            start = handle.read(9)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return False
    if len(start) < 9:
        return False
    header = int.from_bytes(start[:8], "little")
    return 2 <= header <= size - 8 and start[8:9] == b"{"


def _bad_export(path: Path, problem: str) -> WeightsError:
    return WeightsError(
        f"{path}: bad demucs safetensors metadata: {problem}; not what demucs' export writes, or a damaged file "
        f"(delete it and fetch it again, or pass --weights PATH to another checkpoint)")


def _json_field(path: Path, metadata: dict[str, str], key: str) -> Any:
    text = metadata[key]
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad_export(path, f"'{key}' is not valid JSON ({exc.msg} at character {exc.pos})") from None


def _decode_fractions(path: Path, value: Any, where: str) -> Any:
    """demucs' JSON for package arguments, as the plain data a .th package gives (`_plain`): an
    object {"_type": "fraction", "numerator": n, "denominator": d} becomes the string "n/d"."""
    if isinstance(value, dict):
        if "_type" in value:
            if value.get("_type") != "fraction" or set(value) != {"_type", "numerator", "denominator"}:
                raise _bad_export(path, f"{where} is an encoded value sfsep does not know ({json.dumps(value)[:80]}; "
                                        f"only {{\"_type\": \"fraction\", \"numerator\": n, \"denominator\": d}})")
            numerator, denominator = value["numerator"], value["denominator"]
            if not all(isinstance(item, int) and not isinstance(item, bool) for item in (numerator, denominator)) \
                    or denominator == 0:
                raise _bad_export(path, f"{where} is a fraction {numerator!r}/{denominator!r}, not of two integers "
                                        f"with a non-zero denominator")
            return _plain(fractions.Fraction(numerator, denominator))
        return {key: _decode_fractions(path, item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_fractions(path, item, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


def _package_metadata(path: Path, metadata: dict[str, str]) -> tuple[str | None, dict[str, Any]]:
    """(class name, kwargs) of a demucs export's metadata; (None, {}) for a plain state_dict."""
    present = [key for key in PACKAGE_METADATA if key in metadata]
    if not present:
        return None, {}
    if "structure" in metadata:
        raise WeightsError(
            f"{path}: a DiffQ-quantized demucs export (mdx_q / mdx_extra_q, a 'structure' in its metadata), which "
            f"sfsep does not read; use the unquantized model")
    missing = [key for key in PACKAGE_METADATA if key not in metadata]
    if missing:
        raise _bad_export(path, f"it has {', '.join(present)} but not {', '.join(missing)}")
    class_name = metadata["klass"]
    if class_name not in MODEL_CLASSES:
        raise _bad_export(path, f"'klass' names {class_name!r}, not a model class sfsep knows "
                                f"({', '.join(MODEL_CLASSES)})")
    args = _json_field(path, metadata, "args")
    if not isinstance(args, list):
        raise _bad_export(path, f"'args' is a JSON {type(args).__name__}, not a list")
    kwargs = _json_field(path, metadata, "kwargs")
    if not isinstance(kwargs, dict):
        raise _bad_export(path, f"'kwargs' is a JSON {type(kwargs).__name__}, not an object")
    return class_name, _decode_fractions(path, kwargs, "kwargs")


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], str | None, dict[str, Any]]:
    """(state_dict, class name, kwargs) of a safetensors file; the metadata is checked before any
    tensor is read."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file (check --weights)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            class_name, kwargs = _package_metadata(path, metadata)
            state = {str(key): handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path}: not a readable safetensors file ({first}); the file may be truncated or of another format "
            f"(delete it from the cache and fetch it again, or check --weights)") from exc
    if not state:
        raise WeightsError(f"{path}: the safetensors file holds no tensors")
    return state, class_name, kwargs


# --------------------------------------------------------------------------------------------
# Strict loading


def _shape(tensor: torch.Tensor) -> str:
    return "[" + ", ".join(str(size) for size in tensor.shape) + "]"


def _strip_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Wrapper prefixes some trainers add (DataParallel 'module.', Lightning 'model.')."""
    if set(state) == expected:
        return state
    for prefix in ("module.", "model."):
        stripped = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        if stripped and set(stripped) == expected:
            return stripped
    return state


def mismatch_message(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> str | None:
    """None when `state` fits `module` exactly; otherwise a message listing the differences."""
    own = module.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    shapes = [key for key in own if key in state and own[key].shape != state[key].shape]
    if not (missing or unexpected or shapes):
        return None

    def listing(title: str, keys: list[str], describe) -> str:
        if not keys:
            return ""
        shown = "; ".join(describe(key) for key in keys[:MISMATCH_LINES])
        more = f"; ... {len(keys) - MISMATCH_LINES} more" if len(keys) > MISMATCH_LINES else ""
        return f"\n  {len(keys)} {title}: {shown}{more}"

    return (
        f"{source}: the checkpoint does not fit the model ({len(state)} tensors in the file, "
        f"{len(own)} in the model); is it a checkpoint of this architecture and config?"
        + listing("missing from the checkpoint", missing, lambda key: f"{key} {_shape(own[key])}")
        + listing("unexpected in the checkpoint", unexpected, lambda key: f"{key} {_shape(state[key])}")
        + listing("with other shapes", shapes,
                  lambda key: f"{key} model {_shape(own[key])} vs file {_shape(state[key])}")
        + "\n  (pass the model's config with --config, or pick the matching --model)"
    )


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path = "checkpoint") -> torch.nn.Module:
    """Strictly load `state` into `module`; a ModelError lists the first differences."""
    state = _strip_prefix(state, set(module.state_dict()))
    message = mismatch_message(module, state, str(source))
    if message is not None:
        raise ModelError(message)
    module.load_state_dict(state, strict=True)
    return module


# --------------------------------------------------------------------------------------------
# MSST YAML configs


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader + `!!python/tuple` (read as a list) + floats written like `1e-3`."""


ConfigLoader.yaml_implicit_resolvers = {key: list(value) for key, value in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)
ConfigLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node, deep=True)
)


def parse_yaml_config(text: str, source: str = "config") -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader
    except yaml.constructor.ConstructorError as exc:
        raise UsageError(
            f"{source}: the YAML uses a tag sfsep does not accept ({exc.problem}); only plain YAML and "
            f"!!python/tuple are read") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping at the top of the config, got {type(data).__name__}")
    return data


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """An MSST-style YAML config as plain data (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read it ({exc.strerror or exc})") from exc
    return parse_yaml_config(text, f"--config {path}")
