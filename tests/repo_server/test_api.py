"""The operator API over real HTTP: devices, online roles, OpenAPI, JSON errors, TLS."""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from securesystemslib.signer import CryptoSigner

from device_agent import ACTION_UNREACHABLE, Agent, AgentConfig
from repo_server import Repository, ServerContext, ServerThread, create_app
from staging import RolloutController, SqliteTrackerStore
from tests.conftest import ask
from tests.repo_server.test_upload import Server, start_server
from tufota_cli.device_cmds import provision_device
from tufota_core import Report, sign_report


@pytest.fixture
def server(released_repo: Repository) -> Iterator[Server]:
    yield from start_server(released_repo)


def _call(server: Server, method: str, path: str, role: str = "operator", **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {server.tokens[role]}"} if role else {}
    return requests.request(method, f"{server.url}{path}", headers=headers, timeout=10, **kw)


def _device_key() -> tuple[CryptoSigner, dict[str, Any]]:
    signer = CryptoSigner.generate_ed25519()
    return signer, {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}


def test_registered_device_reports_only_once_accepted(server: Server) -> None:
    signer, public = _device_key()
    body = {"device_id": "dev-7", "hardware_id": "gw-100", "public_key": public, "tags": ["eu"]}
    created = _call(server, "POST", "/api/v1/devices", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["device"]["status"] == "pending"
    assert "keyval" not in json.dumps(created.json())  # operators see the key id only
    report = sign_report(Report("dev-7", "gw-100", 1, "idle"), signer)
    pending = requests.post(f"{server.url}/api/v1/devices/dev-7/reports", json=report, timeout=5)
    assert (pending.status_code, pending.json()["error"]) == (403, "device_pending")
    accepted = _call(server, "POST", "/api/v1/devices/dev-7/accept", json={"reason": "checked"})
    assert accepted.json()["changed"] is True
    ok = requests.post(f"{server.url}/api/v1/devices/dev-7/reports", json=report, timeout=5)
    assert ok.status_code == 202
    _call(server, "POST", "/api/v1/devices/dev-7/revoke")
    later = sign_report(Report("dev-7", "gw-100", 2, "idle"), signer)
    revoked = requests.post(f"{server.url}/api/v1/devices/dev-7/reports", json=later, timeout=5)
    assert (revoked.status_code, revoked.json()["error"]) == (403, "device_revoked")
    listed = _call(server, "GET", "/api/v1/devices?status=revoked", role="viewer").json()
    assert [d["device_id"] for d in listed["devices"]] == ["dev-7"]


@pytest.mark.parametrize(
    ("method", "path", "role", "body", "status", "code"),
    [
        ("POST", "/api/v1/devices", "viewer", "valid", 403, "forbidden"),
        ("POST", "/api/v1/devices", "uploader", "valid", 403, "forbidden"),
        ("POST", "/api/v1/devices", "", "valid", 401, "unauthenticated"),
        ("POST", "/api/v1/devices/dev-1/accept", "viewer", None, 403, "forbidden"),
        ("POST", "/api/v1/devices/dev-1/revoke", "", None, 401, "unauthenticated"),
        ("POST", "/api/v1/devices", "operator", {"device_id": "x"}, 400, "bad_request"),
        ("POST", "/api/v1/devices", "operator", "bad_key", 400, "bad_input"),
        ("POST", "/api/v1/devices", "operator", "bad_hw", 404, "not_found"),
        ("POST", "/api/v1/devices", "operator", "bad_id", 400, "bad_input"),
        ("POST", "/api/v1/devices/nobody/accept", "operator", None, 404, "not_found"),
        ("GET", "/api/v1/devices?status=lost", "viewer", None, 400, "bad_request"),
        ("POST", "/api/v1/repository/refresh", "viewer", None, 403, "forbidden"),
    ],
)
def test_bad_operator_requests_are_refused_and_change_nothing(
    server: Server, method: str, path: str, role: str, body: Any, status: int, code: str
) -> None:
    _signer, public = _device_key()
    valid = {"device_id": "dev-1", "hardware_id": "gw-100", "public_key": public}
    bodies = {
        "valid": valid,
        "bad_key": {**valid, "public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n"},
        "bad_hw": {**valid, "hardware_id": "gw-999"},
        "bad_id": {**valid, "device_id": "../../x"},
    }
    payload = bodies.get(body, body) if isinstance(body, str) else body
    response = _call(server, method, path, role=role, json=payload)
    assert (response.status_code, response.json()["error"]) == (status, code), response.text
    assert server.ctx.store.list_devices() == []


def test_operators_see_online_role_validity_and_can_force_a_refresh(server: Server) -> None:
    status = _call(server, "GET", "/api/v1/repository", role="viewer").json()
    timestamp = status["roles"]["timestamp"]
    assert timestamp["online"] is True
    assert 0 < timestamp["renews_in_seconds"] < timestamp["seconds_left"] <= 86400
    assert status["roles"]["firmware-gw-100"]["needs_offline_signing"] is False
    refreshed = _call(server, "POST", "/api/v1/repository/refresh").json()
    assert refreshed["renewed"] == ["rollouts", "snapshot", "timestamp"]
    assert refreshed["roles"]["timestamp"]["version"] == timestamp["version"] + 1
    assert refreshed["last_refresh"]["renewed"] == refreshed["renewed"]
    assert refreshed["last_refresh"]["error"] == ""


# -- OpenAPI and JSON errors everywhere ---------------------------------------------------------


def test_every_api_route_is_described_and_every_error_is_json(server: Server) -> None:
    spec = requests.get(f"{server.url}/openapi.json", timeout=5).json()
    paths = spec["paths"]
    for needed in (
        "/api/v1/releases",
        "/api/v1/devices",
        "/api/v1/devices/{device_id}/accept",
        "/api/v1/devices/{device_id}/revoke",
        "/api/v1/devices/{device_id}/reports",
        "/api/v1/repository",
        "/api/v1/repository/refresh",
        "/api/v1/health",
    ):
        assert needed in paths, needed
    assert "application/octet-stream" in paths["/api/v1/releases"]["post"]["requestBody"]["content"]
    app_paths = set(_route_paths(create_app(server.ctx, background=False).routes))
    undocumented = {p for p in app_paths if p.startswith("/api/")} - set(paths)
    assert not undocumented
    for path, operations in paths.items():
        concrete = path.replace("{device_id}", "no-such-device").replace("{rollout_id}", "nope")
        for method in operations:
            for headers in ({}, {"Authorization": "Bearer tfo_bogus_token"}):
                response = requests.request(
                    method.upper(),
                    f"{server.url}{concrete}",
                    data=b"\x00garbage",
                    headers={"Content-Type": "application/json", **headers},
                    timeout=10,
                )
                if response.status_code < 400:
                    continue  # an open read endpoint
                assert response.status_code < 500, (method, path, response.text)
                body = response.json()
                assert set(body) == {"error", "message"}, (method, path, body)
                assert body["message"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nothing/here", 404),
        ("DELETE", "/api/v1/releases", 405),
        ("PUT", "/metadata/timestamp.json", 405),
        ("GET", "/metadata/..%2f..%2fkeys%2froot.key", 404),
    ],
)
def test_unknown_routes_and_methods_answer_json(
    server: Server, method: str, path: str, status: int
) -> None:
    response = requests.request(method, f"{server.url}{path}", timeout=5)
    assert response.status_code == status
    assert set(response.json()) == {"error", "message"}


def _route_paths(routes: list[Any]) -> Iterator[str]:
    """Every route path, through included routers of any FastAPI version."""
    for route in routes:
        if hasattr(route, "path"):
            yield str(route.path)
        if hasattr(route, "original_router"):
            yield from _route_paths(route.original_router.routes)


# -- TLS ------------------------------------------------------------------------------------------


def _tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tufota test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        tmp_path / "ca.pem",
        tmp_path / "server.pem",
        tmp_path / "key.pem",
    )
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def test_agent_talks_tls_to_the_server_only_through_its_ca_bundle(
    released_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests lets these variables override a session's CA bundle (psf/requests#3829);
    # point them at a bundle without our CA: the agent's [server] ca_bundle must still win.
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, "/etc/ssl/certs/ca-certificates.crt")
    ca, cert, key = _tls_files(tmp_path)
    publisher = released_repo.publisher(ask)
    store = SqliteTrackerStore(released_repo.tracker_path)
    ctx = ServerContext(publisher, store, RolloutController(store, publisher))
    try:
        with ServerThread(
            create_app(ctx, background=False), tls_cert=str(cert), tls_key=str(key)
        ) as thread:
            assert thread.url.startswith("https://")
            with pytest.raises(requests.exceptions.SSLError):
                requests.get(f"{thread.url}/api/v1/health", timeout=5)
            assert requests.get(f"{thread.url}/api/v1/health", verify=str(ca), timeout=5).ok
            trusting = provision_device(
                released_repo, "dev-tls", "gw-100", tmp_path / "dev-tls", [],
                server_url=thread.url, factory_version="1.0.0", ca_bundle=ca,
            )  # fmt: skip
            with Agent(AgentConfig.load(trusting)) as agent:
                result = agent.run_once()
            assert result.action != ACTION_UNREACHABLE, result.message
            assert store.get_device("dev-tls").last_seq >= 1
            naive = provision_device(
                released_repo, "dev-naive", "gw-100", tmp_path / "dev-naive", [],
                server_url=thread.url, factory_version="1.0.0",
            )  # fmt: skip
            with Agent(AgentConfig.load(naive)) as agent:
                refused = agent.run_once()
            assert refused.action == ACTION_UNREACHABLE
            assert store.get_device("dev-naive").last_seq == 0
    finally:
        store.close()


@pytest.mark.parametrize(
    ("which", "words"),
    [("only_cert", "needs both"), ("missing", "does not exist"), ("swapped", "cannot use TLS")],
)
def test_bad_tls_files_fail_before_serving(tmp_path: Path, which: str, words: str) -> None:
    from repo_server import check_tls
    from tufota_core import InputError

    _ca, cert, key = _tls_files(tmp_path)
    args = {
        "only_cert": (str(cert), None),
        "missing": (str(cert), str(tmp_path / "nope.pem")),
        "swapped": (str(key), str(cert)),
    }[which]
    with pytest.raises(InputError, match=words):
        check_tls(*args)
