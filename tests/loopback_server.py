"""A threaded HTTP server on 127.0.0.1 that imitates the hosts sfsep downloads weights from.

Used by tests/test_hub.py and tests/test_registry.py (never touches the network). It serves
byte strings at paths, honours `Range: bytes=N-` (206 + Content-Range) and `If-Range` (a
validator that is not the file's current ETag or Last-Modified gets the whole file, 200), sends
a strong ETag made from the content unless told not to, and can misbehave on demand: drop the
connection halfway, answer 404 or 500, serve corrupted bytes or a web page, or trickle the body
slowly (to make two downloads overlap). It also imitates

- the Hugging Face endpoint (`/<repo>/resolve/<revision>/<file>` with X-Repo-Commit and an ETag
  holding the file's sha256), as huggingface_hub's `hf_hub_download` expects it;
- Google Drive's large-file confirmation: `/uc?export=download&id=ID` answers an HTML warning
  page, either the current form (action `/download`, hidden `id`, `export`, `confirm`, `uuid`) or
  the older cookie (`download_warning_...`) plus a `confirm=` link.

Every request is logged as (method, path, Range header) in `server.requests`, and its If-Range
header in `server.if_ranges` (same order).
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass


@dataclass
class Entry:
    data: bytes
    mode: str = "ok"  # ok | drop | 404 | 500 | corrupt | html
    times: int = 1 << 30  # how many requests misbehave before the entry behaves
    delay: float = 0.0  # seconds between 64 kB pieces of the body
    headers: dict | None = None
    content_type: str = "application/octet-stream"
    etag: bool = True  # send ETag: "<16 hex of the content's sha256>" (when headers give none)
    last_modified: str | None = None  # an HTTP date to send as Last-Modified


def content_etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()[:16]}"'


class LoopbackServer:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.if_ranges: list[str | None] = []
        self.gdrive: dict[str, tuple[bytes, str]] = {}
        self.lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, data: bytes, **options) -> str:
        self.entries[path] = Entry(data, **options)
        return self.url(path)

    def add_hf(self, repo: str, filename: str, data: bytes, revision: str = "main", commit: str = "c" * 40) -> None:
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        for rev in {revision, commit}:
            self.add(f"/{repo}/resolve/{rev}/{filename}", data, headers=headers)

    def add_gdrive(self, file_id: str, data: bytes, style: str = "form") -> None:
        self.gdrive[file_id] = (data, style)

    def gets(self, path_prefix: str) -> list[tuple[str, str, str | None]]:
        with self.lock:
            return [r for r in self.requests if r[0] == "GET" and r[1].startswith(path_prefix)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(server: LoopbackServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _log(self) -> None:
            with server.lock:
                server.requests.append((self.command, self.path, self.headers.get("Range")))
                server.if_ranges.append(self.headers.get("If-Range"))

        def do_HEAD(self) -> None:
            self._log()
            self._dispatch(head=True)

        def do_GET(self) -> None:
            self._log()
            self._dispatch(head=False)

        def _dispatch(self, head: bool) -> None:
            parts = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parts.query))
            if parts.path == "/uc" and query.get("id") in server.gdrive:
                return self._gdrive_uc(query)
            if parts.path == "/download" and query.get("id") in server.gdrive:
                data, style = server.gdrive[query["id"]]
                if style == "form" and query.get("confirm") == "t" and query.get("uuid") == "u-123":
                    return self._send(Entry(data), head)
                return self._page("<html><body>bad confirmation</body></html>", 400)
            entry = server.entries.get(parts.path)
            if entry is None:
                return self._page("<html>not found</html>", 404)
            misbehave = entry.times > 0
            if misbehave and entry.mode in ("404", "500", "drop", "html"):
                if not head:
                    entry.times -= 1
                if entry.mode == "404":
                    return self._page("<html>not found</html>", 404)
                if entry.mode == "500":
                    return self._page("<html>server error</html>", 500)
                if entry.mode == "html":
                    return self._page("<html><body>Sign in to continue</body></html>", 200)
                return self._send(entry, head, drop=True)
            if entry.mode == "corrupt":
                broken = bytearray(entry.data)
                broken[len(broken) // 3] ^= 0xFF
                return self._send(Entry(bytes(broken), headers=entry.headers, delay=entry.delay, etag=entry.etag,
                                        last_modified=entry.last_modified), head)
            return self._send(entry, head)

        def _gdrive_uc(self, query: dict) -> None:
            file_id = query["id"]
            data, style = server.gdrive[file_id]
            if style == "cookie":
                if query.get("confirm") == "TOKEN42" and "download_warning_77=TOKEN42" in (self.headers.get("Cookie") or ""):
                    return self._send(Entry(data), head=False)
                page = (f'<html><body>Google Drive can\'t scan this file for viruses. '
                        f'<a href="/uc?export=download&amp;confirm=TOKEN42&amp;id={file_id}">Download anyway</a>'
                        f'</body></html>')
                return self._page(page, 200, cookie="download_warning_77=TOKEN42; Path=/")
            page = ('<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>'
                    '<p>Google Drive can\'t scan this file for viruses.</p>'
                    f'<form id="download-form" action="{server.base}/download" method="get">'
                    '<input type="submit" id="uc-download-link" value="Download anyway"/>'
                    f'<input type="hidden" name="id" value="{file_id}">'
                    '<input type="hidden" name="export" value="download">'
                    '<input type="hidden" name="confirm" value="t">'
                    '<input type="hidden" name="uuid" value="u-123"></form></body></html>')
            return self._page(page, 200)

        def _page(self, text: str, status: int, cookie: str | None = None) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            if cookie:
                self.send_header("Set-Cookie", cookie)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _send(self, entry: Entry, head: bool, drop: bool = False) -> None:
            data = entry.data
            start = 0
            validators = dict(entry.headers or {})
            if entry.etag and "ETag" not in validators:
                validators["ETag"] = content_etag(data)
            if entry.last_modified:
                validators["Last-Modified"] = entry.last_modified
            requested = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if if_range is not None and if_range not in (validators.get("ETag"), validators.get("Last-Modified")):
                requested = None  # RFC 9110: the file changed, so the whole of it
            if requested and requested.startswith("bytes="):
                start = int(requested[len("bytes="):].split("-")[0] or 0)
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Type", entry.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            for key, value in validators.items():
                self.send_header(key, value)
            self.end_headers()
            if head:
                return
            if drop:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            piece = 64 * 1024
            for offset in range(0, len(body), piece):
                self.wfile.write(body[offset: offset + piece])
                if entry.delay:
                    self.wfile.flush()
                    time.sleep(entry.delay)

    return Handler
