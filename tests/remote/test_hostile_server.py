"""The CLI against a hostile or broken server: bounded time, one line, no traceback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tufota_cli._client import ApiClient, ClientLimits
from tufota_cli.main import main
from tufota_core import TransportError


class _Hostile(BaseHTTPRequestHandler):
    mode = "shape"

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:
        mode = type(self).mode
        if mode == "trickle-headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(100):
                self.wfile.write(b"X-Slow: a\r\n")
                self.wfile.flush()
                time.sleep(0.5)
            return
        body = {
            "shape": b'{"rollouts": "not a list", "devices": 5, "summary": 1}',
            "deep": b"[" * 200_000 + b"]" * 200_000,
            "trickle-body": b"",
        }[mode]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) or 1000))
        self.end_headers()
        if mode == "trickle-body":
            for _ in range(100):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.5)
            return
        self.wfile.write(body)


@pytest.fixture
def hostile() -> Iterator[tuple[str, type[_Hostile]]]:
    handler = type("Handler", (_Hostile,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode", ["trickle-headers", "trickle-body"])
def test_a_trickling_answer_is_given_up_within_the_total_timeout(
    hostile: tuple[str, type[_Hostile]], mode: str
) -> None:
    url, handler = hostile
    handler.mode = mode
    client = ApiClient(url, "t", limits=ClientLimits(total_timeout=2.0))
    started = time.monotonic()
    with pytest.raises(TransportError, match="did not finish answering within 2 s"):
        client.get("/api/v1/fleet")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("mode", ["shape", "deep"])
@pytest.mark.parametrize(
    "command",
    [["fleet", "status"], ["device", "list"], ["rollout", "status"], ["release", "list"]],
    ids=" ".join,
)
def test_an_answer_of_an_unexpected_shape_is_one_line(
    hostile: tuple[str, type[_Hostile]],
    mode: str,
    command: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: object,
) -> None:
    url, handler = hostile
    handler.mode = mode
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    code = main([*command, "--server", url, "--token", "t"])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert url in err


def test_a_malformed_server_url_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fleet", "status", "--server", "http://[::1", "--token", "t"])
    err = capsys.readouterr().err.strip()
    assert code in (1, 2)
    assert len(err.splitlines()) == 1, err
    assert "is not http(s)://HOST[:PORT]" in err
