"""``POST /api/v1/releases`` over real HTTP: verified uploads; refusals change no byte."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Targets

from repo_server import (
    Repository,
    ServerContext,
    ServerLimits,
    ServerThread,
    create_app,
    verify_repository,
)
from signing import add_release, load_signer, sign_all, write_bundle
from staging import RolloutController, SqliteTrackerStore
from tests.conftest import ask
from tests.repo_server.conftest import (
    HW,
    ROLE,
    client_sees,
    release_bundle,
    signed_release,
    snapshot_storage,
    tar_bundle,
)
from tufota_core import FirmwareInfo, utcnow


@dataclass
class Server:
    url: str
    repo: Repository
    tokens: dict[str, str]
    ctx: ServerContext

    def upload(
        self, body: bytes | Path, role: str = "uploader", **headers: str
    ) -> requests.Response:
        data = body.read_bytes() if isinstance(body, Path) else body
        headers = {"Content-Type": "application/octet-stream", **headers}
        if role:
            headers["Authorization"] = f"Bearer {self.tokens[role]}"
        return requests.post(f"{self.url}/api/v1/releases", data=data, headers=headers, timeout=30)


def start_server(repo: Repository, limits: ServerLimits | None = None) -> Iterator[Server]:
    publisher = repo.publisher(ask)
    store = SqliteTrackerStore(repo.tracker_path)
    tokens = repo.token_store()
    issued = {
        role: tokens.create(f"test-{role}", role) for role in ("viewer", "operator", "uploader")
    }
    ctx = ServerContext(
        publisher,
        store,
        RolloutController(store, publisher),
        tokens=tokens,
        limits=limits or ServerLimits(),
        storage_url=repo.storage_url,
    )
    with ServerThread(create_app(ctx, background=False)) as thread:
        yield Server(thread.url, repo, issued, ctx)
    store.close()


@pytest.fixture
def server(released_repo: Repository) -> Iterator[Server]:
    yield from start_server(released_repo, ServerLimits(max_upload_bytes=256 * 1024))


def test_upload_publishes_a_signed_release_and_reupload_is_a_no_op(
    server: Server, tmp_path: Path
) -> None:
    bundle = release_bundle(server.repo, tmp_path, "2.0.0")
    first = server.upload(bundle)
    assert first.status_code == 201, first.text
    assert first.json()["published"] is True
    assert first.json()["roles"] == {ROLE: 3}
    path = "firmware/gw-100/2.0.0/fw-2.0.0.img"
    assert client_sees(server.repo.storage, server.repo.trusted_root(), tmp_path / "c", path)
    before = snapshot_storage(server.repo.storage)
    again = server.upload(bundle)
    assert again.status_code == 200
    assert again.json()["published"] is False
    assert snapshot_storage(server.repo.storage) == before


def test_bundle_written_by_signing_is_accepted(server: Server, tmp_path: Path) -> None:
    product, target, image = signed_release(server.repo, tmp_path, "2.1.0")
    out = tmp_path / "signed.tar.gz"
    write_bundle(out, roles={ROLE: product}, blobs=[(target, image)])
    response = server.upload(out)
    assert response.status_code == 201, response.text


def _flip_one_byte(bundle: Path, member_prefix: str) -> bytes:
    """Rewrite the tarball with one byte of the first member under ``member_prefix`` changed."""
    out = io.BytesIO()
    with tarfile.open(bundle) as src, tarfile.open(fileobj=out, mode="w:gz") as dst:
        done = False
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
            if not done and member.name.startswith(member_prefix):
                data = bytes([data[0] ^ 1]) + data[1:]
                done = True
            dst.addfile(member, io.BytesIO(data))
    return out.getvalue()


def _case(server: Server, tmp_path: Path, case: str) -> bytes:
    repo = server.repo
    if case == "one_firmware_byte_changed":
        return _flip_one_byte(release_bundle(repo, tmp_path, "2.0.0"), "targets/")
    if case == "one_metadata_byte_changed":
        product, target, image = signed_release(repo, tmp_path, "2.0.0")
        raw = product.to_bytes()
        at = raw.index(b'"expires":"') + len(b'"expires":"') + 3  # the year's last digit
        raw = raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1 :]
        blobs = {target.path: image.read_bytes()}
        return tar_bundle(tmp_path / "b.tar.gz", {}, blobs, {ROLE: raw}).read_bytes()
    if case == "unknown_key_signature":
        product, target, image = signed_release(repo, tmp_path, "2.0.0")
        product.signatures.clear()
        product.sign(CryptoSigner.generate_ed25519())
        return tar_bundle(
            tmp_path / "b.tar.gz", {ROLE: product}, {target.path: image.read_bytes()}
        ).read_bytes()
    if case == "version_replay":
        older = Metadata[Targets].from_bytes(repo.storage.get(f"metadata/1.{ROLE}.json"))
        return tar_bundle(tmp_path / "b.tar.gz", {ROLE: older}, {}).read_bytes()
    if case == "same_version_other_content":
        current = repo.state().roles[ROLE]
        current.signed.expires += timedelta(days=1)
        current.signatures.clear()
        sign_all(current, [load_signer(repo.key("release-gw-100"), ask)])
        return tar_bundle(tmp_path / "b.tar.gz", {ROLE: current}, {}).read_bytes()
    if case == "target_outside_product_line":
        product, target, image = signed_release(repo, tmp_path, "2.0.0")
        foreign = target.path.replace(f"firmware/{HW}/", "firmware/other-hw/")
        target.path = foreign
        target.unrecognized_fields["custom"] = FirmwareInfo("other-hw", "2.0.0").to_custom()
        product.signed.targets = {foreign: target}
        product.signatures.clear()
        sign_all(product, [load_signer(repo.key("release-gw-100"), ask)])
        return tar_bundle(
            tmp_path / "b.tar.gz", {ROLE: product}, {foreign: image.read_bytes()}
        ).read_bytes()
    if case == "firmware_older_than_published":
        return _older(repo, tmp_path)
    if case == "published_release_changed":
        product = repo.state().roles[ROLE]
        target = product.signed.targets["firmware/gw-100/1.1.0/gw-1.1.0.img"]
        evil = tmp_path / "gw-1.1.0.img"
        evil.write_bytes(b"evil")
        replaced = type(target).from_file(target.path, str(evil), ["sha256"])
        replaced.unrecognized_fields["custom"] = target.custom
        product.signed.targets[target.path] = replaced
        product.signed.version += 1
        product.signatures.clear()
        sign_all(product, [load_signer(repo.key("release-gw-100"), ask)])
        return tar_bundle(
            tmp_path / "b.tar.gz", {ROLE: product}, {target.path: b"evil"}
        ).read_bytes()
    if case == "expired_metadata":
        product, target, image = signed_release(repo, tmp_path, "2.0.0")
        product.signed.expires = utcnow() - timedelta(days=1)
        product.signatures.clear()
        sign_all(product, [load_signer(repo.key("release-gw-100"), ask)])
        return tar_bundle(
            tmp_path / "b.tar.gz", {ROLE: product}, {target.path: image.read_bytes()}
        ).read_bytes()
    if case == "undelegated_role":
        product, target, image = signed_release(repo, tmp_path, "2.0.0")
        return tar_bundle(
            tmp_path / "b.tar.gz", {"firmware-nope": product}, {target.path: image.read_bytes()}
        ).read_bytes()
    if case == "rollouts_role":
        rollouts = repo.state().roles["rollouts"]
        return tar_bundle(tmp_path / "b.tar.gz", {"rollouts": rollouts}, {}).read_bytes()
    if case == "custom_names_other_version":
        product, target, image = signed_release(repo, tmp_path, "2.0.0")
        target.unrecognized_fields["custom"] = FirmwareInfo(HW, "3.0.0").to_custom()
        product.signatures.clear()
        sign_all(product, [load_signer(repo.key("release-gw-100"), ask)])
        return tar_bundle(
            tmp_path / "b.tar.gz", {ROLE: product}, {target.path: image.read_bytes()}
        ).read_bytes()
    if case == "missing_firmware_file":
        product, _target, _image = signed_release(repo, tmp_path, "2.0.0")
        return tar_bundle(tmp_path / "b.tar.gz", {ROLE: product}, {}).read_bytes()
    if case == "not_a_tarball":
        return b"this is not a bundle"
    if case == "gzip_bomb_member":
        return gzip.compress(b"\0" * 300_000)
    raise AssertionError(case)


def _older(repo: Repository, tmp_path: Path) -> bytes:
    product = repo.state().roles[ROLE]
    image = tmp_path / "old.img"
    image.write_bytes(b"old")
    # add_release refuses older versions, so build the target by hand.
    product_copy = Metadata[Targets].from_bytes(product.to_bytes())
    path = f"firmware/{HW}/1.0.5/old.img"
    target = type(next(iter(product.signed.targets.values()))).from_file(
        path, str(image), ["sha256"]
    )
    target.unrecognized_fields["custom"] = FirmwareInfo(HW, "1.0.5").to_custom()
    product_copy.signed.targets[path] = target
    product_copy.signed.version += 1
    product_copy.signatures.clear()
    sign_all(product_copy, [load_signer(repo.key("release-gw-100"), ask)])
    return tar_bundle(tmp_path / "b.tar.gz", {ROLE: product_copy}, {path: b"old"}).read_bytes()


@pytest.mark.parametrize(
    ("case", "status", "words"),
    [
        ("one_firmware_byte_changed", 422, "firmware/gw-100/2.0.0/fw-2.0.0.img"),
        ("one_metadata_byte_changed", 422, ROLE),
        ("unknown_key_signature", 422, ROLE),
        ("version_replay", 409, "older than the published version"),
        ("same_version_other_content", 409, "already published"),
        ("target_outside_product_line", 422, "may not sign firmware/other-hw"),
        ("firmware_older_than_published", 409, "not newer than the published release 1.1.0"),
        ("published_release_changed", 409, "already published with other content"),
        ("expired_metadata", 422, "expired"),
        ("undelegated_role", 422, "firmware-nope is not a role"),
        ("rollouts_role", 400, "signed online by the server"),
        ("custom_names_other_version", 400, "custom says"),
        ("missing_firmware_file", 422, "lacks its file"),
        ("not_a_tarball", 400, "not a readable tar"),
        ("gzip_bomb_member", 413, "at most"),
    ],
)
def test_bad_bundle_is_refused_naming_the_problem_and_changes_no_byte(
    server: Server, tmp_path: Path, case: str, status: int, words: str
) -> None:
    body = _case(server, tmp_path, case)
    if case == "gzip_bomb_member":
        body = b"\0" * 300_000  # above the test server's 256 KiB cap
    before = snapshot_storage(server.repo.storage)
    response = server.upload(body)
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"error", "message"}
    assert words in error["message"]
    assert snapshot_storage(server.repo.storage) == before
    assert verify_repository(server.repo.storage).ok


@pytest.mark.parametrize(
    ("role", "status", "code"),
    [("", 401, "unauthenticated"), ("viewer", 403, "forbidden"), ("operator", 403, "forbidden")],
)
def test_only_uploaders_may_upload(
    server: Server, tmp_path: Path, role: str, status: int, code: str
) -> None:
    before = snapshot_storage(server.repo.storage)
    response = server.upload(release_bundle(server.repo, tmp_path, "2.0.0"), role=role)
    assert (response.status_code, response.json()["error"]) == (status, code)
    assert snapshot_storage(server.repo.storage) == before


def test_revoked_or_forged_token_is_refused(server: Server, tmp_path: Path) -> None:
    bundle = release_bundle(server.repo, tmp_path, "2.0.0")
    token = server.tokens["uploader"]
    forged = server.upload(bundle, role="", Authorization=f"Bearer {token[:-2]}xx")
    assert forged.status_code == 401
    server.repo.token_store().revoke(token.split("_")[1])
    assert server.upload(bundle).status_code == 401


def test_empty_and_oversized_declared_bodies_are_refused(server: Server) -> None:
    assert server.upload(b"").json()["error"] == "empty_body"
    response = requests.post(
        f"{server.url}/api/v1/releases",
        data=iter([b"x" * 1024] * 300),  # chunked: no Content-Length, capped while streaming
        headers={"Authorization": f"Bearer {server.tokens['uploader']}"},
        timeout=30,
    )
    assert response.status_code == 413


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_upload_to_an_s3_repository(repo_on: Repository, tmp_path: Path) -> None:
    for server in start_server(repo_on):
        response = server.upload(release_bundle(repo_on, tmp_path, "2.0.0"))
        assert response.status_code == 201, response.text
        status = requests.get(
            f"{server.url}/api/v1/repository",
            headers={"Authorization": f"Bearer {server.tokens['viewer']}"},
            timeout=10,
        ).json()
        assert status["storage"].startswith("s3://")
        ts = requests.get(f"{server.url}/metadata/timestamp.json", timeout=10)
        assert ts.status_code == 200
        assert json.loads(ts.content)["signed"]["version"] == 4
        assert ts.headers["Cache-Control"] == "no-cache"
    assert verify_repository(repo_on.storage).ok


def test_new_product_line_and_its_first_release_in_one_bundle(
    server: Server, tmp_path: Path
) -> None:
    from signing import add_product_line, empty_delegated

    repo = server.repo
    state = repo.state()
    targets = add_product_line(
        state.targets, "gw-200", [repo.key("release-gw-100").key], 1, utcnow(), repo.expiry
    )
    sign_all(targets, [load_signer(repo.key("targets"), ask)])
    image = tmp_path / "gw200.img"
    image.write_bytes(b"gw-200 firmware")
    product = empty_delegated(utcnow(), repo.expiry.product)
    product.signed.version = 0
    product, target = add_release(
        product, image, FirmwareInfo("gw-200", "1.0.0"), utcnow(), repo.expiry
    )
    sign_all(product, [load_signer(repo.key("release-gw-100"), ask)])
    out = tmp_path / "gw200.tar.gz"
    write_bundle(out, roles={"firmware-gw-200": product}, blobs=[(target, image)], targets=targets)
    response = server.upload(out)
    assert response.status_code == 201, response.text
    assert response.json()["targets_version"] == targets.signed.version
    assert client_sees(repo.storage, repo.trusted_root(), tmp_path / "c", target.path)
