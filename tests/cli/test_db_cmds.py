"""``tufota db status|upgrade|copy`` against real SQLite files and a real PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from repo_server import Repository
from staging import PostgresTrackerStore, SqliteTrackerStore
from staging._copy import TABLES, tracker_info
from staging._schema import SCHEMA_VERSION
from tests.staging.test_db_copy import populate, snapshot
from tufota_cli.main import main


@pytest.fixture(autouse=True)
def _no_database_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUFOTA_DATABASE_URL", raising=False)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "tracker.db"
    populate(path)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _make_v3(path: Path) -> None:
    """The file as a tufota before API tokens in the database left it."""
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE api_tokens")
        conn.execute("UPDATE schema_version SET version = 3")
    conn.close()


def _version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        found = int(conn.execute("SELECT max(version) FROM schema_version").fetchone()[0])
    conn.close()
    return found


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_status_does_not_migrate_and_upgrade_does(
    repo: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    repo.tracker_path.unlink(missing_ok=True)
    populate(repo.tracker_path)
    _make_v3(repo.tracker_path)

    code, out, _ = _run(capsys, "db", "status", "--repo", str(repo.path))
    assert code == 0
    assert "needs upgrade: run tufota db upgrade" in out
    assert str(repo.tracker_path) in out
    assert _version(repo.tracker_path) == 3

    code, out, _ = _run(capsys, "db", "status", "--repo", str(repo.path), "--json")
    status = json.loads(out)
    assert (status["schema_version"], status["supported_version"]) == (3, SCHEMA_VERSION)
    assert status["state"] == "needs upgrade"
    assert status["tables"]["api_tokens"] is None
    assert status["tables"]["devices"] == 8
    assert _version(repo.tracker_path) == 3

    code, out, _ = _run(capsys, "db", "upgrade", "--repo", str(repo.path))
    assert code == 0
    assert f"schema v3 -> v{SCHEMA_VERSION}" in out
    assert _version(repo.tracker_path) == SCHEMA_VERSION

    code, out, _ = _run(capsys, "db", "upgrade", "--repo", str(repo.path))
    assert (code, f"already at v{SCHEMA_VERSION}" in out) == (0, True)
    code, out, _ = _run(capsys, "db", "status", "--repo", str(repo.path), "--json")
    assert json.loads(out)["state"] == "current"


def test_status_and_upgrade_of_a_postgres_database(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "db", "status", "--database", postgres_url, "--json")
    assert (code, json.loads(out)["state"]) == (0, "empty")
    assert tracker_info(postgres_url).schema_version is None  # status created nothing

    code, out, _ = _run(capsys, "db", "upgrade", "--database", postgres_url)
    assert (code, f"created schema v{SCHEMA_VERSION}" in out) == (0, True)
    code, out, _ = _run(capsys, "db", "status", "--database", postgres_url)
    assert (code, f"v{SCHEMA_VERSION} (current)" in out) == (0, True)


def test_copy_moves_the_tracker_and_prints_counts(
    source: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "db", "copy", "--from", str(source), "--to", postgres_url)
    assert (code, err) == (0, "")
    with SqliteTrackerStore(source) as src, PostgresTrackerStore(postgres_url) as dst:
        assert snapshot(dst) == snapshot(src)
    counts = tracker_info(postgres_url).tables
    for name in TABLES:
        assert any(line.split() == [name, str(counts[name])] for line in out.splitlines())

    # A second copy into the now non-empty target: one line, nothing changed.
    code, out, err = _run(capsys, "db", "copy", "--from", str(source), "--to", postgres_url)
    assert code == 1
    assert err.count("\n") == 1
    assert "is not empty" in err
    assert tracker_info(postgres_url).tables == counts


def test_copy_upgrades_an_old_source_first(
    source: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _make_v3(source)
    code, _, _ = _run(capsys, "db", "copy", "--from", str(source), "--to", postgres_url)
    assert code == 0
    assert _version(source) == SCHEMA_VERSION
    assert tracker_info(postgres_url).tables["devices"] == 8


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing", "no tracker database at"),
        ("text", "is not a tufota tracker database"),
        ("foreign", "is not a tufota tracker database"),
        ("not_postgres", "give a postgresql://"),
        ("http_target", "give a postgresql://"),
        ("unreachable", "cannot reach tracker database"),
        ("wrong_password", "cannot reach tracker database"),
    ],
)
def test_bad_copy_gives_one_line_and_changes_nothing(
    case: str,
    match: str,
    source: Path,
    tmp_path: Path,
    postgres_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = postgres_url
    src = source
    if case == "missing":
        src = tmp_path / "nothing-here.db"
    elif case == "text":
        src = tmp_path / "notes.txt"
        src.write_text("not a database\n" * 100)
    elif case == "foreign":
        src = tmp_path / "other.db"
        with sqlite3.connect(src) as conn:
            conn.execute("CREATE TABLE things (x INTEGER)")
        conn.close()
    elif case == "not_postgres":
        target = str(tmp_path / "copy.db")
    elif case == "http_target":
        target = "http://u:sekret@db.example/tufota"
    elif case == "unreachable":
        target = "postgresql://tufota:sekret@127.0.0.1:1/tufota"
    elif case == "wrong_password":
        # The test cluster trusts local connections, so a password is ignored:
        # point at a database that does not exist instead, with a password in the URL.
        target = _with_password(postgres_url, "sekret").rsplit("/", 1)[0] + "/no_such_db"
    before = _digest(src) if src.exists() else None
    code, out, err = _run(capsys, "db", "copy", "--from", str(src), "--to", target)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("tufota: error: ")
    assert match in err
    assert "sekret" not in err
    assert (_digest(src) if src.exists() else None) == before
    assert not (tmp_path / "copy.db").exists()
    assert tracker_info(postgres_url).schema_version is None  # the real target: untouched


def test_status_of_a_missing_file_or_no_tracker_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "db", "status", "--database", str(tmp_path / "x.db"))
    assert (code, err.count("\n")) == (1, 1)
    assert not (tmp_path / "x.db").exists()
    code, _, err = _run(capsys, "db", "upgrade")
    assert (code, "give --repo REPO or --database URL" in err) == (1, True)
