"""The server over real HTTP on loopback: static TUF tree, caching, ranges, reports."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from securesystemslib.signer import CryptoSigner

from repo_server import Repository, ServerContext, ServerThread, create_app
from staging import RolloutController, SqliteTrackerStore
from tests.conftest import ask
from tufota_core import Report, sign_report


@pytest.fixture
def server(released_repo: Repository) -> Iterator[tuple[ServerThread, ServerContext]]:
    publisher = released_repo.publisher(ask)
    store = SqliteTrackerStore(released_repo.tracker_path)
    ctx = ServerContext(publisher, store, RolloutController(store, publisher))
    with ServerThread(create_app(ctx, background=False)) as thread:
        yield thread, ctx
    store.close()


def _firmware_url(repo: Repository) -> str:
    target = (
        repo.state().roles["firmware-gw-100"].signed.targets["firmware/gw-100/1.1.0/gw-1.1.0.img"]
    )
    return f"targets/firmware/gw-100/1.1.0/{target.hashes['sha256']}.gw-1.1.0.img"


def test_metadata_and_targets_are_served_with_validators(
    server: Any, released_repo: Repository
) -> None:
    thread, _ctx = server
    ts = requests.get(f"{thread.url}/metadata/timestamp.json", timeout=5)
    assert ts.status_code == 200
    assert ts.json()["signed"]["_type"] == "timestamp"
    again = requests.get(
        f"{thread.url}/metadata/timestamp.json",
        timeout=5,
        headers={"If-None-Match": ts.headers["ETag"]},
    )
    assert again.status_code == 304
    blob = requests.get(f"{thread.url}/{_firmware_url(released_repo)}", timeout=5)
    assert blob.status_code == 200
    assert blob.content == b"image 1.1.0\n" * 1000


def test_range_requests_resume_a_download(server: Any, released_repo: Repository) -> None:
    thread, _ctx = server
    url = f"{thread.url}/{_firmware_url(released_repo)}"
    part = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=5)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == "bytes 100-199/12000"
    assert part.content == (b"image 1.1.0\n" * 1000)[100:200]
    past_end = requests.get(url, headers={"Range": "bytes=50000-"}, timeout=5)
    assert past_end.status_code == 416
    assert past_end.json()["error"] == "bad_range"


@pytest.mark.parametrize(
    "path",
    [
        "keys/root.key",
        "metadata/../../keys/root.key",
        "metadata/%2e%2e/%2e%2e/tufota.json",
        "targets/..%2f..%2fkeys%2froot.key",
        "tracker.db",
        "metadata/.publish.lock",
    ],
)
def test_nothing_outside_the_served_tree_is_reachable(server: Any, path: str) -> None:
    thread, _ctx = server
    response = requests.get(f"{thread.url}/{path}", timeout=5)
    assert response.status_code in (400, 404)
    assert b"PRIVATE KEY" not in response.content
    assert set(response.json()) == {"error", "message"}


def test_missing_metadata_is_404_so_clients_stop_looking_for_a_newer_root(server: Any) -> None:
    thread, _ctx = server
    response = requests.get(f"{thread.url}/metadata/2.root.json", timeout=5)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def _register(ctx: ServerContext, device_id: str, status: str = "accepted") -> CryptoSigner:
    signer = CryptoSigner.generate_ed25519()
    public = {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}
    ctx.store.register_device(
        device_id, "gw-100", public_key=public, status=status, installed_version="1.0.0"
    )
    return signer


def _post(thread: ServerThread, device_id: str, body: Any) -> requests.Response:
    return requests.post(f"{thread.url}/api/v1/devices/{device_id}/reports", json=body, timeout=5)


def test_signed_report_is_recorded_and_a_replay_is_refused(server: Any) -> None:
    thread, ctx = server
    signer = _register(ctx, "dev-1")
    envelope = sign_report(
        Report("dev-1", "gw-100", 1, "succeeded", installed_version="1.1.0"), signer
    )
    assert _post(thread, "dev-1", envelope).status_code == 202
    assert ctx.store.get_device("dev-1").installed_version == "1.1.0"
    replay = _post(thread, "dev-1", envelope)
    assert replay.status_code == 409
    assert replay.json()["error"] == "replayed_report"


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("unknown", 401, "unknown_device"),
        ("revoked", 403, "device_revoked"),
        ("wrong_key", 401, "bad_signature"),
        ("tampered", 401, "bad_signature"),
        ("other_device", 400, "bad_report"),
        ("garbage", 400, "bad_request"),
        ("bad_state", 400, "bad_report"),
    ],
)
def test_bad_reports_are_refused_and_change_nothing(
    server: Any, case: str, status: int, code: str
) -> None:
    thread, ctx = server
    signer = _register(ctx, "dev-1")
    _register(ctx, "dev-2", status="revoked")
    report = Report("dev-1", "gw-100", 1, "succeeded", installed_version="1.1.0")
    body: Any = sign_report(report, signer)
    device = "dev-1"
    if case == "unknown":
        device = "dev-9"
        body = sign_report(Report("dev-9", "gw-100", 1, "idle"), signer)
    elif case == "revoked":
        device = "dev-2"
        body = sign_report(Report("dev-2", "gw-100", 1, "idle"), signer)
    elif case == "wrong_key":
        body = sign_report(report, CryptoSigner.generate_ed25519())
    elif case == "tampered":
        body["report"]["installed_version"] = "9.0.0"
    elif case == "other_device":
        device = "dev-2"
    elif case == "garbage":
        response = requests.post(
            f"{thread.url}/api/v1/devices/dev-1/reports", data=b"{not json", timeout=5
        )
        assert response.status_code == status
        assert response.json()["error"] == code
        return
    elif case == "bad_state":
        body["report"]["state"] = "exploded"
    response = _post(thread, device, body)
    assert response.status_code == status
    assert response.json()["error"] == code
    assert ctx.store.get_device("dev-1").last_seq == 0
    assert ctx.store.get_device("dev-1").installed_version == "1.0.0"


def test_health_reports_each_roles_remaining_validity(server: Any) -> None:
    thread, _ctx = server
    roles = requests.get(f"{thread.url}/api/v1/health", timeout=5).json()["roles"]
    assert {"root", "timestamp", "snapshot", "targets", "rollouts"} <= set(roles)
    assert 0 < roles["timestamp"]["seconds_left"] <= 86400


def test_openapi_describes_the_api(server: Any) -> None:
    thread, _ctx = server
    spec = requests.get(f"{thread.url}/openapi.json", timeout=5).json()
    assert "/api/v1/devices/{device_id}/reports" in spec["paths"]
