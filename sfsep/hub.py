"""Weights: where they are cached, how they are downloaded and checked, and offline use.

A model's checkpoints (`registry.WeightsSource`) come from one of three kinds of host, or from
the sfsep package itself:

- a Hugging Face repo file: fetched with `huggingface_hub.hf_hub_download`, so it lives in the
  Hugging Face cache and HF_HOME, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE mean what they mean
  for every other Hugging Face tool;
- a plain URL (GitHub releases, dl.fbaipublicfiles.com): streamed into sfsep's own cache;
- a Google Drive file id: the same streaming, after Drive's "this file is too large to scan for
  viruses" confirmation step;
- a packaged file (`packaged`, a path inside the installed sfsep package, found with
  importlib.resources): nothing is downloaded or cached, and the file is held to the full sha256
  models.toml gives for it at every use. The demo model's weights come this way, so that it runs
  offline on a fresh install.

A source may list mirrors: the same file on other hosts, or another file with the same weights
and its own digest (demucs' models: the safetensors export on the Hub first, the legacy .th
package as the fallback, as demucs 4.1.0 does). A cached copy from any of them is used as it is;
when none is cached they are downloaded from in order, each held to its checks, until one
succeeds.

sfsep's cache is `$SFSEP_CACHE`, else `$XDG_CACHE_HOME/sfsep`, else `~/.cache/sfsep`; files go
to `<cache>/weights/<name>`. A download is written to `<name>.part` next to it and only renamed to
`<name>` once its size and sha256 are checked, so the final name never holds a partial or
unverified file. A dropped connection is resumed with an HTTP Range request guarded by the
validator the host gave for the first bytes (If-Range with its ETag, else its Last-Modified, kept
in `<name>.part.json`): a host whose file changed in between answers with the whole new file, and
a host that gave no validator is downloaded again from the start. A lock per name
(`<name>.lock`, removed when its holder is done) makes concurrent processes download a file once.

Trust: models.toml's sha256 (full, or the 8-hex prefix demucs names carry) and size win where it
gives them. Every file sfsep downloads also has its sha256 recorded next to it on first download
(`<name>.sha256`, in `sha256sum` format; for a Hugging Face file `<cache>/weights/huggingface/
<repo>/<file>.sha256`), and every later use hashes the file again and holds it to models.toml's
digest, else to that record. A cached file that neither vouches for (placed there by hand, or its
record lost) fails its check. A Hugging Face LFS file is stored by the Hub's cache under its
sha256, which then stands in for a missing record.

Failing fast: opening a connection may take CONNECT_TIMEOUT_SECONDS and each read
READ_TIMEOUT_SECONDS; a download that receives no byte for GIVE_UP_SECONDS, over all its attempts
and sources, fails with one line (each mirror still gets CONNECT_TIMEOUT_SECONDS). A Hugging Face
endpoint is asked once (a HEAD with those limits) before huggingface_hub takes over, so an
unreachable one fails at once instead of through huggingface_hub's minute of retries, whose log
lines sfsep keeps out of the terminal.

Offline (`offline=True` or SFSEP_OFFLINE=1) nothing here opens a connection: a missing file is
a WeightsError saying where the file is expected and how to bring it in. Nothing in this module
imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import html.parser
import http.client
import http.cookiejar
import json
import logging
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: filelock's lock, whose file stays
    fcntl = None

from . import __version__
from .errors import WeightsError, os_error_reason

ENV_CACHE = "SFSEP_CACHE"
ENV_OFFLINE = "SFSEP_OFFLINE"
ENV_GDRIVE = "SFSEP_GDRIVE_URL"

GDRIVE_URL = "https://drive.google.com/uc"
"""Drive's download endpoint; SFSEP_GDRIVE_URL replaces it (tests point it at a loopback server)."""

CHUNK_BYTES = 1 << 20
CONNECT_TIMEOUT_SECONDS = 5.0  # to open a connection: name lookup, TCP and TLS
READ_TIMEOUT_SECONDS = 8.0  # for the host to send anything on an open connection
GIVE_UP_SECONDS = 12.0  # a download that receives no byte for this long fails (attempts and sources together)
ATTEMPTS = 4  # connections per download before giving up (each resumes where the last stopped)
RETRY_PAUSE_SECONDS = 0.5
RECORD_SUFFIX = ".sha256"
CLASSIC_HINT = ", or use --model classic (no weights needed)"
"""How the weights errors end: the one model that runs without weights (callers for which it
cannot serve, such as train-kernel, replace it)."""
USER_AGENT = f"sfsep/{__version__} (+https://github.com/sfsep)"

Log = Callable[[str], None]


def _default_log(message: str) -> None:
    """Warnings go to the `sfsep.hub` logger (the command line shows them; -q hides them)."""
    logging.getLogger(__name__).warning(message.removeprefix("warning: "))


# --------------------------------------------------------------------------------------------
# Locations


def cache_dir() -> Path:
    """sfsep's cache folder: $SFSEP_CACHE, else $XDG_CACHE_HOME/sfsep, else ~/.cache/sfsep."""
    explicit = os.environ.get(ENV_CACHE)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "sfsep"
    return Path.home() / ".cache" / "sfsep"


def weights_dir() -> Path:
    return cache_dir() / "weights"


def _records_dir() -> Path:
    return cache_dir() / "verified"


def offline_requested(flag: bool | None = None) -> bool:
    """True when --offline was given or SFSEP_OFFLINE is set to a true value."""
    if flag:
        return True
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


def is_huggingface(source) -> bool:
    return bool(source.hf_repo)


def is_packaged(source) -> bool:
    """True for a file shipped inside the sfsep package (no download, no cache)."""
    return bool(getattr(source, "packaged", None))


def packaged_path(source) -> Path:
    """Where a packaged file is in the installed sfsep package (whether or not it is there)."""
    return Path(str(resources.files("sfsep").joinpath(*source.packaged.split("/"))))


def source_label(source) -> str:
    """Where a checkpoint comes from, for tables and messages."""
    if is_packaged(source):
        return f"package:sfsep/{source.packaged}"
    if is_huggingface(source):
        revision = f"@{source.hf_revision}" if source.hf_revision else ""
        return f"hf://{source.hf_repo}/{source.hf_filename}{revision}"
    if getattr(source, "gdrive_id", None):
        return f"https://drive.google.com/file/d/{source.gdrive_id}"
    return source.url or "?"


def source_host(source) -> str:
    """A short host name: huggingface.co, github.com, drive.google.com, ... ("package" for a
    packaged file)."""
    if is_packaged(source):
        return "package"
    if is_huggingface(source):
        return "huggingface.co"
    return urllib.parse.urlsplit(source_label(source)).netloc or "?"


def expected_path(source) -> Path:
    """Where a URL or Drive checkpoint lives in sfsep's cache (Hugging Face files live in the
    Hugging Face cache instead; see `cached_path`)."""
    return weights_dir() / source.cache_name


def _hf_kwargs(source) -> dict:
    kwargs = {"repo_id": source.hf_repo, "filename": source.hf_filename}
    if source.hf_revision:
        kwargs["revision"] = source.hf_revision
    return kwargs


def _hf_endpoint() -> str | None:
    # huggingface_hub reads HF_ENDPOINT once, at import; reading it per call lets a process
    # that changed its environment (or a test) still be heard.
    return os.environ.get("HF_ENDPOINT") or None


def _hf_cache_hint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub is a dependency
        return "$HF_HOME/hub"


def _candidates(source) -> list:
    """The source, then its mirrors, in the order they are tried."""
    return [source, *getattr(source, "mirrors", ())]


def _cached_file(candidate) -> Path | None:
    if is_packaged(candidate):
        path = packaged_path(candidate)
        return path if path.is_file() else None
    if is_huggingface(candidate):
        from huggingface_hub import try_to_load_from_cache

        kwargs = _hf_kwargs(candidate)
        found = try_to_load_from_cache(kwargs["repo_id"], kwargs["filename"], revision=kwargs.get("revision"))
        return Path(found) if isinstance(found, str) and Path(found).is_file() else None
    path = expected_path(candidate)
    return path if path.is_file() else None


def _cached(source) -> Iterator[tuple[object, Path]]:
    """(candidate, local file) for the source and each mirror that has a cached copy of its own."""
    seen = set()
    for candidate in _candidates(source):
        path = _cached_file(candidate)
        if path is not None and path not in seen:
            seen.add(path)
            yield candidate, path


def cached_path(source) -> Path | None:
    """The checkpoint's local file, from the source or a mirror, if it is cached (no network, no
    hashing), else None."""
    return next((path for _, path in _cached(source)), None)


def where_expected(source) -> str:
    if is_packaged(source):
        return str(packaged_path(source))
    if is_huggingface(source):
        return (f"the Hugging Face cache ({_hf_cache_hint()}, set by HF_HOME) as "
                f"{source.hf_repo}/{source.hf_filename}")
    return str(expected_path(source))


# --------------------------------------------------------------------------------------------
# Checksums


def sha256_of(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(CHUNK_BYTES)
            if not block:
                break
            digest.update(block)
            if progress is not None:
                progress(len(block))
    return digest.hexdigest()


def checksum_matches(digest: str, expected: str | None) -> bool:
    """A full sha256 must be equal; a shorter expected value is a prefix (demucs style)."""
    if not expected:
        return True
    return digest.lower().startswith(expected.strip().lower())


def record_path(source) -> Path:
    """Where sfsep records the sha256 of a source's file when it first downloads it: next to the
    file in sfsep's cache, or for a Hugging Face file (which lives in the Hugging Face cache)
    under `<cache>/weights/huggingface/<repo>[@revision]/<file>.sha256`."""
    if is_huggingface(source):
        repo = source.hf_repo + (f"@{source.hf_revision}" if source.hf_revision else "")
        return weights_dir() / "huggingface" / repo / f"{source.hf_filename}{RECORD_SUFFIX}"
    target = expected_path(source)
    return target.with_name(target.name + RECORD_SUFFIX)


def _read_digest(record: Path) -> str | None:
    try:
        text = record.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.match(r"\s*([0-9a-fA-F]{64})(\s|$)", text)
    return match.group(1).lower() if match else None


def _write_digest(source, digest: str) -> None:
    record = record_path(source)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        temporary = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        temporary.write_text(f"{digest}  {Path(source.hf_filename or source.cache_name).name}\n", encoding="utf-8")
        os.replace(temporary, record)
    except OSError as exc:
        raise WeightsError(f"{record}: cannot record the sha256 of {source.cache_name} there ({os_error_reason(exc)}); "
                           f"sfsep needs to write to its cache ({cache_dir()}, set by SFSEP_CACHE)") from None


def _legacy_digest(path: Path) -> str | None:
    """The digest an older sfsep recorded in <cache>/verified/ when it downloaded and checked the
    file, if the file has not changed since (same path, size and mtime)."""
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]
    try:
        record = json.loads((_records_dir() / f"{key}.json").read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return None
    if record.get("path") != str(Path(path).resolve()) or record.get("size") != stat.st_size \
            or record.get("mtime_ns") != stat.st_mtime_ns or not isinstance(record.get("sha256"), str):
        return None
    return record["sha256"].lower()


def _hf_blob_digest(path: Path) -> str | None:
    """huggingface_hub keeps a file under blobs/<etag>, and an LFS file's etag is its sha256: the
    digest the Hub announced when the file was downloaded."""
    try:
        blob = Path(path).resolve()
    except OSError:
        return None
    if blob.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", blob.name):
        return blob.name
    return None


def recorded_digest(source, path: Path) -> str | None:
    """The sha256 recorded for a source's file when it was first downloaded, or None."""
    digest = _read_digest(record_path(source))
    if digest is None:
        digest = _legacy_digest(path)
        if digest is not None:
            with contextlib.suppress(WeightsError):
                _write_digest(source, digest)
    if digest is None and is_huggingface(source):
        digest = _hf_blob_digest(path)
    return digest


@dataclass
class Check:
    """The outcome of checking one file: ok, or what is wrong with it."""

    path: Path
    ok: bool
    sha256: str | None
    problem: str = ""


def check_file(path: Path, source) -> Check:
    """Hash a cached file and hold it to models.toml's size and sha256 where it gives them (they
    win), else to the sha256 recorded when sfsep first downloaded it. A file that nothing vouches
    for fails: it was not downloaded by sfsep, or its record is gone."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return Check(path, False, None, "missing")
    if source.size is not None and size != source.size:
        return Check(path, False, None, f"size {size} bytes, models.toml expects {source.size}")
    digest = sha256_of(path)
    packaged = is_packaged(source)  # models.toml's full sha256 is required for it (registry); no record is kept
    if source.sha256 or packaged:
        if not checksum_matches(digest, source.sha256):
            return Check(path, False, digest, f"sha256 {digest[:16]}..., models.toml expects {source.sha256}")
        if not packaged and _read_digest(record_path(source)) != digest:
            with contextlib.suppress(WeightsError):
                _write_digest(source, digest)
        return Check(path, True, digest)
    recorded = recorded_digest(source, path)
    if recorded is None:
        return Check(path, False, digest,
                     f"no sha256 was recorded for it ({record_path(source)} is missing): sfsep did not download "
                     f"it, so nothing vouches for its content")
    if recorded != digest:
        return Check(path, False, digest,
                     f"sha256 {digest[:16]}..., but {recorded[:16]}... was recorded when it was first downloaded "
                     f"({record_path(source)})")
    return Check(path, True, digest)


def _accept(path: Path, source, where: str, discarded: str) -> str:
    """Hash a file just downloaded from `where` and hold it to models.toml's sha256, else to the one
    recorded at its first download; then record its digest (trust on first use). `discarded` says
    what became of a file that fails. Returns the digest."""
    digest = sha256_of(path)
    announced = _hf_blob_digest(path) if is_huggingface(source) else None
    if announced is not None and announced != digest:
        raise WeightsError(f"{where}: the download's sha256 is {digest}, but the Hub announced {announced}; "
                           f"{discarded} (a corrupted transfer: run the command again)")
    if source.sha256:
        if not checksum_matches(digest, source.sha256):
            raise WeightsError(
                f"{where}: the download's sha256 is {digest}, models.toml expects {source.sha256}; {discarded} "
                f"(a corrupted transfer or a changed file: run the command again, or pass --weights PATH to a "
                f"checkpoint you trust)")
    else:
        recorded = _read_digest(record_path(source))
        if recorded is not None and recorded != digest:
            raise WeightsError(
                f"{where}: the download's sha256 is {digest}, but {recorded} was recorded when this file was "
                f"first downloaded ({record_path(source)}); the host now serves a different file; {discarded}. "
                f"If you trust the new file, delete {record_path(source)} and run again, or pass --weights PATH")
    _write_digest(source, digest)
    return digest


# --------------------------------------------------------------------------------------------
# Getting files


def _has_location(source) -> bool:
    return bool(source.url or getattr(source, "gdrive_id", None) or is_huggingface(source) or is_packaged(source))


def _packaged(source, model: str) -> Path:
    """A packaged checkpoint's path once it passes its check; otherwise the installation is damaged."""
    path = packaged_path(source)
    check = check_file(path, source)
    if check.ok:
        return path
    problem = "are missing" if check.problem == "missing" else f"fail their check ({check.problem})"
    raise WeightsError(f"{path}: the weights of model '{model or source.cache_name}', shipped with sfsep, {problem}; "
                       f"reinstall sfsep (pip install --force-reinstall sfsep), or pass --weights PATH")


def ensure(source, *, offline: bool = False, progress: bool | None = None, log: Log | None = None,
           model: str = "") -> Path:
    """The local path of a checkpoint, downloading it first when needed; the file is hashed and
    checked every time (see `check_file`).

    A cached copy from the source or any mirror is used when it passes; otherwise the source and
    then each mirror are downloaded from, in order, until one gives a file that passes. `model`
    only makes messages name the model. `progress`: show a progress bar (default: when stderr is a
    terminal).
    """
    log = log or _default_log
    if is_packaged(source):
        return _packaged(source, model)
    offline = offline_requested(offline)
    candidates = _candidates(source)
    if not all(_has_location(candidate) for candidate in candidates):
        raise WeightsError(f"model '{model}': its weights entry in models.toml has no url, gdrive_id or hf_repo")
    failing = {}
    for candidate, path in _cached(source):
        check = check_file(path, candidate)
        if check.ok:
            return path
        failing[id(candidate)] = (path, check)
    if offline:
        if failing:
            path, check = next(iter(failing.values()))
            raise WeightsError(
                f"{path}: the cached weights of model '{model}' fail their check ({check.problem}) and "
                f"offline mode forbids downloading them again; run `sfsep fetch {model}` on a connected "
                f"machine and copy the file here, or pass --weights PATH")
        raise WeightsError(_offline_miss_message(source, model))
    for path, check in failing.values():
        log(f"warning: {path} fails its check ({check.problem}); downloading it again")
    patience = _Patience()
    errors: list[WeightsError] = []
    for index, candidate in enumerate(candidates):
        if index:
            patience.allow(CONNECT_TIMEOUT_SECONDS)
        try:
            if is_huggingface(candidate):
                return _download_huggingface(candidate, patience=patience, model=model,
                                             force=id(candidate) in failing)
            return _download_into_cache(candidate, expected_path(candidate), progress=progress, model=model,
                                        patience=patience)
        except WeightsError as exc:
            errors.append(exc)
            if index + 1 < len(candidates):
                log(f"warning: {source_label(candidate)} failed; trying the mirror "
                    f"{source_label(candidates[index + 1])}")
        except OSError as exc:  # sfsep's cache cannot be written (read-only, full...): no mirror helps
            raise WeightsError(
                f"{exc.filename or expected_path(candidate).parent}: cannot write the weights of model "
                f"'{model or source.cache_name}' in sfsep's cache ({os_error_reason(exc)}); set {ENV_CACHE} to a "
                f"writable folder, or pass --weights PATH") from exc
    if len(errors) == 1:
        raise errors[0]
    raise WeightsError(f"model '{model or source.cache_name}': none of the {len(errors)} sources of "
                       f"{source.cache_name} gave a file that passes its check: "
                       + " / ".join(f"({number}) {exc}" for number, exc in enumerate(errors, 1)))


def _offline_miss_message(source, model: str) -> str:
    name = model or source.cache_name
    if is_huggingface(source):
        copy = (f"copy its Hugging Face cache folder ($HF_HOME/hub) to {_hf_cache_hint()} here (or point "
                f"HF_HOME at the copy)")
    else:
        copy = f"copy its cache folder (`sfsep cache path`) to {cache_dir()} here"
    others = [mirror for mirror in getattr(source, "mirrors", ()) if mirror.cache_name != source.cache_name]
    alternative = "".join(f" (or {mirror.cache_name} in {where_expected(mirror)})" for mirror in others)
    return (
        f"model '{name}' needs the weights file {source.cache_name}, which is not cached (expected in "
        f"{where_expected(source)}){alternative}, and offline mode forbids downloading it from "
        f"{source_label(source)}. "
        f"On a machine with internet run `sfsep fetch {name}` and {copy}, or run with --weights PATH to a "
        f"checkpoint file{CLASSIC_HINT}"
    )


@contextlib.contextmanager
def _download_lock(target: Path) -> Iterator[None]:
    """Let one process at a time download `target`: an exclusive flock on `<name>.lock`.

    The holder removes the lock file when it is done, so no lock files pile up in the cache. A
    process that was waiting on the removed file finds, once it holds its lock, that the path no
    longer leads to the file it locked, and locks the path's new file instead; so two processes
    never both believe they hold the lock.
    """
    lock_path = target.with_name(target.name + ".lock")
    if fcntl is None:  # pragma: no cover - Windows
        from filelock import FileLock

        with FileLock(str(lock_path)):
            yield
        return
    while True:
        handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            locked, current = os.fstat(handle), os.stat(lock_path)
            if (locked.st_dev, locked.st_ino) == (current.st_dev, current.st_ino):
                break
        except FileNotFoundError:
            pass  # removed by the previous holder: lock the next one
        except BaseException:
            os.close(handle)
            raise
        os.close(handle)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(handle)


def _download_into_cache(source, target: Path, *, progress: bool | None, model: str,
                         patience: "_Patience") -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with _download_lock(target):
        if target.is_file():
            if check_file(target, source).ok:  # another process brought it in while this one waited
                return target
            target.unlink()
        partial = target.with_name(target.name + ".part")
        timeouts = _Timeouts()
        opener = _opener(timeouts)
        if getattr(source, "gdrive_id", None):
            if not timeouts.arm(patience):
                raise WeightsError(f"{source_label(source)}: no answer for {GIVE_UP_SECONDS:.0f} s; check the "
                                   f"connection, or pass --weights PATH")
            url = _resolve_gdrive(source.gdrive_id, opener)
        else:
            url = source.url
        _fetch_with_retries(url, partial, opener=opener, timeouts=timeouts, patience=patience,
                            label=source.cache_name, expected_size=source.size, progress=progress, model=model)
        size = partial.stat().st_size
        if source.size is not None and size != source.size:
            _discard_partial(partial)
            raise WeightsError(
                f"{url}: downloaded {size} bytes, models.toml expects {source.size}; the file was discarded "
                f"(the host may serve a different file now; try again later or pass --weights PATH)")
        try:
            _accept(partial, source, url, "the file was discarded and nothing was cached")
        except WeightsError:
            _discard_partial(partial)
            raise
        os.replace(partial, target)
        _part_state_path(partial).unlink(missing_ok=True)
        return target


# --------------------------------------------------------------------------------------------
# HTTP


class _Retry(Exception):
    """A transient failure: the next attempt resumes (or restarts) the download."""


class _Patience:
    """How long a download may go on without receiving a byte, over all its attempts and sources;
    every block received starts the count again."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = GIVE_UP_SECONDS if seconds is None else seconds
        self.refresh()

    def refresh(self) -> None:
        self.until = time.monotonic() + self.seconds

    def allow(self, seconds: float) -> None:
        """At least `seconds` more from now (a mirror deserves its chance to answer)."""
        self.until = max(self.until, time.monotonic() + seconds)

    def left(self) -> float:
        return self.until - time.monotonic()


class _Timeouts:
    """The connect and read time limits of the next connection an opener makes."""

    def __init__(self) -> None:
        self.connect, self.read = CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS

    def arm(self, patience: _Patience) -> bool:
        """Limits that end the connection by the time patience runs out; False when it has."""
        left = patience.left()
        if left < 0.05:
            return False
        self.connect, self.read = min(CONNECT_TIMEOUT_SECONDS, left), min(READ_TIMEOUT_SECONDS, left)
        return True


class _TimedConnection:
    """Opens the socket within the connect limit, then waits at most the read limit for data."""

    def __init__(self, *args, limits: _Timeouts, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits

    def connect(self) -> None:
        self.timeout = self._limits.connect  # what socket.create_connection and the TLS handshake use
        super().connect()
        self.sock.settimeout(self._limits.read)


class _TimedHTTPConnection(_TimedConnection, http.client.HTTPConnection):
    pass


class _TimedHTTPSConnection(_TimedConnection, http.client.HTTPSConnection):
    pass


class _TimedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, limits: _Timeouts) -> None:
        super().__init__()
        self.limits = limits

    def http_open(self, request):
        return self.do_open(functools.partial(_TimedHTTPConnection, limits=self.limits), request)


class _TimedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, limits: _Timeouts) -> None:
        super().__init__()
        self.limits = limits

    def https_open(self, request):
        return self.do_open(functools.partial(_TimedHTTPSConnection, limits=self.limits), request,
                            context=self._context)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the 3xx itself is the answer (urllib raises it as an HTTPError)


def _opener(limits: _Timeouts, *, redirects: bool = True) -> urllib.request.OpenerDirector:
    # Cookies matter for Google Drive's confirmation; proxies come from the environment.
    handlers = [urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _TimedHTTPHandler(limits),
                _TimedHTTPSHandler(limits)]
    if not redirects:
        handlers.append(_NoRedirects())
    return urllib.request.build_opener(*handlers)


def _no_connection(exc: BaseException, limits: _Timeouts) -> str:
    """What went wrong, for an exception raised while connecting or waiting for an answer."""
    reason = getattr(exc, "reason", None) if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        if isinstance(exc, urllib.error.URLError):
            return f"cannot connect: no answer to the connection within {limits.connect:.0f} s"
        return f"the host accepted the connection but sent nothing for {limits.read:.0f} s"
    return f"cannot connect: {reason if reason is not None else exc}"


def _http_failure(url: str, code: int, reason: str, model: str) -> WeightsError:
    fix = f"download the file by hand and pass --weights PATH{CLASSIC_HINT}"
    if code in (404, 410):
        return WeightsError(f"{url}: HTTP {code} {reason}: the file is not there (it may have moved); {fix}")
    if code in (401, 403):
        return WeightsError(f"{url}: HTTP {code} {reason}: access denied; {fix}")
    return WeightsError(f"{url}: HTTP {code} {reason}; try again later, or {fix}")


def _fetch_with_retries(url: str, partial: Path, *, opener, timeouts: _Timeouts, patience: _Patience, label: str,
                        expected_size: int | None, progress: bool | None, model: str) -> None:
    last_problem = f"no answer for {GIVE_UP_SECONDS:.0f} s"
    attempts = 0
    while attempts < ATTEMPTS and timeouts.arm(patience):
        attempts += 1
        try:
            _stream(url, partial, opener=opener, timeouts=timeouts, patience=patience, label=label,
                    expected_size=expected_size, progress=progress, model=model)
            return
        except _Retry as exc:
            last_problem = str(exc)
        pause = RETRY_PAUSE_SECONDS * attempts
        if attempts >= ATTEMPTS or patience.left() <= pause:
            break
        time.sleep(pause)
    kept = partial.stat().st_size if partial.exists() else 0
    resume = f"; {kept} bytes are kept in {partial} and the next run resumes from there" if kept else ""
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    raise WeightsError(
        f"{url}: the download failed{tries} ({last_problem}){resume}. Check the connection and run the command "
        f"again, or pass --weights PATH{CLASSIC_HINT}")


def _part_state_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


def _discard_partial(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    _part_state_path(partial).unlink(missing_ok=True)


def _validators(headers) -> dict:
    """What identifies the version of a file a host served: a strong ETag (a weak one cannot guard
    a byte range) and Last-Modified."""
    found = {}
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        found["etag"] = etag
    if headers.get("Last-Modified"):
        found["last_modified"] = headers["Last-Modified"]
    return found


def _read_part_state(partial: Path) -> dict:
    try:
        state = json.loads(_part_state_path(partial).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_part_state(partial: Path, url: str, validators: dict) -> None:
    state = _part_state_path(partial)
    if not validators:
        state.unlink(missing_ok=True)  # nothing to resume against: an interruption starts over
        return
    state.write_text(json.dumps({"url": url, **validators}))


def _stream(url: str, partial: Path, *, opener, timeouts: _Timeouts, patience: _Patience, label: str,
            expected_size: int | None, progress: bool | None, model: str) -> None:
    """One connection: append the rest of the file to `partial`, resuming from its size when the
    host can prove (If-Range) that its file is still the one the first bytes came from."""
    offset = partial.stat().st_size if partial.exists() else 0
    state = _read_part_state(partial) if offset else {}
    validator = state.get("etag") or state.get("last_modified")
    if offset and (state.get("url") != url or not validator):
        _discard_partial(partial)  # no proof that the host's file is still the one these bytes came from
        offset = 0
    if expected_size is not None and offset >= expected_size:
        if offset == expected_size:
            return
        _discard_partial(partial)
        offset = 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        headers["If-Range"] = validator
    request = urllib.request.Request(url, headers=headers)
    try:
        response = opener.open(request)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            _discard_partial(partial)  # the partial file does not fit the server's file: start over
            raise _Retry(f"HTTP 416 for a resumed download of {offset} bytes") from None
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
        raise _http_failure(url, exc.code, str(exc.reason), model) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise _Retry(_no_connection(exc, timeouts)) from None
    with response:
        status = response.status
        content_type = response.headers.get_content_type()
        if content_type == "text/html" and not label.lower().endswith((".html", ".htm")):
            raise WeightsError(
                f"{url}: the server answered with a web page instead of the checkpoint (a login, quota or "
                f"error page); download the file in a browser and pass --weights PATH")
        if status == 206 and offset:
            content_range = response.headers.get("Content-Range", "")
            match = re.match(r"bytes (\d+)-", content_range)
            if not match or int(match.group(1)) != offset:
                _discard_partial(partial)
                raise _Retry(f"the server resumed at '{content_range}', not at byte {offset}")
            served = _validators(response.headers)
            if any(key in served and served[key] != state.get(key) for key in ("etag", "last_modified")
                   if state.get(key)):
                _discard_partial(partial)  # a host that ignored If-Range: its file changed
                raise _Retry("the file on the host changed since the first part was downloaded; starting over")
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # the server sent the whole file (no Range, or its file changed)
            _write_part_state(partial, url, _validators(response.headers))
        length = response.headers.get("Content-Length")
        remaining = int(length) if length and length.isdigit() else None
        total = offset + remaining if remaining is not None else expected_size
        received = 0
        with _Bar(label, total=total, done=offset, enabled=progress) as bar, open(partial, mode) as handle:
            try:
                while True:
                    block = response.read(CHUNK_BYTES)
                    if not block:
                        break
                    handle.write(block)
                    received += len(block)
                    patience.refresh()
                    bar.advance(len(block))
            except (http.client.HTTPException, OSError) as exc:
                stalled = f", nothing for {timeouts.read:.0f} s" if isinstance(exc, TimeoutError) else ""
                raise _Retry(f"connection lost after {offset + received} bytes "
                             f"({type(exc).__name__}{stalled})") from None
        if remaining is not None and received < remaining:
            raise _Retry(f"connection closed after {offset + received} of {offset + remaining} bytes")


def _head(url: str, patience: _Patience, *, headers: dict | None = None, redirects: bool = True):
    """(status, headers) of a HEAD request within the time limits; a WeightsError when the host
    cannot be reached or does not answer."""
    limits = _Timeouts()
    if not limits.arm(patience):
        raise WeightsError(f"{url}: no answer for {GIVE_UP_SECONDS:.0f} s")
    request = urllib.request.Request(url, method="HEAD",
                                     headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity",
                                              **(headers or {})})
    try:
        with _opener(limits, redirects=redirects).open(request) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, exc.headers
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise WeightsError(f"{url}: {_no_connection(exc, limits)}") from None


class _Bar:
    """A rich download bar on stderr (bytes, speed, time left); silent when disabled."""

    def __init__(self, label: str, *, total: int | None, done: int, enabled: bool | None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.label, self.total, self.done = label, total, done
        self._progress = None
        self._task = None

    def __enter__(self) -> "_Bar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(f"downloading {self.label}", total=self.total,
                                                 completed=self.done)
        return self

    def advance(self, count: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, count)

    def __exit__(self, *exc_info) -> None:
        if self._progress is not None:
            self._progress.stop()


# --------------------------------------------------------------------------------------------
# Google Drive


class _PageParser(html.parser.HTMLParser):
    """Collects the forms (action, hidden fields) and link targets of Drive's warning page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, list[tuple[str, str]]]] = []
        self.links: list[str] = []
        self._form: tuple[str, list[tuple[str, str]]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        if tag == "form":
            self._form = (attributes.get("action", ""), [])
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and attributes.get("name") and "value" in attributes:
            if attributes.get("type", "text").lower() != "submit":
                self._form[1].append((attributes["name"], attributes["value"]))
        elif tag == "a" and attributes.get("href"):
            self.links.append(attributes["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None


def gdrive_base() -> str:
    return os.environ.get(ENV_GDRIVE) or GDRIVE_URL


def _resolve_gdrive(file_id: str, opener) -> str:
    """The URL that serves a Drive file's bytes, going through the large-file confirmation.

    Drive answers a direct download of a large file with an HTML warning page instead of the
    bytes. Its current form is a `<form action=".../download">` (drive.usercontent.google.com)
    whose hidden fields (`id`, `export`, `confirm`, `uuid`) make the download URL; older pages
    carry a `confirm=` token in a link or set a `download_warning...` cookie instead.
    """
    base = gdrive_base()
    first = f"{base}?{urllib.parse.urlencode({'export': 'download', 'id': file_id})}"
    request = urllib.request.Request(first, headers={"User-Agent": USER_AGENT})
    try:
        response = opener.open(request)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _http_failure(first, exc.code, str(exc.reason), "") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise WeightsError(
            f"{first}: cannot reach Google Drive ({getattr(exc, 'reason', exc)}); check the connection, or "
            f"download https://drive.google.com/file/d/{file_id} in a browser and pass --weights PATH") from None
    with response:
        if response.headers.get_content_type() != "text/html":
            return response.geturl()  # small files come straight away
        page = response.read(4 << 20).decode("utf-8", errors="replace")
        final_url = response.geturl()
    parser = _PageParser()
    parser.feed(page)
    for action, fields in parser.forms:
        names = {name for name, _ in fields}
        if "id" in names and ("confirm" in names or "uuid" in names):
            target = urllib.parse.urljoin(final_url, action)
            return f"{target}?{urllib.parse.urlencode(fields)}"
    token = None
    for link in parser.links:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(html.unescape(link)).query)
        if "confirm" in query:
            token = query["confirm"][0]
            break
    if token is None:
        match = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
        token = match.group(1) if match else None
    if token is None:
        for handler in getattr(opener, "handlers", []):
            jar = getattr(handler, "cookiejar", None)
            for cookie in jar or []:
                if cookie.name.startswith("download_warning"):
                    token = cookie.value
    if token is not None:
        return f"{base}?{urllib.parse.urlencode({'export': 'download', 'confirm': token, 'id': file_id})}"
    raise WeightsError(
        f"Google Drive did not serve the file {file_id} (a quota, permission or changed page); open "
        f"https://drive.google.com/file/d/{file_id} in a browser, download it and pass --weights PATH")


# --------------------------------------------------------------------------------------------
# Hugging Face


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def _quiet_huggingface() -> Iterator[None]:
    """huggingface_hub logs each of its retries ("Retrying in 1s [Retry 1/5]") as a warning; sfsep
    reports a failure in one line of its own, so only huggingface_hub's errors get through."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _hf_url(source) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(source.hf_repo, source.hf_filename, revision=source.hf_revision, endpoint=_hf_endpoint())


def _hf_headers() -> dict:
    """The token huggingface_hub would send (HF_TOKEN or a login), for gated repos."""
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:  # pragma: no cover - an unreadable token file: go without
        token = None
    return {"Authorization": f"Bearer {token}"} if token else {}


def _network_error(exc: BaseException) -> bool:
    """A connection lost mid-file, as the HTTP library under huggingface_hub raises it."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in (
        "httpx", "httpx2", "httpcore", "requests", "urllib3")


def _download_huggingface(source, *, patience: _Patience, model: str, force: bool) -> Path:
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    if _truthy("HF_HUB_OFFLINE"):  # huggingface_hub's own offline switch
        raise WeightsError(_offline_miss_message(source, model))
    label = f"{source.hf_repo}/{source.hf_filename}"
    url = _hf_url(source)
    _head(url, patience, headers=_hf_headers(), redirects=False)  # any answer will do: the Hub is reachable
    kwargs = _hf_kwargs(source)
    endpoint = _hf_endpoint()
    if endpoint:
        kwargs["endpoint"] = endpoint
    for attempt in range(2):
        try:
            with _quiet_huggingface():
                path = Path(hf_hub_download(**kwargs, force_download=force or attempt > 0,
                                            etag_timeout=READ_TIMEOUT_SECONDS))
        except hf_errors.LocalEntryNotFoundError as exc:
            raise WeightsError(
                f"{label}: cannot download it from Hugging Face ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'no connection'}); check the connection and "
                f"HF_ENDPOINT, or pass --weights PATH") from exc
        except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError,
                hf_errors.EntryNotFoundError, hf_errors.GatedRepoError) as exc:
            raise WeightsError(
                f"{url}: Hugging Face has no such file or denies access ({exc.__class__.__name__}); "
                f"set HF_TOKEN if the repo is gated, or pass --weights PATH") from exc
        except hf_errors.HfHubHTTPError as exc:
            raise WeightsError(f"{label}: Hugging Face download failed ({str(exc).splitlines()[0]}); "
                               f"try again later, or pass --weights PATH") from exc
        except Exception as exc:
            if not _network_error(exc):
                raise
            raise WeightsError(f"{label}: the download from Hugging Face failed ({exc.__class__.__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'no details'}); run the command "
                               f"again (it resumes), or pass --weights PATH") from exc
        patience.refresh()
        try:
            size = path.stat().st_size
            if source.size is not None and size != source.size:
                raise WeightsError(f"{url}: downloaded {size} bytes, models.toml expects {source.size}; "
                                   f"pass --weights PATH to a checkpoint you trust")
            _accept(path, source, url, f"it stays in the Hugging Face cache as {path}, unused")
            return path
        except WeightsError:
            if attempt:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Models and the cache as a whole


def fetch_model(spec, *, offline: bool = False, progress: bool | None = None, log: Log | None = None) -> list[Path]:
    """Every checkpoint of a model (a bag has several), downloaded as needed and checked."""
    if not spec.weights:
        raise WeightsError(f"model '{spec.name}' lists no weights in models.toml; pass --weights PATH")
    return [ensure(source, offline=offline, progress=progress, log=log, model=spec.name) for source in spec.weights]


def cache_status(spec) -> tuple[int, int]:
    """(cached checkpoints, checkpoints) for a model; no network, no hashing."""
    return sum(cached_path(source) is not None for source in spec.weights), len(spec.weights)


def verify_source(source) -> list[Check]:
    """Hash every cached copy of a checkpoint (from its source or a mirror); [] when none is cached."""
    return [check_file(path, candidate) for candidate, path in _cached(source)]


def verify_model(spec, *, missing: bool = True) -> list[Check]:
    """Hash every cached checkpoint of a model; with `missing`, a file not cached is a failed
    Check ("not cached"), otherwise it is left out (`sfsep fetch --verify` checks the cache)."""
    results = []
    for source in spec.weights:
        results.extend(verify_source(source)
                       or ([Check(Path(where_expected(source)), False, None, "not cached")] if missing else []))
    return results


def fetch_each(spec, *, offline: bool = False, progress: bool | None = None,
               log: Log | None = None) -> Iterator[tuple[object, Path | WeightsError]]:
    """(source, its checked local path or the WeightsError that stopped it) for every checkpoint
    of a model, going on after a failure (`sfsep fetch`; `fetch_model` stops at the first)."""
    for source in spec.weights:
        try:
            yield source, ensure(source, offline=offline, progress=progress, log=log, model=spec.name)
        except WeightsError as exc:
            yield source, exc


@dataclass
class Reach:
    """Whether one source of a checkpoint answers (a HEAD request; nothing is downloaded)."""

    label: str
    mirror: bool
    ok: bool
    detail: str


def probe(source) -> list[Reach]:
    """HEAD the source and each mirror (redirects followed), each within the usual time limits."""
    results = []
    for index, candidate in enumerate(_candidates(source)):
        headers: dict = {}
        if is_packaged(candidate):
            present = packaged_path(candidate).is_file()
            results.append(Reach(source_label(candidate), index > 0, present,
                                 "shipped in the package" if present else "missing from the installed package"))
            continue
        if is_huggingface(candidate):
            url, headers = _hf_url(candidate), _hf_headers()
        elif getattr(candidate, "gdrive_id", None):
            url = f"{gdrive_base()}?{urllib.parse.urlencode({'export': 'download', 'id': candidate.gdrive_id})}"
        else:
            url = candidate.url
        label = source_label(candidate)
        try:
            status, answer = _head(url, _Patience(), headers=headers)
        except WeightsError as exc:
            results.append(Reach(label, index > 0, False, str(exc).removeprefix(f"{url}: ")))
            continue
        ok = 200 <= status < 300
        detail = f"HTTP {status}"
        length = answer.get("X-Linked-Size") or answer.get("Content-Length")
        if ok and length and length.isdigit():
            detail += f", {human_size(int(length))}"
            if candidate.size is not None and int(length) != candidate.size:
                ok, detail = False, detail + f", but models.toml expects {candidate.size} bytes"
        if ok and answer.get_content_type() == "text/html" and not getattr(candidate, "gdrive_id", None):
            ok, detail = False, detail + ", a web page instead of the file"
        results.append(Reach(label, index > 0, ok, detail))
    return results


def _owned_folders() -> list[Path]:
    """The folders sfsep creates in its cache (nothing else there is ever deleted); verified/ holds
    the records of older versions."""
    return [weights_dir(), _records_dir()]


def cache_files() -> Iterable[Path]:
    return sorted(p for folder in _owned_folders() if folder.is_dir() for p in folder.rglob("*") if p.is_file())


def clean_cache() -> tuple[int, int]:
    """Delete what sfsep put in its cache folder (weights, partial downloads, locks, verification
    records; not the Hugging Face cache, and no other file that happens to share the folder).
    Returns (files, bytes) removed."""
    files = list(cache_files())
    size = sum(p.stat().st_size for p in files)
    for folder in _owned_folders():
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
    return len(files), size


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover


__all__ = [
    "Check", "Reach", "cache_dir", "cache_files", "cache_status", "cached_path", "check_file", "checksum_matches",
    "clean_cache", "ensure", "expected_path", "fetch_each", "fetch_model", "gdrive_base", "human_size", "is_packaged",
    "offline_requested", "packaged_path", "probe", "record_path", "recorded_digest", "sha256_of", "source_host",
    "source_label", "verify_model", "verify_source", "weights_dir", "where_expected",
]
