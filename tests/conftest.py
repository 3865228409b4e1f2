"""Fixtures shared by every test package: a real repository on disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from repo_server import Repository, add_release_locally
from tests._postgres import PostgresServer
from tests._postgres import postgres_server as start_postgres
from tufota_core import FirmwareInfo

PASSPHRASE = "test passphrase"


def ask() -> str:
    return PASSPHRASE


@pytest.fixture
def passphrase_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TUFOTA_PASSPHRASE", PASSPHRASE)
    return PASSPHRASE


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """An initialised repository with no releases."""
    return Repository.create(tmp_path / "repo", PASSPHRASE)


@pytest.fixture
def released_repo(repo: Repository, tmp_path: Path) -> Repository:
    """A repository with releases 1.0.0 and 1.1.0 of hardware ``gw-100``."""
    for version in ("1.0.0", "1.1.0"):
        image = tmp_path / f"gw-{version}.img"
        image.write_bytes(f"image {version}\n".encode() * 1000)
        add_release_locally(repo, image, FirmwareInfo("gw-100", version), ask)
    return repo


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL cluster for the whole run (initdb + pg_ctl in a temporary directory)."""
    with start_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.new_database()
