"""No input gives a 5xx: deep JSON, huge integers, unbounded durations, unexpected failures.

Each case is a request a hostile or broken client can send to a real server
on loopback; the answer is a 4xx naming the problem and nothing changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from securesystemslib.signer import CryptoSigner

from repo_server import Repository, ServerContext, ServerThread, create_app
from staging import RolloutController, SqliteTrackerStore
from tests.conftest import ask
from tufota_core import Report, canonical_bytes, sign_report


@dataclass
class Running:
    url: str
    ctx: ServerContext
    operator: dict[str, str]

    def post(
        self, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = {**self.operator, **(headers or {})}
        return requests.post(f"{self.url}{path}", headers=headers, timeout=10, **kwargs)


@pytest.fixture
def running(released_repo: Repository) -> Iterator[Running]:
    publisher = released_repo.publisher(ask)
    store = SqliteTrackerStore(released_repo.tracker_path)
    tokens = released_repo.token_store()
    ctx = ServerContext(publisher, store, RolloutController(store, publisher), tokens=tokens)
    app = create_app(ctx, background=False)

    @app.get("/test-only/boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("secret internals /etc/tufota")

    operator = {"Authorization": f"Bearer {tokens.create('ops', 'operator')}"}
    with ServerThread(app) as thread:
        yield Running(thread.url, ctx, operator)
    store.close()


def _register(ctx: ServerContext, device_id: str) -> CryptoSigner:
    signer = CryptoSigner.generate_ed25519()
    public = {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}
    ctx.store.register_device(
        device_id, "gw-100", public_key=public, status="accepted", installed_version="1.0.0"
    )
    return signer


def _signed(signer: CryptoSigner, device_id: str, seq: int) -> dict[str, Any]:
    """A correctly signed envelope whose seq the Report class would refuse to build."""
    report = sign_report(Report(device_id, "gw-100", 1, "idle"), signer)["report"]
    report["seq"] = seq
    return {"report": report, "signature": signer.sign(canonical_bytes(report)).to_dict()}


DEEP = b"[" * 8000 + b"]" * 8000


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/devices/dev-1/reports",  # needs no token
        "/api/v1/devices",
        "/api/v1/rollouts",
        "/api/v1/rollouts/r-1/pause",
        "/api/v1/alerts/1/resolve",
        "/api/v1/devices/dev-1/accept",
    ],
)
def test_deeply_nested_json_is_a_400(running: Running, path: str) -> None:
    _register(running.ctx, "dev-1")
    bodies = [DEEP, b'{"a":' * 1500 + b"1" + b"}" * 1500]
    if not path.endswith("/reports"):  # a report's shape is checked at depth 2 anyway
        bodies.append(b'{"a":' * 40 + b"1" + b"}" * 40)  # parses, but deeper than allowed
    for body in bodies:
        response = running.post(path, data=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (path, response.status_code, response.text[:200])
        assert "deep" in response.json()["message"]
    assert running.ctx.store.get_device("dev-1").last_seq == 0


@pytest.mark.parametrize("seq", [2**63, 2**63 - 1, 10**100, 2**62 + 1])
def test_a_signed_report_with_a_huge_seq_is_a_400_and_the_device_keeps_reporting(
    running: Running, seq: int
) -> None:
    signer = _register(running.ctx, "dev-1")
    url = f"{running.url}/api/v1/devices/dev-1/reports"
    response = requests.post(url, json=_signed(signer, "dev-1", seq), timeout=5)
    assert response.status_code == 400, response.text
    assert "seq must be at most" in response.json()["message"]
    # The largest accepted seq still leaves room for the next one: no wedged device.
    assert (
        requests.post(url, json=_signed(signer, "dev-1", 2**62 - 1), timeout=5).status_code == 202
    )
    assert requests.post(url, json=_signed(signer, "dev-1", 2**62), timeout=5).status_code == 202
    assert running.ctx.store.get_device("dev-1").last_seq == 2**62


@pytest.mark.parametrize("alert_id", [2**63, 10**30, 0, -1])
def test_an_alert_id_out_of_range_is_a_400(running: Running, alert_id: int) -> None:
    response = running.post(f"/api/v1/alerts/{alert_id}/resolve", json={})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_request"


@pytest.mark.parametrize("limit", ["0", str(2**63), "10" * 50])
def test_an_alert_list_limit_out_of_range_is_a_400(running: Running, limit: str) -> None:
    response = requests.get(
        f"{running.url}/api/v1/alerts", params={"limit": limit}, headers=running.operator, timeout=5
    )
    assert response.status_code == 400, response.text


@pytest.mark.parametrize(
    "fields",
    [
        {"soak": 1e12},
        {"soak": "9999999d"},
        {"stall_timeout": 2**63},
        {"success_threshold": 10**400},
    ],
)
def test_an_unbounded_rollout_value_is_a_400_and_starts_nothing(
    running: Running, fields: dict[str, Any]
) -> None:
    body = {"hardware_id": "gw-100", "version": "1.1.0", "waves": "100%", **fields}
    response = running.post("/api/v1/rollouts", json=body)
    assert response.status_code == 400, response.text
    assert running.ctx.store.list_rollouts() == []


def test_a_json_body_above_the_cap_is_a_413(running: Running) -> None:
    body = b'{"reason": "' + b"x" * (running.ctx.limits.max_json_bytes + 10) + b'"}'
    response = running.post(
        "/api/v1/rollouts/r-1/pause", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_an_unexpected_error_is_a_plain_500_logged_once_per_minute(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    for _ in range(5):
        response = requests.get(f"{running.url}/test-only/boom", timeout=5)
        assert response.status_code == 500
        assert response.json() == {
            "error": "internal_error",
            "message": "the server failed; see its log",
        }
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in caplog.records]
    assert "GET /test-only/boom" in tracebacks[0].getMessage()


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("message", "disk\u0000full", "NUL"),
        ("message", "bad \ud800 text", "lone surrogate"),
        ("rollout_id", "r\u00001", "NUL"),
        ("time", "\udfff", "lone surrogate"),
    ],
)
def test_a_signed_report_with_text_no_database_stores_is_a_400(
    running: Running, field: str, value: str, said: str
) -> None:
    # PostgreSQL refuses NUL and lone surrogates in text: refused up front on every
    # backend, not a 503 the device would retry for ever.
    signer = _register(running.ctx, "dev-1")
    report = sign_report(Report("dev-1", "gw-100", 1, "idle"), signer)["report"]
    report[field] = value
    envelope = {"report": report, "signature": signer.sign(canonical_bytes(report)).to_dict()}
    url = f"{running.url}/api/v1/devices/dev-1/reports"
    response = requests.post(url, json=envelope, timeout=5)
    assert response.status_code == 400, response.text
    assert said in response.json()["message"]
    assert running.ctx.store.get_device("dev-1").last_seq == 0
    assert requests.post(url, json=_signed(signer, "dev-1", 1), timeout=5).status_code == 202
