"""ASGI guards that keep hostile input and unexpected failures from becoming 5xx storms.

Invariants:

* ``JsonGuard``: every request body a route could parse as JSON (any method
  but GET/HEAD/OPTIONS, except release uploads) is read once, refused with
  413 above ``max_bytes``, and refused with 400 when it is not JSON, nests
  deeper than ``max_depth`` or holds an integer outside the signed 64-bit
  range, before any route sees it. The route then reads the same bytes.
* ``ErrorGuard``: an exception no handler mapped becomes a 500
  ``internal_error`` body without internals. Its traceback is logged at most
  once per ``log_interval`` seconds per (route, exception type); the others
  are counted and summarised, so a flood of one hostile request cannot fill
  the log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from repo_server._ingest import BodyTooLargeError, error_body, read_capped_body

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_JSON_DEPTH = 32
_INT_RANGE = (-(2**63), 2**63 - 1)  # what SQLite stores; larger values overflow
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_UNGUARDED_PATHS = ("/api/v1/releases",)  # a bundle upload streams to disk, never JSON


class BadJsonError(ValueError):
    """A body that is JSON-shaped but outside the limits."""


def check_json_value(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse nesting deeper than ``max_depth`` and integers outside 64 bits (iteratively).

    Raises:
        BadJsonError: naming the first problem.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise BadJsonError(f"JSON nests deeper than {max_depth} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif (
            isinstance(item, int)
            and not isinstance(item, bool)
            and not _INT_RANGE[0] <= item <= _INT_RANGE[1]
        ):
            raise BadJsonError("JSON holds an integer outside the 64-bit range")


def load_json(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that answers every hostile body with ``ValueError``, never a crash.

    Raises:
        ValueError: not JSON, too deep (also the parser's own recursion limit),
            or an integer outside 64 bits.
    """
    try:
        value = json.loads(body)
    except RecursionError:
        raise BadJsonError(f"JSON nests deeper than {max_depth} levels") from None
    check_json_value(value, max_depth)
    return value


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class JsonGuard:
    """Reads and checks a request body before the route, then replays it (see module doc)."""

    def __init__(self, app: ASGIApp, max_bytes: Callable[[], int]) -> None:
        self.app = app
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in _NO_BODY_METHODS
            or scope["path"].startswith(_UNGUARDED_PATHS)
        ):
            await self.app(scope, receive, send)
            return
        cap = self._max_bytes()
        try:
            body = await read_capped_body(receive, cap)
        except BodyTooLargeError:
            await _respond(
                send, 413, error_body("too_large", f"a request body is at most {cap} bytes")
            )
            return
        if body is None:
            return
        content_type = ""
        for key, value in scope.get("headers", ()):
            if key == b"content-type":
                content_type = value.decode("latin-1").lower()
        if body.strip() and (not content_type or "json" in content_type):
            try:
                load_json(body)
            except ValueError as e:
                message_text = str(e) if isinstance(e, BadJsonError) else "body is not JSON"
                await _respond(send, 400, error_body("bad_request", message_text))
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ErrorGuard:
    """Maps an unhandled exception to a logged, rate-limited 500 (see module doc)."""

    def __init__(self, app: ASGIApp, log_interval: float = 60.0) -> None:
        self.app = app
        self._interval = log_interval
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def _log(self, scope: Scope, exc: Exception) -> None:
        route = f"{scope.get('method', '')} {scope.get('path', '')}"[:200]
        key = (route, type(exc).__name__)
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (-self._interval, 0))
            if now - last < self._interval:
                self._last[key] = (last, suppressed + 1)
                return
            self._last[key] = (now, 0)
            if len(self._last) > 1000:  # bounded: forget the oldest keys
                for old in list(self._last)[:500]:
                    del self._last[old]
        more = f" ({suppressed} more like it were not logged)" if suppressed else ""
        logger.error("unexpected error answering %s%s", route, more, exc_info=exc)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            self._log(scope, exc)
            if not started:
                await _respond(
                    send, 500, error_body("internal_error", "the server failed; see its log")
                )
