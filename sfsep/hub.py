"""Weights: where they are cached, how they are downloaded and checked, and offline use.

A model's checkpoints (`registry.WeightsSource`) come from one of three kinds of host:

- a Hugging Face repo file: fetched with `huggingface_hub.hf_hub_download`, so it lives in the
  Hugging Face cache and HF_HOME, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE mean what they mean
  for every other Hugging Face tool;
- a plain URL (GitHub releases, dl.fbaipublicfiles.com): streamed into sfsep's own cache;
- a Google Drive file id: the same streaming, after Drive's "this file is too large to scan for
  viruses" confirmation step.

sfsep's cache is `$SFSEP_CACHE`, else `$XDG_CACHE_HOME/sfsep`, else `~/.cache/sfsep`; files go
to `<cache>/weights/<name>`. A download is written to `<name>.part` next to it, resumed with an
HTTP Range request when a connection drops, checked against the expected size and sha256 (a
full digest or a prefix: demucs names carry the first 8 hex digits), and only then renamed to
`<name>`, so the final name never holds a partial or unverified file. A file lock per name
(`<name>.lock`) makes concurrent processes download a file once: the second waits, then finds
the verified file.

Hashing a large checkpoint on every run would cost seconds, so a verified file leaves a small
record (`<cache>/verified/`: its size, mtime and sha256); a file whose size or mtime changed is
hashed again, and `verify` always re-hashes. When the registry knows no checksum, the digest
recorded at download time is what a later `verify` compares against.

Offline (`offline=True` or SFSEP_OFFLINE=1) nothing here opens a connection: a missing file is
a WeightsError saying where the file is expected and how to bring it in. Nothing in this module
imports torch.
"""

from __future__ import annotations

import hashlib
import html.parser
import http.client
import http.cookiejar
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from filelock import FileLock

from . import __version__
from .errors import WeightsError

ENV_CACHE = "SFSEP_CACHE"
ENV_OFFLINE = "SFSEP_OFFLINE"
ENV_GDRIVE = "SFSEP_GDRIVE_URL"

GDRIVE_URL = "https://drive.google.com/uc"
"""Drive's download endpoint; SFSEP_GDRIVE_URL replaces it (tests point it at a loopback server)."""

CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 30.0
ATTEMPTS = 4  # connections per download before giving up (each resumes where the last stopped)
RETRY_PAUSE_SECONDS = 0.5
USER_AGENT = f"sfsep/{__version__} (+https://github.com/sfsep)"

Log = Callable[[str], None]


def _default_log(message: str) -> None:
    print(message, file=sys.stderr)


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


def source_label(source) -> str:
    """Where a checkpoint comes from, for tables and messages."""
    if is_huggingface(source):
        revision = f"@{source.hf_revision}" if source.hf_revision else ""
        return f"hf://{source.hf_repo}/{source.hf_filename}{revision}"
    if getattr(source, "gdrive_id", None):
        return f"https://drive.google.com/file/d/{source.gdrive_id}"
    return source.url or "?"


def source_host(source) -> str:
    """A short host name: huggingface.co, github.com, drive.google.com, ..."""
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


def cached_path(source) -> Path | None:
    """The checkpoint's local file if it is cached (no network, no hashing), else None."""
    if is_huggingface(source):
        from huggingface_hub import try_to_load_from_cache

        kwargs = _hf_kwargs(source)
        found = try_to_load_from_cache(kwargs["repo_id"], kwargs["filename"], revision=kwargs.get("revision"))
        return Path(found) if isinstance(found, str) and Path(found).is_file() else None
    path = expected_path(source)
    return path if path.is_file() else None


def where_expected(source) -> str:
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


def _record_file(path: Path) -> Path:
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]
    return _records_dir() / f"{key}.json"


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(_record_file(path).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return None
    if record.get("path") != str(Path(path).resolve()) or record.get("size") != stat.st_size \
            or record.get("mtime_ns") != stat.st_mtime_ns:
        return None
    return record


def _write_record(path: Path, digest: str) -> None:
    stat = path.stat()
    record = {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
              "sha256": digest}
    target = _record_file(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(record))
        os.replace(temporary, target)
    except OSError:
        pass  # a read-only cache still works; it is only hashed again next time


@dataclass
class Check:
    """The outcome of checking one file: ok, or what is wrong with it."""

    path: Path
    ok: bool
    sha256: str | None
    problem: str = ""


def check_file(path: Path, source, *, rehash: bool = False) -> Check:
    """Check a cached file against the source's size and sha256 (or, when the registry knows no
    digest, the one recorded when it was downloaded). Uses the verified record unless `rehash`."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return Check(path, False, None, "missing")
    if source.size is not None and size != source.size:
        return Check(path, False, None, f"size {size} bytes, expected {source.size}")
    record = None if rehash else _read_record(path)
    if record is not None and checksum_matches(record["sha256"], source.sha256):
        return Check(path, True, record["sha256"])
    previous = None
    if not source.sha256:  # no published digest: the one recorded at download time stands in
        try:
            previous = json.loads(_record_file(path).read_text()).get("sha256")
        except (OSError, ValueError):
            previous = None
    digest = sha256_of(path)
    expected = source.sha256 or previous
    if not checksum_matches(digest, expected):
        return Check(path, False, digest, f"sha256 {digest[:16]}..., expected {expected}")
    _write_record(path, digest)
    return Check(path, True, digest)


# --------------------------------------------------------------------------------------------
# Getting files


def ensure(source, *, offline: bool = False, progress: bool | None = None, log: Log | None = None,
           model: str = "", force_check: bool = False) -> Path:
    """The local path of a checkpoint, downloading and verifying it first when needed.

    `model` only makes messages name the model. `progress`: show a progress bar (default: when
    stderr is a terminal). `force_check`: re-hash a cached file even if it was verified before
    (a file that fails is downloaded again).
    """
    log = log or _default_log
    offline = offline_requested(offline)
    if is_huggingface(source):
        return _ensure_huggingface(source, offline=offline, log=log, model=model, rehash=force_check)
    if not (source.url or getattr(source, "gdrive_id", None)):
        raise WeightsError(f"model '{model}': its weights entry in models.toml has no url, gdrive_id or hf_repo")
    target = expected_path(source)
    if offline:
        if target.is_file():
            check = check_file(target, source, rehash=force_check)
            if check.ok:
                return target
            raise WeightsError(
                f"{target}: the cached weights of model '{model}' fail their check ({check.problem}) and "
                f"--offline forbids downloading them again; run `sfsep fetch {model}` on a connected "
                f"machine and copy the file here, or pass --weights PATH")
        raise WeightsError(_offline_miss_message(source, model))
    return _download_into_cache(source, target, progress=progress, log=log, model=model, rehash=force_check)


def _offline_miss_message(source, model: str) -> str:
    name = model or source.cache_name
    if is_huggingface(source):
        copy = (f"copy its Hugging Face cache folder ($HF_HOME/hub) to {_hf_cache_hint()} here (or point "
                f"HF_HOME at the copy)")
    else:
        copy = f"copy its cache folder (`sfsep cache path`) to {cache_dir()} here"
    return (
        f"model '{name}' needs the weights file {source.cache_name}, which is not cached (expected in "
        f"{where_expected(source)}), and offline mode forbids downloading it from {source_label(source)}. "
        f"On a machine with internet run `sfsep fetch {name}` and {copy}, or run with --weights PATH to a "
        f"checkpoint file, or use --model classic (no weights needed)"
    )


def _download_into_cache(source, target: Path, *, progress: bool | None, log: Log, model: str,
                         rehash: bool = False) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            check = check_file(target, source, rehash=rehash)
            if check.ok:
                return target
            log(f"warning: {target} fails its check ({check.problem}); downloading it again")
            target.unlink()
        partial = target.with_name(target.name + ".part")
        opener = _opener()
        url = _resolve_gdrive(source.gdrive_id, opener) if getattr(source, "gdrive_id", None) else source.url
        _fetch_with_retries(url, partial, opener=opener, label=source.cache_name, expected_size=source.size,
                            progress=progress, model=model)
        size = partial.stat().st_size
        if source.size is not None and size != source.size:
            partial.unlink()
            raise WeightsError(
                f"{url}: downloaded {size} bytes, models.toml expects {source.size}; the file was discarded "
                f"(the host may serve a different file now; try again later or pass --weights PATH)")
        digest = sha256_of(partial)
        if not checksum_matches(digest, source.sha256):
            partial.unlink()
            raise WeightsError(
                f"{url}: the download's sha256 is {digest}, expected {source.sha256}; the file was discarded "
                f"and nothing was cached (a corrupted transfer or a changed file: run the command again, "
                f"or pass --weights PATH to a checkpoint you trust)")
        os.replace(partial, target)
        _write_record(target, digest)
        return target


# --------------------------------------------------------------------------------------------
# HTTP


class _Retry(Exception):
    """A transient failure: the next attempt resumes (or restarts) the download."""


def _opener() -> urllib.request.OpenerDirector:
    # Cookies matter for Google Drive's confirmation; proxies come from the environment.
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _http_failure(url: str, code: int, reason: str, model: str) -> WeightsError:
    fix = "download the file by hand and pass --weights PATH, or use --model classic (no weights needed)"
    if code in (404, 410):
        return WeightsError(f"{url}: HTTP {code} {reason}: the file is not there (it may have moved); {fix}")
    if code in (401, 403):
        return WeightsError(f"{url}: HTTP {code} {reason}: access denied; {fix}")
    return WeightsError(f"{url}: HTTP {code} {reason}; try again later, or {fix}")


def _fetch_with_retries(url: str, partial: Path, *, opener, label: str, expected_size: int | None,
                        progress: bool | None, model: str) -> None:
    last_problem = ""
    for attempt in range(ATTEMPTS):
        try:
            _stream(url, partial, opener=opener, label=label, expected_size=expected_size, progress=progress,
                    model=model)
            return
        except _Retry as exc:
            last_problem = str(exc)
            if attempt + 1 < ATTEMPTS:
                time.sleep(RETRY_PAUSE_SECONDS * (attempt + 1))
    kept = partial.stat().st_size if partial.exists() else 0
    resume = f"; {kept} bytes are kept in {partial} and the next run resumes from there" if kept else ""
    raise WeightsError(
        f"{url}: the download failed {ATTEMPTS} times ({last_problem}){resume}. Check the connection and run "
        f"the command again, or pass --weights PATH, or use --model classic (no weights needed)")


def _stream(url: str, partial: Path, *, opener, label: str, expected_size: int | None, progress: bool | None,
            model: str) -> None:
    """One connection: append the rest of the file to `partial` (Range from its current size)."""
    offset = partial.stat().st_size if partial.exists() else 0
    if expected_size is not None and offset >= expected_size:
        if offset == expected_size:
            return
        partial.unlink()
        offset = 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = opener.open(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            partial.unlink()  # the partial file does not fit the server's file: start over
            raise _Retry(f"HTTP 416 for a resumed download of {offset} bytes") from None
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
        raise _http_failure(url, exc.code, str(exc.reason), model) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Retry(f"cannot connect: {reason}") from None
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
                partial.unlink()
                raise _Retry(f"the server resumed at '{content_range}', not at byte {offset}")
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # the server ignored Range (or there was none): from the start
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
                    bar.advance(len(block))
            except (http.client.HTTPException, OSError) as exc:
                raise _Retry(f"connection lost after {offset + received} bytes ({type(exc).__name__})") from None
        if remaining is not None and received < remaining:
            raise _Retry(f"connection closed after {offset + received} of {offset + remaining} bytes")


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
        response = opener.open(request, timeout=TIMEOUT_SECONDS)
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


def _ensure_huggingface(source, *, offline: bool, log: Log, model: str, rehash: bool = False) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hf_errors

    kwargs = _hf_kwargs(source)
    endpoint = _hf_endpoint()
    if endpoint:
        kwargs["endpoint"] = endpoint
    label = f"{source.hf_repo}/{source.hf_filename}"
    for attempt in range(2):
        try:
            path = Path(hf_hub_download(**kwargs, local_files_only=offline, force_download=attempt > 0))
        except hf_errors.LocalEntryNotFoundError as exc:
            if offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
                raise WeightsError(_offline_miss_message(source, model)) from exc
            raise WeightsError(
                f"{label}: cannot download it from Hugging Face ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'no connection'}); check the connection and "
                f"HF_ENDPOINT, or pass --weights PATH") from exc
        except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError,
                hf_errors.EntryNotFoundError, hf_errors.GatedRepoError) as exc:
            raise WeightsError(
                f"{label}: Hugging Face has no such file or denies access ({exc.__class__.__name__}); "
                f"set HF_TOKEN if the repo is gated, or pass --weights PATH") from exc
        except hf_errors.HfHubHTTPError as exc:
            raise WeightsError(f"{label}: Hugging Face download failed ({str(exc).splitlines()[0]}); "
                               f"try again later, or pass --weights PATH") from exc
        check = check_file(path, source, rehash=rehash or attempt > 0)
        if check.ok:
            return path
        if offline or attempt:
            raise WeightsError(
                f"{path}: the cached weights of model '{model}' fail their check ({check.problem})"
                + ("; offline mode forbids downloading them again" if offline else " even after a new download")
                + "; pass --weights PATH to a checkpoint you trust")
        log(f"warning: {path} fails its check ({check.problem}); downloading it again")
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Models and the cache as a whole


def fetch_model(spec, *, offline: bool = False, progress: bool | None = None, log: Log | None = None) -> list[Path]:
    """Every checkpoint of a model (a bag has several), downloaded and verified as needed."""
    if not spec.weights:
        raise WeightsError(f"model '{spec.name}' lists no weights in models.toml; pass --weights PATH")
    return [ensure(source, offline=offline, progress=progress, log=log, model=spec.name) for source in spec.weights]


def cache_status(spec) -> tuple[int, int]:
    """(cached checkpoints, checkpoints) for a model; no network, no hashing."""
    return sum(cached_path(source) is not None for source in spec.weights), len(spec.weights)


def verify_model(spec) -> list[Check]:
    """Re-hash every cached checkpoint of a model (missing ones are reported as missing)."""
    results = []
    for source in spec.weights:
        path = cached_path(source)
        results.append(check_file(path, source, rehash=True) if path is not None
                       else Check(Path(where_expected(source)), False, None, "not cached"))
    return results


def _owned_folders() -> list[Path]:
    """The folders sfsep creates in its cache (nothing else there is ever deleted)."""
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
    "Check", "cache_dir", "cache_files", "cache_status", "cached_path", "check_file", "checksum_matches",
    "clean_cache", "ensure", "expected_path", "fetch_model", "gdrive_base", "human_size", "offline_requested",
    "sha256_of", "source_host", "source_label", "verify_model", "weights_dir", "where_expected",
]
