"""Host header check: the server answers only under the names it was given.

Invariant: an HTTP request whose ``Host`` is not one of the configured
server names (the repository's server URL host, ``serve --server-name``
values, the bound address) nor, when the server is bound to loopback, a
loopback name, is answered 421 before any route or the report fast path
runs. This defeats DNS rebinding: a hostile page whose name resolves to the
server still sends its own name as ``Host``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from tufota_core import safe_text

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS = frozenset({"0.0.0.0", "::"})  # noqa: S104 - names that are not a Host


def host_name(value: str) -> str:
    """The name part of a ``Host`` value or URL host, lower case, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else ""
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def server_names(
    server_url: str, extra: Iterable[str] = (), bound_host: str = ""
) -> frozenset[str]:
    """The names a server answers under: its URL's host, ``extra``, and a specific bound address."""
    names = {host_name(name) for name in extra}
    url_host = urlsplit(server_url).hostname
    if url_host:
        names.add(host_name(url_host))
    if bound_host and bound_host not in _WILDCARDS:
        names.add(host_name(bound_host))
    return frozenset(n for n in names if n)


class HostCheck:
    """ASGI middleware answering 421 to a request for a name this server does not serve."""

    def __init__(
        self,
        app: ASGIApp,
        names: Callable[[], frozenset[str]],
        loopback: Callable[[], bool],
    ) -> None:
        self.app = app
        self._names = names
        self._loopback = loopback

    def allowed(self, host: str) -> bool:
        name = host_name(host)
        return name in self._names() or (self._loopback() and name in LOOPBACK_NAMES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = ""
        for key, value in scope.get("headers", ()):
            if key == b"host":
                host = value.decode("latin-1")
                break
        if self.allowed(host):
            await self.app(scope, receive, send)
            return
        if host:
            status, code = 421, "wrong_host"
            message = (
                f"this server does not answer for host {safe_text(host_name(host), 80)!r}; "
                "add the name with 'tufota serve --server-name'"
            )
        else:
            status, code, message = 400, "no_host", "the request has no Host header"
        body = json.dumps({"error": code, "message": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
