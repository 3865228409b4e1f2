"""Running the ASGI app under uvicorn, in the foreground or in a thread.

The listening socket is bound before uvicorn starts, so a port in use is a
clean ``InputError`` (one line at the CLI) instead of a log storm, and tests
can bind port 0 and learn the real port.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from tufota_core import InputError


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket whose accepted connections have Nagle's algorithm off.

    Raises:
        InputError: the address is in use or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: accepted sockets inherit the protocol, and asyncio
    # sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP. With Nagle
    # on, the second write of each keep-alive response waits ~40 ms for the
    # client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    return sock


def check_tls(tls_cert: str | None, tls_key: str | None) -> None:
    """Load the certificate chain and key once, so a bad pair fails before serving.

    Raises:
        InputError: only one of the two is given, a file is missing, or they do not load
            or do not belong together.
    """
    if tls_cert is None and tls_key is None:
        return
    if not tls_cert or not tls_key:
        raise InputError("TLS needs both --tls-cert and --tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls_cert, tls_key)
    except FileNotFoundError as e:
        raise InputError(f"TLS file {e.filename} does not exist") from None
    except (ssl.SSLError, OSError) as e:
        raise InputError(
            f"cannot use TLS certificate {tls_cert} with key {tls_key}: {e.strerror or e}"
        ) from None


def _config(app: FastAPI, tls_cert: str | None, tls_key: str | None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        timeout_graceful_shutdown=3,
    )


def run_forever(
    app: FastAPI,
    host: str,
    port: int,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    on_listening: Callable[[], None] | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until interrupted; ``on_listening`` runs once the socket listens.

    Args:
        sock: a socket ``bind_socket`` made already (else one for ``host``/``port``).

    Raises:
        InputError: the address cannot be bound or the TLS files do not load.
    """
    check_tls(tls_cert, tls_key)
    sock = sock or bind_socket(host, port)
    if on_listening is not None:
        on_listening()
    server = uvicorn.Server(_config(app, tls_cert, tls_key))
    server.run(sockets=[sock])


class ServerThread:
    """uvicorn in a background thread (tests, ``tufota demo``)."""

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        check_tls(tls_cert, tls_key)
        self._sock = bind_socket(host, port)
        self.host = host
        self.port = self._sock.getsockname()[1]
        self.scheme = "https" if tls_cert else "http"
        self._server = uvicorn.Server(_config(app, tls_cert, tls_key))
        self._server.config.install_signal_handlers = False  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
