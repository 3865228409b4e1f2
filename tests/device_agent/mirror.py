"""A hostile mirror: an HTTP proxy on loopback that rewrites what the real server sends.

It forwards every request to the origin and lets a test replace the answer for
chosen paths: fixed bytes (replayed or forged metadata, other firmware), an
endless stream, or a trickle. Report POSTs pass through unchanged, so the
origin's report endpoint sees what the device says about the attack, unless
``answers`` names them: then the raw bytes of a hostile HTTP answer (status
line and headers included, so even the head can trickle) go back instead.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Body = Callable[[], Iterator[bytes]]


@dataclass
class Rewrites:
    """What the mirror does instead of forwarding, by request path suffix."""

    replace: dict[str, bytes] = field(default_factory=dict)
    stream: dict[str, tuple[int, Body]] = field(default_factory=dict)  # (Content-Length, body)
    answers: dict[str, Body] = field(default_factory=dict)  # POST path suffix -> raw answer
    hits: list[str] = field(default_factory=list)

    def find(self, path: str) -> tuple[str, Any] | None:
        for suffix, data in self.replace.items():
            if path.endswith(suffix):
                return "replace", data
        for suffix, spec in self.stream.items():
            if path.endswith(suffix):
                return "stream", spec
        return None


def endless() -> Iterator[bytes]:
    chunk = b"\0" * 65536
    while True:
        yield chunk


def endless_answer(limit: int) -> Body:
    """An HTTP answer that claims ``limit`` bytes and sends them (effectively endless)."""

    def body() -> Iterator[bytes]:
        yield f"HTTP/1.1 202 Accepted\r\nContent-Length: {limit}\r\n\r\n".encode()
        chunk = b"x" * 65536
        for _ in range(limit // len(chunk)):
            yield chunk

    return body


def trickle(data: bytes, delay: float) -> Body:
    def body() -> Iterator[bytes]:
        for i in range(len(data)):
            time.sleep(delay)
            yield data[i : i + 1]

    return body


def _handler(origin: str, rewrites: Rewrites) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _forward(self, method: str, body: bytes | None) -> None:
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() in ("range", "if-range", "content-type")
            }
            request = urllib.request.Request(origin + self.path, body, headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    status, data, got = response.status, response.read(), response.headers
            except urllib.error.HTTPError as e:
                status, data, got = e.code, e.read(), e.headers
            self.send_response(status)
            for name in ("Content-Type", "ETag", "Content-Range", "Accept-Ranges"):
                if got.get(name):
                    self.send_header(name, got[name])
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            found = rewrites.find(self.path.split("?", 1)[0])
            if found is None:
                self._forward("GET", None)
                return
            rewrites.hits.append(self.path)
            kind, spec = found
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if kind == "replace":
                self.send_header("Content-Length", str(len(spec)))
                self.end_headers()
                self.wfile.write(spec)
                return
            length, body = spec
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.close_connection = True
            try:
                for chunk in body():
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            answer = next((b for k, b in rewrites.answers.items() if self.path.endswith(k)), None)
            if answer is None:
                self._forward("POST", body)
                return
            rewrites.hits.append(self.path)
            self.close_connection = True
            try:
                for chunk in answer():
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


class Mirror:
    """The proxy, running in a thread until ``close``."""

    def __init__(self, origin: str) -> None:
        self.rewrites = Rewrites()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(origin, self.rewrites))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
