"""Fixtures for the repository server: both storage backends, release bundles, TUF clients.

S3 runs against moto's server on 127.0.0.1 over real HTTP with unmodified
boto3; each test gets its own bucket. ``backend`` parametrises a test over
``local`` and ``s3``.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from repo_server import (
    LocalStorage,
    RepoConfig,
    Repository,
    S3Location,
    S3Storage,
    ServerLimits,
    Storage,
    add_release_locally,
)
from signing import BUNDLE_FORMAT, add_release, load_signer, sign_all
from tests.conftest import PASSPHRASE, ask
from tufota_core import FirmwareInfo, NotFoundError, product_role, utcnow

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
HW = "gw-100"
ROLE = product_role(HW)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, for the whole session."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty bucket; AWS test credentials in the environment."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    name = f"tufota-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    client.close()
    return name


def fast_limits() -> ServerLimits:
    return ServerLimits(lock_timeout_seconds=2.0, lock_poll_seconds=0.05)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_storage(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], Storage]]:
    """Build a storage of ``backend`` for a name (two names never share objects)."""
    made: list[Storage] = []

    def make(name: str = "main") -> Storage:
        storage: Storage
        if backend == "local":
            storage = LocalStorage(tmp_path / name / "public", tmp_path / name / ".lock")
        else:
            endpoint = request.getfixturevalue("moto_endpoint")
            bucket = request.getfixturevalue("bucket")
            storage = S3Storage(
                S3Location(bucket, f"repos/{name}"), endpoint_url=endpoint, limits=fast_limits()
            )
        made.append(storage)
        return storage

    yield make
    for storage in made:
        storage.close()


@pytest.fixture
def repo_on(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Repository]:
    """An initialised repository on ``backend`` with releases 1.0.0 and 1.1.0 of gw-100."""
    storage = None
    if backend == "s3":
        endpoint = request.getfixturevalue("moto_endpoint")
        bucket = request.getfixturevalue("bucket")
        storage = RepoConfig(storage=f"s3://{bucket}/fleet", s3_endpoint_url=endpoint)
    repo = Repository.create(tmp_path / "repo", PASSPHRASE, storage=storage)
    for version in ("1.0.0", "1.1.0"):
        image = tmp_path / f"gw-{version}.img"
        image.write_bytes(f"image {version}\n".encode() * 1000)
        add_release_locally(repo, image, FirmwareInfo(HW, version), ask)
    yield repo
    repo.storage.close()


def snapshot_storage(storage: Storage) -> dict[str, bytes]:
    """Every object's bytes: to prove a refused change changed nothing."""
    return {key: storage.get(key) for key in storage.list("")}


# -- release bundles ---------------------------------------------------------------


def signed_release(
    repo: Repository, tmp_path: Path, version: str, data: bytes | None = None
) -> tuple[Metadata[Targets], TargetFile, Path]:
    """The product line's next version with ``version`` added, signed by the release key."""
    image = tmp_path / f"fw-{version}.img"
    image.write_bytes(data if data is not None else f"firmware {version}\n".encode() * 500)
    product = Metadata[Targets].from_bytes(repo.state().roles[ROLE].to_bytes())
    product, target = add_release(product, image, FirmwareInfo(HW, version), utcnow(), repo.expiry)
    sign_all(product, [load_signer(repo.key("release-gw-100"), ask)])
    return product, target, image


def tar_bundle(
    out: Path,
    roles: dict[str, Metadata[Targets]],
    blobs: dict[str, bytes],
    extra_metadata: dict[str, bytes] | None = None,
) -> Path:
    """Write a bundle by hand (so tests can tamper with any part)."""
    metadata = {name: md.to_bytes() for name, md in roles.items()}
    metadata.update(extra_metadata or {})
    manifest = {
        "format": BUNDLE_FORMAT,
        "root": "root" in metadata,
        "targets": "targets" in metadata,
        "roles": sorted(n for n in metadata if n not in ("root", "targets")),
        "blobs": sorted(blobs),
    }
    with tarfile.open(out, "w:gz") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("bundle.json", json.dumps(manifest).encode())
        for name, data in metadata.items():
            add(f"metadata/{name}.json", data)
        for path, data in blobs.items():
            add(f"targets/{path}", data)
    return out


def release_bundle(repo: Repository, tmp_path: Path, version: str) -> Path:
    product, target, image = signed_release(repo, tmp_path, version)
    return tar_bundle(
        tmp_path / f"release-{version}.tar.gz", {ROLE: product}, {target.path: image.read_bytes()}
    )


# -- a TUF client reading straight from storage -----------------------------------------


class StorageFetcher(FetcherInterface):
    """Serves ``http://repo/<key>`` from a Storage, so ngclient verifies what is stored."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _fetch(self, url: str) -> Iterator[bytes]:
        from tuf.api.exceptions import DownloadHTTPError

        key = url.removeprefix("http://repo/")
        try:
            return iter([self.storage.get(key)])
        except NotFoundError:
            raise DownloadHTTPError(f"{key} not found", 404) from None


def tuf_client(storage: Storage, trusted_root: bytes, workdir: Path) -> Updater:
    """A fresh ngclient Updater that trusts ``trusted_root``."""
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "targets").mkdir(parents=True)
    return Updater(
        metadata_dir=str(workdir),
        metadata_base_url="http://repo/metadata/",
        target_base_url="http://repo/targets/",
        target_dir=str(workdir / "targets"),
        fetcher=StorageFetcher(storage),
        config=UpdaterConfig(prefix_targets_with_hash=True),
        bootstrap=trusted_root,
    )


def client_sees(storage: Storage, trusted_root: bytes, workdir: Path, path: str) -> Any:
    """Refresh a fresh client and look ``path`` up: its TargetFile, or None."""
    updater = tuf_client(storage, trusted_root, workdir)
    updater.refresh()
    return updater.get_targetinfo(path)
