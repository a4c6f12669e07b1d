"""What sfsep knows about its models: `sfsep models`, `Separator.models()` and `sfsep fetch`.

One row per model of models.toml: names and aliases, architecture, stems, trained rate, whether
the architecture is implemented, the weights (their size, published or estimated from the
parameter count, their sources, and whether they are in the cache), chunking, license and
citation. No network, no hashing, no weights read. And the three things `sfsep fetch` does to
the weights of several models (ask the hosts, hash the cache, download), each going on past a
failing file and saying how each file fared.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from .registry import ModelSpec, registry


def weights_size(spec: ModelSpec) -> tuple[int | None, int | None]:
    """(published size, estimate) in bytes of a model's weights. The size is the sum of the
    sizes models.toml gives for every file (None unless it gives them all); the estimate, only
    without one, is the parameter count times 2 or 4 bytes (half or single precision) times the
    number of files."""
    known = [source.size for source in spec.weights]
    size = sum(known) if spec.weights and all(value is not None for value in known) else None
    estimate = None
    if size is None and spec.params:
        estimate = spec.params * (2 if spec.half_precision else 4) * max(1, len(spec.weights))
    return size, estimate


def model_row(spec: ModelSpec) -> dict[str, Any]:
    """What `sfsep models --json` shows about one model."""
    from . import hub
    from .models import is_available

    residual = spec.residual_stem
    cached, count = hub.cache_status(spec)
    size, estimate = weights_size(spec)
    return {
        "name": spec.name, "family": spec.family, "stems": list(spec.stems) + ([residual] if residual else []),
        "residual_stem": residual, "trained_rate": spec.trained_rate, "available": is_available(spec.family),
        "cached": None if not spec.weights else cached == count, "cached_files": cached, "files": count,
        "size_bytes": size, "size_estimate_bytes": estimate,
        "sources": [{"source": hub.source_label(w), "host": hub.source_host(w), "file": w.cache_name,
                     "sha256": w.sha256, "size": w.size, "checksum_source": w.checksum_source,
                     "mirrors": [hub.source_label(m) for m in w.mirrors],
                     "cache_path": hub.where_expected(w)} for w in spec.weights],
        "chunk_size": spec.chunk_size, "overlap": spec.overlap, "num_overlap": spec.num_overlap,
        "chunk_style": spec.chunk_style,
        "batch_size": spec.batch_size, "normalize": spec.normalize,
        "description": spec.description, "aliases": list(spec.aliases), "license": spec.license,
        "citation": spec.citation,
    }


def model_rows() -> list[dict[str, Any]]:
    """`model_row` for every model of models.toml, in its order."""
    return [model_row(spec) for spec in registry().values()]


def size_text(row: dict[str, Any]) -> str:
    """The size column of the table: exact, ~estimated, "?" unknown, "-" built-in."""
    from .hub import human_size

    if not row["files"]:
        return "-"
    if row["size_bytes"] is not None:
        return human_size(row["size_bytes"])
    return f"~{human_size(row['size_estimate_bytes'])}" if row["size_estimate_bytes"] else "?"


def cached_text(row: dict[str, Any]) -> str:
    """The cached column: yes, no, "-" (built-in) or "k/n" files of a bag."""
    if not row["files"]:
        return "-"
    if row["cached"]:
        return "yes"
    return f"{row['cached_files']}/{row['files']}" if row["cached_files"] else "no"


def hosts_text(row: dict[str, Any]) -> str:
    """The source column: the short names of the hosts the weights come from."""
    if not row["files"]:
        return "built-in"
    return ", ".join(sorted({item["host"].removeprefix("dl.").removesuffix(".com") for item in row["sources"]}))


def stems_text(row: dict[str, Any]) -> str:
    """The stems, the residual one in parentheses (the mixture minus the others)."""
    stems = row["stems"]
    return ", ".join(stems[:-1] + [f"({stems[-1]})"] if row["residual_stem"] else stems)


def table(rows: list[dict[str, Any]]):
    """The rows as `sfsep models` shows them (a rich Table): a model's aliases below its name."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    shown = Table(title="sfsep models", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for column in ("name", "family", "stems", "rate", "size", "cached", "source", "status"):
        shown.add_column(column, overflow="fold", no_wrap=column == "name",
                         min_width={"family": 8, "stems": 14, "source": 8}.get(column))
    for row in rows:
        cached = cached_text(row)
        shown.add_row(escape(row["name"]) + "".join(f"\n[dim] = {escape(alias)}[/]" for alias in row["aliases"]),
                      row["family"], stems_text(row), "any" if row["trained_rate"] is None else str(row["trained_rate"]),
                      size_text(row), "[green]yes[/]" if cached == "yes" else cached, hosts_text(row),
                      "[green]ready[/]" if row["available"] else "[yellow]not implemented yet[/]")
    return shown


# --------------------------------------------------------------------------------------------
# `sfsep fetch`: each yields (level, message) per file and a summary: "ok" and "warning" are
# information, "error" a file that failed, "failed" a summary saying that something failed


def check_sources(specs: Iterable[ModelSpec]) -> Iterator[tuple[str, str]]:
    """Ask every source and mirror of the models' weights whether it serves the file (HEAD only);
    an error for a checkpoint that no source serves."""
    from . import hub

    asked = answering = failures = 0
    for spec in specs:
        for source in spec.weights:
            reaches = hub.probe(source)
            asked, answering = asked + len(reaches), answering + sum(reach.ok for reach in reaches)
            failures += not any(reach.ok for reach in reaches)
            for reach in reaches:
                where = f"{spec.name}: {reach.label}{' (mirror)' if reach.mirror else ''}"
                yield (("ok", f"{where} answers ({reach.detail})") if reach.ok
                       else ("warning", f"{where} does not serve the file ({reach.detail})"))
    yield ("failed" if failures else "ok",
           f"{answering} of {asked} source(s) answer; {failures} checkpoint(s) have no source that does")


def verify_cache(specs: Iterable[ModelSpec]) -> Iterator[tuple[str, str]]:
    """Hash every cached weights file of the models (`hub.verify_model`; files not cached are left out)."""
    from . import hub

    checked = failures = 0
    for spec in specs:
        for result in hub.verify_model(spec, missing=False):
            checked, failures = checked + 1, failures + (not result.ok)
            if result.ok:
                yield "ok", f"{spec.name}: {result.path} ok (sha256 {result.sha256[:16]}...)"
            else:
                yield "error", (f"{spec.name}: {result.path} fails its check ({result.problem}); "
                                f"`sfsep fetch --verify {spec.name}` downloads it again")
    yield "ok", f"{checked} cached file(s) checked, {failures} failed ({hub.cache_dir()})"


def fetch_weights(specs: Iterable[ModelSpec], *, every: bool = False,
                  progress: bool | None = None) -> Iterator[tuple[str, str]]:
    """Download (or find in the cache) and check every weights file of the models; a failing file
    does not stop the others. `every`: the models were not named (built-in ones pass silently)."""
    from . import hub

    for spec in specs:
        if not spec.weights and not every:
            yield "ok", f"{spec.name}: built-in, no weights to fetch"
        for source, got in hub.fetch_each(spec, progress=progress):
            if isinstance(got, Exception):
                yield "error", str(got)
            else:
                yield "ok", f"{spec.name}: {source.cache_name} ok ({hub.human_size(got.stat().st_size)}) {got}"
