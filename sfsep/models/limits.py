"""Limits on a user's architecture config: each field's type and range, and whether the model fits.

A user's `--config` reaches the builders as plain data, so one absurd number used to cost minutes
and gigabytes before anything failed (`num_dplayer: 1000000000` built layers until a MemoryError;
`chunk_size: 1e12` asked for terabytes at the first chunk). Before any module is built:

1. `check_fields(family, config, source)`: every field sfsep reads has a kind (integer, number,
   boolean, string, list) and a range. The ranges are wide: they only exclude what no model of
   the family could use, and they keep step 2 cheap (a few hundred layers at most). A value
   outside them is a UsageError naming the field, e.g. `model.num_dplayer must be an integer
   from 0 to 256, not 1000000000`.
2. `estimate(spec)`: the parameter count, exact, from the module built on the "meta" device
   (shapes only, no storage is allocated), and a lower bound of one chunk's activations from the
   run-time contract (batch x chunk length): the chunk's waveforms in and out, plus the largest
   feature map the family must hold at once (the mixture's and the stems' spectrograms for the
   STFT models, the band features of the RoFormers, ...). Attention matrices and other
   transients are left out, so the bound never exceeds what a run really takes.
3. `check_fits(spec, source)`: refuses, in one line, a model whose parameters plus that bound
   exceed the memory available (MemAvailable, capped by a cgroup limit), and names the field
   that makes it so: the one whose published value brings the estimate down the most.

Nothing here runs a model or allocates a tensor of the model's size.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ModelError, UsageError

# --------------------------------------------------------------------------------------------
# Field rules

MAX_SAMPLES = 1 << 48
"""Upper bound of sample counts (chunk sizes): far beyond any memory, so the memory check, not
the range, is what refuses a chunk that is merely too long for this machine."""
MAX_WIDTH = 1 << 16  # feature dimensions, channel counts
MAX_LAYERS = 256  # layer and block counts
MAX_FFT = 1 << 16
MAX_RATE = 768_000


@dataclass(frozen=True)
class Field:
    """What one config field may hold.

    kind: "int" | "number" | "bool" | "str" | "list"; low/high: the inclusive range of a number
    (or of each item of a list, through `item`); whole: an integer field that sfsep converts
    itself, so 1e5 written as a float is accepted; nullable: null (None) is allowed; typical:
    the value published models use, which `check_fits` puts back to find the field to blame.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    whole: bool = False
    nullable: bool = False
    typical: Any = None
    item: "Field | None" = None
    min_items: int = 0
    max_items: int = 4096
    choices: tuple[str, ...] = ()
    seconds: bool = False  # a number of seconds, also written as a fraction string ("39/5")
    noun: str = ""  # what the field holds, for messages ("an integer count of chunks")


def Int(low: int, high: int, typical: int | None = None, *, whole: bool = False, nullable: bool = False,
        noun: str = "") -> Field:
    return Field("int", low, high, whole=whole, nullable=nullable, typical=typical, noun=noun)


def Number(low: float, high: float, typical: float | None = None, *, nullable: bool = False,
           seconds: bool = False) -> Field:
    return Field("number", low, high, nullable=nullable, typical=typical, seconds=seconds)


BOOL = Field("bool")
STR = Field("str")
NULLABLE_STR = Field("str", nullable=True)


def List(item: Field, min_items: int = 1, max_items: int = 4096, typical: Any = None, *,
         nullable: bool = False) -> Field:
    return Field("list", item=item, min_items=min_items, max_items=max_items, typical=typical, nullable=nullable)


def Choice(*choices: str) -> Field:
    return Field("str", choices=choices)


STEMS = List(STR, 1, 64)

# Sections every MSST config may carry, as sfsep reads them (registry.spec_from_config, the builders).
MSST_COMMON: dict[str, Field] = {
    "audio.chunk_size": Int(1, MAX_SAMPLES, 485100, whole=True),
    "audio.sample_rate": Int(1000, MAX_RATE, 44100, whole=True),
    "audio.num_channels": Int(1, 2, 2, whole=True),
    "audio.n_fft": Int(16, MAX_FFT, 2048, whole=True),
    "audio.hop_length": Int(1, MAX_FFT, 441, whole=True),
    "audio.dim_f": Int(1, MAX_FFT // 2 + 1, 1024, whole=True),
    "audio.dim_t": Int(1, MAX_SAMPLES, whole=True),
    "audio.min_mean_abs": Number(0.0, 1.0),
    "inference.batch_size": Int(1, 4096, 1, whole=True),
    "inference.num_overlap": Int(1, 256, 2, whole=True, noun="an integer count of chunks"),
    "inference.chunk_size": Int(1, MAX_SAMPLES, 485100, whole=True),
    "inference.dim_t": Int(1, MAX_SAMPLES, whole=True),
    "inference.normalize": BOOL,
    "training.instruments": STEMS,
    "training.target_instrument": NULLABLE_STR,
    "training.samplerate": Int(1000, MAX_RATE, 44100, whole=True),
    "training.segment": Number(0.0, 3600.0, 11, seconds=True),
    "training.channels": Int(1, 2, 2, whole=True),
}

_ROFORMER: dict[str, Field] = {
    "dim": Int(1, MAX_WIDTH, 384),
    "depth": Int(1, MAX_LAYERS, 8),
    "stereo": BOOL,
    "num_stems": Int(1, 64, 1),
    "time_transformer_depth": Int(0, MAX_LAYERS, 1),
    "freq_transformer_depth": Int(0, MAX_LAYERS, 1),
    "linear_transformer_depth": Int(0, MAX_LAYERS),
    "dim_head": Int(1, MAX_WIDTH, 64),
    "heads": Int(1, 1024, 8),
    "stft_n_fft": Int(16, 16384, 2048),
    "stft_hop_length": Int(1, 16384, 441),
    "stft_win_length": Int(1, 16384, 2048),
    "stft_normalized": BOOL,
    "zero_dc": BOOL,
    "mlp_expansion_factor": Int(1, 64, 4),
    "skip_connection": BOOL,
    "use_pope": BOOL,
    "attn_dropout": Number(0.0, 1.0),
    "ff_dropout": Number(0.0, 1.0),
    "mask_estimator_depth": Int(1, 64, 2),
    # training-only keys the builders accept and ignore
    "dim_freqs_in": Int(1, MAX_FFT, nullable=True),
    "flash_attn": BOOL,
    "sage_attention": BOOL,
    "use_torch_checkpoint": BOOL,
    "multi_stft_resolution_loss_weight": Number(0.0, 1e6),
    "multi_stft_resolutions_window_sizes": List(Int(1, MAX_FFT), 0, 64),
    "multi_stft_hop_size": Int(1, MAX_FFT),
    "multi_stft_normalized": BOOL,
    "match_input_audio_length": BOOL,
}

BS_ROFORMER = {
    **MSST_COMMON,
    **{f"model.{key}": rule for key, rule in _ROFORMER.items()},
    "model.freqs_per_bands": List(Int(1, 16384 // 2 + 1), 1, 4096),
}
MEL_BAND_ROFORMER = {
    **MSST_COMMON,
    **{f"model.{key}": rule for key, rule in _ROFORMER.items()},
    "model.num_bands": Int(1, 1024, 60),
    "model.sample_rate": Int(1000, MAX_RATE, 44100),
}

SCNET = {
    **MSST_COMMON,
    "model.sources": STEMS,
    "model.audio_channels": Int(1, 2, 2),
    "model.dims": List(Int(1, MAX_WIDTH), 2, 16, [4, 32, 64, 128]),
    "model.nfft": Int(16, MAX_FFT, 4096),
    "model.hop_size": Int(1, MAX_FFT, 1024),
    "model.win_size": Int(1, MAX_FFT, 4096),
    "model.normalized": BOOL,
    "model.band_SR": List(Number(0.0, 1.0), 1, 16),
    "model.band_stride": List(Int(1, 4096), 1, 16),
    "model.band_kernel": List(Int(1, 4096), 1, 16),
    "model.conv_depths": List(Int(0, MAX_LAYERS), 1, 16, [3, 2, 1]),
    "model.compress": Number(1.0, 4096.0),
    "model.conv_kernel": Int(1, 1025),
    "model.num_dplayer": Int(0, MAX_LAYERS, 6),
    "model.expand": Int(1, 64, 1),
}

MDX23C = {
    **MSST_COMMON,
    "model.num_subbands": Int(1, 64, 4),
    "model.num_scales": Int(1, 16, 5),
    "model.scale": List(Int(1, 16), 2, 2),
    "model.num_blocks_per_scale": Int(1, 64, 2),
    "model.num_channels": Int(1, MAX_WIDTH, 128),
    "model.growth": Int(0, MAX_WIDTH, 128),
    "model.bottleneck_factor": Int(1, 1024, 4),
    "model.norm": STR,
    "model.act": STR,
}

# demucs' HTDemucs constructor, as kwargs of a package or the `htdemucs` section of an MSST config.
_HTDEMUCS: dict[str, Field] = {
    "sources": STEMS,
    "audio_channels": Int(1, 2, 2),
    "samplerate": Int(1000, MAX_RATE, 44100),
    "segment": Number(0.0, 3600.0, 10, seconds=True),
    "use_train_segment": BOOL,
    "channels": Int(1, MAX_WIDTH, 48),
    "channels_time": Int(1, MAX_WIDTH, nullable=True),
    "growth": Number(1.0, 16.0, 2),
    "num_subbands": Int(1, 64, 1),
    "nfft": Int(16, MAX_FFT, 4096),
    "wiener_iters": Int(0, 64),
    "end_iters": Int(0, 64),
    "wiener_residual": BOOL,
    "cac": BOOL,
    "depth": Int(1, 16, 4),
    "rewrite": BOOL,
    "multi_freqs": List(Number(0.0, 1.0), 0, 64, nullable=True),
    "multi_freqs_depth": Int(0, 16),
    "freq_emb": Number(0.0, 1e3),
    "emb_scale": Number(0.0, 1e6),
    "emb_smooth": BOOL,
    "kernel_size": Int(1, 1024, 8),
    "time_stride": Int(1, 1024, 2),
    "stride": Int(1, 1024, 4),
    "context": Int(0, 1024, 1),
    "context_enc": Int(0, 1024, 0),
    "norm_starts": Int(0, 1024),
    "norm_groups": Int(1, 1024),
    "dconv_mode": Int(0, 3),
    "dconv_depth": Int(0, 64, 2),
    "dconv_comp": Number(1.0, 4096.0, 8),
    "dconv_init": Number(0.0, 1e3),
    "bottom_channels": Int(0, MAX_WIDTH, 512),
    "t_layers": Int(0, MAX_LAYERS, 5),
    "t_emb": Choice("sin", "cape", "scaled"),
    "t_hidden_scale": Number(0.0, 64.0, 4.0),
    "t_heads": Int(1, 1024, 8),
    "t_dropout": Number(0.0, 1.0),
    "t_max_positions": Int(1, 10_000_000, 10000),
    "t_norm_in": BOOL,
    "t_norm_in_group": BOOL,
    "t_group_norm": BOOL,
    "t_norm_first": BOOL,
    "t_norm_out": BOOL,
    "t_max_period": Number(1.0, 1e12),
    "t_weight_decay": Number(0.0, 1e6),
    "t_lr": Number(0.0, 1e6, nullable=True),
    "t_layer_scale": BOOL,
    "t_gelu": BOOL,
    "t_weight_pos_embed": Number(0.0, 1e6),
    "t_sin_random_shift": Int(0, MAX_SAMPLES),
    "t_cape_mean_normalize": BOOL,
    "t_cape_augment": BOOL,
    "t_cape_glob_loc_scale": List(Number(0.0, 1e9), 3, 3),
    "t_sparse_self_attn": BOOL,
    "t_sparse_cross_attn": BOOL,
    "t_mask_type": STR,
    "t_mask_random_seed": Int(0, 2**63 - 1),
    "t_sparse_attn_window": Int(1, MAX_SAMPLES),
    "t_global_window": Int(1, MAX_SAMPLES),
    "t_sparsity": Number(0.0, 1.0),
    "t_auto_sparsity": BOOL,
    "t_cross_first": BOOL,
    "rescale": Number(0.0, 1e3),
}
HTDEMUCS_MSST = {**MSST_COMMON, **{f"htdemucs.{key}": rule for key, rule in _HTDEMUCS.items()}}
HTDEMUCS_KWARGS = _HTDEMUCS

CONV_TASNET = {
    "sources": STEMS,
    "N": Int(1, MAX_WIDTH, 256),
    "L": Int(2, MAX_FFT, 20),
    "B": Int(1, MAX_WIDTH, 256),
    "H": Int(1, MAX_WIDTH, 512),
    "P": Int(1, 1025, 3),
    "X": Int(1, MAX_LAYERS, 10),
    "R": Int(1, MAX_LAYERS, 4),
    "audio_channels": Int(1, 2, 2),
    "norm_type": STR,
    "causal": BOOL,
    "mask_nonlinear": STR,
    "samplerate": Int(1000, MAX_RATE, 44100),
    "segment_length": Int(1, MAX_SAMPLES, 352800),
}

BSRNN = {
    "sr": Int(1000, MAX_RATE, 44100, whole=True),
    "n_fft": Int(16, MAX_FFT, 2048, whole=True),
    "bandsplits": List(List(Number(0.0, MAX_RATE), 2, 2), 1, 1024),
    "t_timesteps": Int(2, MAX_SAMPLES, 263, whole=True),
    "bottleneck_layer": STR,
    "fc_dim": Int(1, MAX_WIDTH, 128),
    "rnn_dim": Int(1, MAX_WIDTH, 256),
    "rnn_type": STR,
    "bidirectional": BOOL,
    "num_layers": Int(1, MAX_LAYERS, 12),
    "mlp_dim": Int(1, MAX_WIDTH, 512),
    "return_mask": BOOL,
    "complex_as_channel": BOOL,
    "is_mono": BOOL,
    "_featurizer.direct_transform.n_fft": Int(16, MAX_FFT, whole=True),
    "_featurizer.direct_transform.win_length": Int(1, MAX_FFT, whole=True),
    "_featurizer.direct_transform.hop_length": Int(1, MAX_FFT, 512, whole=True),
    "_featurizer.inverse_transform.n_fft": Int(16, MAX_FFT, whole=True),
    "_featurizer.inverse_transform.win_length": Int(1, MAX_FFT, whole=True),
    "_featurizer.inverse_transform.hop_length": Int(1, MAX_FFT, whole=True),
    "_audio_params.sr": Int(1000, MAX_RATE, whole=True),
    "_audio_params.win_size": Number(0.0, 3600.0, 3),
    "_audio_params.hop_size": Number(0.0, 3600.0, 0.5),
    "_audio_params.batch_size": Int(1, 4096, 8, whole=True),
    "_audio_params.is_mono": BOOL,
    "_audio_params.target": STR,
    "_audio_params.window": NULLABLE_STR,
}


def field_rules(family: str, config: dict[str, Any]) -> dict[str, Field]:
    """The rules for a config of `family` (by dotted path); empty for families without a config."""
    if family == "bs_roformer":
        return BS_ROFORMER
    if family == "mel_band_roformer":
        return MEL_BAND_ROFORMER
    if family == "scnet":
        return SCNET
    if family == "mdx23c":
        return MDX23C
    if family == "htdemucs":
        return HTDEMUCS_MSST if isinstance(config.get("htdemucs"), dict) else HTDEMUCS_KWARGS
    if family == "conv_tasnet":
        return CONV_TASNET
    if family == "bsrnn":
        return BSRNN
    return {}


_MISSING = object()


def _lookup(config: dict[str, Any], path: str) -> Any:
    value: Any = config
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _span(rule: Field) -> str:
    return f"from {_plain(rule.low)} to {_plain(rule.high)}"


def _plain(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)


def _describe(rule: Field) -> str:
    """What a field must hold, for a message: "an integer from 1 to 65536", ..."""
    if rule.kind == "int":
        return f"{rule.noun or 'an integer'} {_span(rule)}"
    if rule.kind == "number":
        what = "a number of seconds" if rule.seconds else "a number"
        return f"{what} {_span(rule)}"
    if rule.kind == "bool":
        return "true or false"
    if rule.kind == "str":
        return f"one of {', '.join(rule.choices)}" if rule.choices else "a string"
    assert rule.item is not None
    count = (f"{rule.min_items}" if rule.min_items == rule.max_items
             else f"{rule.min_items} to {rule.max_items}")
    return f"a list of {count} items, each {_describe(rule.item)}"


def _problem(value: Any, rule: Field) -> str | None:
    """None when `value` satisfies `rule`, else a short reason."""
    if value is None:
        return None if rule.nullable else "it is empty (null)"
    if rule.kind == "int":
        if isinstance(value, bool) or not _is_number(value):
            return "not a number"
        if isinstance(value, float):
            if not math.isfinite(value) or not value.is_integer() or not rule.whole:
                return "not an integer"
        if not rule.low <= value <= rule.high:
            return "out of range"
        return None
    if rule.kind == "number":
        if rule.seconds and isinstance(value, str):
            try:
                from fractions import Fraction

                value = Fraction(value.strip())
            except (ValueError, ZeroDivisionError):
                return "not a number"
        elif isinstance(value, bool) or not _is_number(value):
            return "not a number"
        if isinstance(value, float) and not math.isfinite(value):
            return "not finite"
        if not rule.low <= value <= rule.high or (rule.seconds and value <= 0):
            return "out of range"
        return None
    if rule.kind == "bool":
        return None if isinstance(value, bool) or value in (0, 1) else "not true or false"
    if rule.kind == "str":
        if not isinstance(value, str):
            return "not a string"
        if rule.choices and value not in rule.choices:
            return "not a known value"
        return None
    if not isinstance(value, (list, tuple)):
        return "not a list"
    if not rule.min_items <= len(value) <= rule.max_items:
        return "a list of the wrong length"
    for item in value:
        if _problem(item, rule.item) is not None:
            return "a list with a bad item"
    return None


def _shown(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_fields(family: str, config: dict[str, Any], source: str = "config") -> None:
    """Check every field of `config` that sfsep reads against its rule, then the layer counts
    that fields multiply into; a UsageError names the first bad field, what it holds and what it
    must hold. Missing fields are the builders' to report (most have defaults)."""
    if not isinstance(config, dict):
        return
    for path, rule in field_rules(family, config).items():
        value = _lookup(config, path)
        if value is _MISSING:
            continue
        if _problem(value, rule) is not None:
            raise UsageError(f"{source}: {path} must be {_describe(rule)}, not {_shown(value)}")
    for what, fields, count, limit in _layer_counts(family, config):
        if count > limit:
            raise UsageError(f"{source}: {fields} = {count:,} {what}; sfsep builds at most {limit:,} "
                             f"(published models have a few dozen)")


MAX_MODULES = 2048
"""Layers a config may ask for in one place (transformer layers, per-band estimators, ...): the
ranges above bound each field, this bounds their products, so that building the model on the
meta device to count its parameters stays a matter of seconds."""


def _get(config: dict[str, Any], path: str, default: Any) -> Any:
    value = _lookup(config, path)
    return default if value is _MISSING or value is None else value


def _bsrnn_band_count(config: dict[str, Any]) -> int:
    """The bands BSRNN's (end_hz, step_hz) pairs describe, counted without building them."""
    count, start = 1, 0.0
    for pair in _get(config, "bandsplits", []):
        end, step = float(pair[0]), float(pair[1])
        if step > 0 and end > start:
            count += math.ceil((end - start) / step)
        start = max(start, end)
    return count


def _layer_counts(family: str, config: dict[str, Any]) -> list[tuple[str, str, int, int]]:
    """(what, the fields, their product, the limit) for the layer counts fields multiply into."""
    if family in ("bs_roformer", "mel_band_roformer"):
        depth = _get(config, "model.depth", 1)
        per_block = _get(config, "model.time_transformer_depth", 2) + _get(config, "model.freq_transformer_depth", 2)
        bands = (len(_get(config, "model.freqs_per_bands", [0] * 62)) if family == "bs_roformer"
                 else _get(config, "model.num_bands", 60))
        stems, mask_depth = _get(config, "model.num_stems", 1), _get(config, "model.mask_estimator_depth", 1)
        return [("transformer layers", "model.depth x (time_transformer_depth + freq_transformer_depth)",
                 depth * per_block, MAX_MODULES // 8),
                ("mask-estimator layers", "model.num_stems x bands x mask_estimator_depth",
                 stems * bands * mask_depth, MAX_MODULES)]
    if family == "scnet":
        return [("convolution layers", "2 x sum(model.conv_depths)",
                 2 * sum(_get(config, "model.conv_depths", [3, 2, 1])), MAX_MODULES // 2)]
    if family == "htdemucs":
        prefix = "htdemucs." if isinstance(config.get("htdemucs"), dict) else ""
        return [("residual layers", f"{prefix}depth x {prefix}dconv_depth x 4",
                 _get(config, f"{prefix}depth", 4) * _get(config, f"{prefix}dconv_depth", 2) * 4, MAX_MODULES // 2)]
    if family == "mdx23c":
        return [("TFC-TDF blocks", "model.num_scales x model.num_blocks_per_scale x 2",
                 _get(config, "model.num_scales", 5) * _get(config, "model.num_blocks_per_scale", 2) * 2,
                 MAX_MODULES // 4)]
    if family == "conv_tasnet":
        return [("convolution blocks", "X x R", _get(config, "X", 8) * _get(config, "R", 4), MAX_MODULES // 2)]
    if family == "bsrnn":
        return [("bands", "the bands of bandsplits", _bsrnn_band_count(config), MAX_MODULES // 2)]
    return []


# --------------------------------------------------------------------------------------------
# Memory


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int | None:
    """Bytes this process may still take: MemAvailable (Linux), capped by the cgroup's limit
    (a container's), else the free physical pages; None when the system does not say."""
    found: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            found.append(max(0, limit - usage))
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    return min(found)


@dataclass(frozen=True)
class Estimate:
    """What a model takes: its parameters (count and float32 bytes) and a lower bound of the
    activations of one chunk (bytes; 0 when the contract has no fixed chunk)."""

    params: int
    activation_bytes: int
    chunk: int | None = None
    batch: int = 1

    @property
    def param_bytes(self) -> int:
        return 4 * self.params

    @property
    def total_bytes(self) -> int:
        return self.param_bytes + self.activation_bytes


def _meta_module(family: str, config: dict[str, Any]):
    import torch

    from . import build_model

    with torch.device("meta"):
        module = build_model(family, copy.deepcopy(config))
    return module.to("meta")  # buffers made from numpy arrays, too


def _first(module, *names: str) -> Any:
    for name in names:
        value = getattr(module, name, None)
        if value is not None:
            return value
    return None


def _roformer_features(module, config, batch: int, frames: int) -> int:
    model = config.get("model") or {}
    dim = int(model.get("dim", 0))
    expansion = int(model.get("mlp_expansion_factor", 4))
    bands = len(module.band_split.band_widths)
    return 4 * batch * frames * bands * dim * (1 + expansion)  # features and the feed-forward's hidden layer


def _htdemucs_features(module, config, batch: int, frames: int) -> int:
    kwargs = config.get("htdemucs") if isinstance(config.get("htdemucs"), dict) else config
    channels, stride = int(kwargs.get("channels", 48)), int(kwargs.get("stride", 4))
    return 4 * batch * channels * (module.nfft // 2 // stride) * frames  # the first spectral encoder's output


def _bsrnn_features(module, config, batch: int, frames: int) -> int:
    width = max(int(config.get("fc_dim", 0)), int(config.get("mlp_dim", 0)),
                int(config.get("rnn_dim", 0)) * (2 if config.get("bidirectional", True) else 1))
    return 4 * batch * len(module.bands) * module.frames * width


_FEATURES: dict[str, Callable] = {
    "bs_roformer": _roformer_features,
    "mel_band_roformer": _roformer_features,
    "htdemucs": _htdemucs_features,
    "bsrnn": _bsrnn_features,
}


def _activation_floor(family: str, module, config: dict[str, Any], stems: int, batch: int, length: int) -> int:
    """Bytes one batch of chunks must hold at once (float32; complex64 spectrograms): a lower
    bound of the run's peak, see the module docstring."""
    channels = int(_first(module, "audio_channels", "channels") or 2)
    waves = 4 * batch * channels * length * (1 + stems)  # the chunk in, the stems out
    stft = getattr(module, "stft", None)
    n_fft = _first(module, "n_fft", "nfft") or (getattr(stft, "n_fft", None) if stft is not None else None)
    hop = _first(module, "hop_length", "hop_size") or (getattr(stft, "hop_length", None) if stft is not None else None)
    largest = 0
    frames = 0
    if n_fft and hop:
        bins, frames = int(n_fft) // 2 + 1, length // int(hop) + 1
        largest = 8 * batch * channels * bins * frames * (1 + stems)  # the mixture's and the stems' spectrograms
    if family == "conv_tasnet":
        filters = int(module.filter_length)
        frames = 2 * length // filters
        basis = int(config.get("N", 256))
        largest = 4 * batch * frames * basis * (1 + stems)  # the encoded mixture and one mask per stem
    features = _FEATURES.get(family)
    if features is not None and frames:
        try:
            largest = max(largest, features(module, config, batch, frames))
        except (AttributeError, TypeError, ValueError, IndexError):
            pass  # a module laid out otherwise: the spectrograms stand for it
    return waves + largest


def estimate(spec) -> Estimate:
    """The parameter count of `spec`'s module (built on the meta device) and a lower bound of
    one chunk's activations under its run-time contract. Errors of the config itself (a
    combination the builder refuses) are the builder's ModelError."""
    from . import run_contract

    try:
        module = _meta_module(spec.family, spec.config)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ModelError(f"model '{spec.name}': the config does not make a {spec.family} model ({exc})") from exc
    params = sum(parameter.numel() for parameter in module.parameters())
    try:
        contract = run_contract(spec, module)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return Estimate(params, 0)
    length = contract.padded_length or contract.segment
    if not length:
        return Estimate(params, 0)
    batch = int(contract.batch_size or 1)
    stems = len(getattr(module, "stems", None) or getattr(module, "sources", None) or spec.stems)
    activations = _activation_floor(spec.family, module, spec.config, stems, batch, int(length))
    return Estimate(params, activations, chunk=int(length), batch=batch)


def check_chunk(length: int, stems: int, source: str, *, channels: int = 2, available: int | None = None) -> None:
    """Refuse a chunk length (--chunk-seconds) whose waveforms alone, one chunk in and its stems
    out, cannot fit in the memory available: the run would fail at its first chunk."""
    need = 4 * channels * length * (1 + stems)
    memory = available if available is not None else available_memory()
    if memory is not None and need > memory:
        raise UsageError(f"{source}: one chunk of {length:,} samples needs at least {human_bytes(need)} of memory, "
                         f"more than the {human_bytes(memory)} available; use a shorter --chunk-seconds")


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(count) < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} PB"  # pragma: no cover


def _with(config: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(config)
    target = changed
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return changed


def _spec_with(spec, config: dict[str, Any]):
    """`spec` with another config, its chunk and batch read from that config as for the user's."""
    from ..registry import spec_from_config

    return spec_from_config(config, name=spec.name, base=spec, source="config")


def _excess(value: Any, typical: Any) -> float:
    """How many times larger than the published value a field is (0 when it is not larger)."""
    if isinstance(value, (list, tuple)) and isinstance(typical, (list, tuple)):
        value = sum(item for item in value if _is_number(item))
        typical = sum(item for item in typical if _is_number(item))
    if not (_is_number(value) and _is_number(typical)) or typical <= 0 or value <= typical:
        return 0.0
    return float(value) / float(typical)


SUSPECTS = 3
"""Fields tried when looking for the one to blame (the most enlarged first): each try builds the
model on the meta device once more."""


def _culprit(spec, total: int) -> tuple[str, Any] | None:
    """The field to blame: of the few fields most enlarged over the published values, the one
    whose published value brings the estimate down the most."""
    rules = field_rules(spec.family, spec.config)
    suspects = sorted(((_excess(_lookup(spec.config, path), rule.typical), path) for path, rule in rules.items()
                       if rule.typical is not None and _lookup(spec.config, path) is not _MISSING), reverse=True)
    best: tuple[int, str] | None = None
    for excess, path in suspects[:SUSPECTS]:
        if excess <= 0:
            break
        try:
            lowered = estimate(_spec_with(spec, _with(spec.config, path, rules[path].typical))).total_bytes
        except Exception:  # a reset that does not build (e.g. band widths that no longer add up)
            continue
        if lowered < total and (best is None or lowered < best[0]):
            best = (lowered, path)
    return None if best is None else (best[1], _lookup(spec.config, best[1]))


def check_fits(spec, source: str = "config", *, available: int | None = None) -> Estimate:
    """Refuse (UsageError, one line naming the field) a model whose parameters and one chunk's
    activations cannot fit in the memory available; returns the estimate otherwise."""
    found = estimate(spec)
    memory = available if available is not None else available_memory()
    if memory is None or found.total_bytes <= memory:
        return found
    need = (f"about {human_bytes(found.total_bytes)} of memory ({human_bytes(found.param_bytes)} for "
            f"{found.params:,} parameters + at least {human_bytes(found.activation_bytes)} for one batch of "
            f"{found.batch} chunk(s) of {found.chunk:,} samples)" if found.chunk else
            f"about {human_bytes(found.total_bytes)} of memory for {found.params:,} parameters")
    culprit = _culprit(spec, found.total_bytes)
    if culprit is None:
        raise UsageError(f"{source}: this model needs {need}, more than the {human_bytes(memory)} available")
    path, value = culprit
    rule = field_rules(spec.family, spec.config)[path]
    raise UsageError(f"{source}: {path} = {_shown(value)} makes the model need {need}, more than the "
                     f"{human_bytes(memory)} available; use a smaller {path} (published models use "
                     f"{_shown(rule.typical)})")
