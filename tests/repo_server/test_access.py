"""Who may read the API: tokens by default, no tokenless reads through a proxy, Host names.

A real server on loopback. "Behind a same-host proxy" is what the proxy
sends: the client address is loopback and the request carries
``X-Forwarded-For``/``Forwarded``; a DNS-rebinding page sends its own name
as ``Host``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import timedelta

import pytest
import requests

from repo_server import Repository, ServerContext, ServerThread, TokenStore, create_app
from repo_server._hosts import server_names
from staging import RolloutController, SqliteTrackerStore
from tests.conftest import ask
from tests.repo_server.test_admin_cli import run
from tufota_core import format_time, utcnow

READS = ["/api/v1/fleet", "/api/v1/devices", "/api/v1/alerts", "/api/v1/rollouts", "/metrics"]
READS += ["/api/v1/dashboard"]  # the /dashboard/ page itself holds no data: it signs in


@dataclass
class Running:
    url: str
    ctx: ServerContext
    tokens: TokenStore


@pytest.fixture
def running(released_repo: Repository) -> Iterator[Running]:
    publisher = released_repo.publisher(ask)
    store = SqliteTrackerStore(released_repo.tracker_path)
    tokens = released_repo.token_store()
    ctx = ServerContext(publisher, store, RolloutController(store, publisher), tokens=tokens)
    with ServerThread(create_app(ctx, background=False)) as thread:
        yield Running(thread.url, ctx, tokens)
    store.close()


@pytest.mark.parametrize("path", READS)
def test_reads_need_a_token_by_default(running: Running, path: str) -> None:
    response = requests.get(f"{running.url}{path}", timeout=5)
    assert response.status_code == 401, response.text[:200]
    token = running.tokens.create("ops", "viewer")
    response = requests.get(
        f"{running.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert response.status_code == 200, response.text[:200]


@pytest.mark.parametrize(
    "proxy_header",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9;proto=https"},
        {"X-Real-IP": "203.0.113.9"},
    ],
)
def test_the_local_viewer_never_applies_through_a_proxy(
    running: Running, proxy_header: dict[str, str]
) -> None:
    running.ctx.local_viewer = True
    assert requests.get(f"{running.url}/api/v1/fleet", timeout=5).status_code == 200
    through_proxy = requests.get(f"{running.url}/api/v1/fleet", headers=proxy_header, timeout=5)
    assert through_proxy.status_code == 401
    assert (
        requests.get(f"{running.url}/metrics", headers=proxy_header, timeout=5).status_code == 401
    )


@pytest.mark.parametrize("path", ["/api/v1/fleet", "/metadata/timestamp.json", "/api/v1/health"])
def test_a_foreign_host_name_is_refused_before_anything_runs(running: Running, path: str) -> None:
    token = running.tokens.create("ops", "viewer")
    auth = {"Authorization": f"Bearer {token}"}
    rebinding = requests.get(
        f"{running.url}{path}", headers={**auth, "Host": "evil.example:8080"}, timeout=5
    )
    assert rebinding.status_code == 421
    assert rebinding.json()["error"] == "wrong_host"
    assert "--server-name" in rebinding.json()["message"]
    for host in ("localhost", "127.0.0.1:1234", "[::1]:80"):
        ok = requests.get(f"{running.url}{path}", headers={**auth, "Host": host}, timeout=5)
        assert ok.status_code == 200, (host, ok.text[:200])


def test_configured_names_are_served_and_loopback_names_only_on_loopback(
    running: Running,
) -> None:
    running.ctx.server_names = server_names(
        "https://updates.example.com:8443/",
        ["ota.example.net"],
        "0.0.0.0",  # noqa: S104
    )
    running.ctx.loopback_names = False
    url = f"{running.url}/api/v1/health"
    for host in ("updates.example.com", "UPDATES.example.com.:8443", "ota.example.net"):
        assert requests.get(url, headers={"Host": host}, timeout=5).status_code == 200, host
    for host in ("localhost", "127.0.0.1", "example.com", "updates.example.com.evil"):
        assert requests.get(url, headers={"Host": host}, timeout=5).status_code == 421, host


def test_an_expired_token_is_refused_as_expired(running: Running) -> None:
    token = running.tokens.create("short", "operator", lifetime=timedelta(days=1))
    auth = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{running.url}/api/v1/fleet", headers=auth, timeout=5).status_code == 200
    # A day later (the record's expiry moved to the past, as the clock would).
    (record,) = running.tokens.list()
    running.tokens.tracker.remove_token(record.token_id)
    running.tokens.tracker.add_token(
        asdict(replace(record, expires=format_time(utcnow() - timedelta(seconds=1))))
    )
    expired = requests.get(f"{running.url}/api/v1/fleet", headers=auth, timeout=5)
    assert expired.status_code == 401
    assert expired.json()["error"] == "token_expired"
    assert "token expired" in expired.json()["message"]


def test_token_create_prints_only_the_token_and_list_shows_the_expiry(
    repo: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "token", "create", "--name", "ci", "--role", "viewer", "--expires", "30d",
        "--repo", str(repo.path),
    )  # fmt: skip
    assert code == 0, err
    assert out.count("\n") == 1
    token = out.strip()
    assert repo.token_store().authenticate(token) is not None
    assert "valid for 30d" in err
    code, out, _ = run(capsys, "token", "list", "--repo", str(repo.path), "--json")
    (listed,) = json.loads(out)["tokens"]
    assert listed["expires"] is not None
    assert listed["expired"] is False
    code, out, _ = run(capsys, "token", "list", "--repo", str(repo.path))
    assert listed["expires"] in out
    code, _out, err = run(
        capsys, "token", "create", "--name", "x", "--role", "viewer", "--expires", "soon",
        "--repo", str(repo.path),
    )  # fmt: skip
    assert code == 1
    assert "duration" in err
