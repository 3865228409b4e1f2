"""Bad input to the signing commands: one clear line on stderr, exit 1, nothing written."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from repo_server import Repository
from signing import generate_key
from tests.conftest import PASSPHRASE
from tufota_cli.main import main as tufota

HW = "gw-100"


def _tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUFOTA_PASSPHRASE", PASSPHRASE)
    Repository.create(tmp_path / "repo", PASSPHRASE)
    generate_key(tmp_path / "A", PASSPHRASE)
    generate_key(tmp_path / "other", PASSPHRASE)
    repo = str(tmp_path / "repo")
    assert (
        tufota(["product", "add", HW, "--key", f"{tmp_path}/A.pub", "--repo", repo, "--yes"]) == 0
    )
    (tmp_path / "fw.img").write_bytes(b"firmware" * 100)
    out = tmp_path / "first.tar"
    assert tufota(["release", "sign", f"{tmp_path}/fw.img", "--hardware", HW, "--version",
                   "1.0.0", "--key", f"{tmp_path}/A.key", "--repo", repo, "--out", str(out),
                   "--yes"]) == 0  # fmt: skip
    assert tufota(["root", "rotate", "--repo", repo, "--out", f"{tmp_path}/p.json"]) == 0
    return tmp_path


def _sign(t: Path, *extra: str, version: str = "1.1.0", key: str = "A.key") -> list[str]:
    return ["release", "sign", f"{t}/fw.img", "--hardware", HW, "--version", version,
            "--key", f"{t}/{key}", "--repo", f"{t}/repo", "--out", f"{t}/out.tar", "--yes",
            *extra]  # fmt: skip


def _wrong_passphrase(t: Path, mp: pytest.MonkeyPatch) -> list[str]:
    mp.setenv("TUFOTA_PASSPHRASE", "not the passphrase")
    return _sign(t)


def _malformed_key(t: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (t / "bad.pub").write_text("{not json")
    (t / "bad.key").write_text("junk")
    return _sign(t, key="bad.key")


def _garbage_private_key(t: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (t / "A.key").write_text("-----BEGIN PRIVATE KEY-----\njunk\n")
    return _sign(t)


def _mismatched_key(t: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (t / "A.key").write_bytes((t / "other.key").read_bytes())  # A.pub, but other's private key
    return _sign(t)


def _key_of_no_product_line(t: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    return _sign(t, key="other.key")


def _threshold_above_keys(t: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    return ["product", "add", "cam-200", "--key", f"{t}/other.pub", "--threshold", "2",
            "--repo", f"{t}/repo", "--yes"]  # fmt: skip


def _root_threshold_above_keys(t: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    return ["root", "init", "--threshold", "3", "--key", f"{t}/A.pub", "--key", f"{t}/other.pub",
            "--online-key", f"{t}/other.pub", "--out", f"{t}/out.tar"]  # fmt: skip


def _not_semver(t: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    return _sign(t, version="1.1")


def _version_not_newer(t: Path, mp: pytest.MonkeyPatch) -> list[str]:
    repo = f"{t}/repo"
    assert tufota(["release", "add", f"{t}/fw.img", "--repo", repo, "--hardware", "x-1",
                   "--version", "2.0.0"]) == 0  # fmt: skip
    return ["release", "sign", f"{t}/fw.img", "--hardware", "x-1", "--version", "2.0.0",
            "--key", f"{repo}-signing/release-x-1.key", "--repo", repo, "--out", f"{t}/out.tar",
            "--yes"]  # fmt: skip


def _missing_firmware(t: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (t / "fw.img").unlink()
    return _sign(t)


def _no_confirmation(t: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    return [a for a in _sign(t) if a != "--yes"]


def _sign_root_with_a_stranger(t: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    return ["root", "sign", f"{t}/p.json", "--key", f"{t}/other.key", "--yes"]


def _publish_unsigned_root(t: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    return ["root", "publish", f"{t}/p.json", "--repo", f"{t}/repo"]


CASES: list[tuple[str, Callable[[Path, pytest.MonkeyPatch], list[str]], str]] = [
    ("wrong_passphrase", _wrong_passphrase, "wrong passphrase"),
    ("malformed_key_file", _malformed_key, "not a public key file"),
    ("garbage_private_key", _garbage_private_key, "not an encrypted private key"),
    ("mismatched_key_files", _mismatched_key, "does not belong to public key"),
    ("key_of_no_product_line", _key_of_no_product_line, "not a release key"),
    ("threshold_above_key_count", _threshold_above_keys, "threshold 2"),
    ("root_threshold_above_key_count", _root_threshold_above_keys, "threshold 3"),
    ("non_semver_version", _not_semver, "not a semantic version"),
    ("version_not_newer", _version_not_newer, "not newer"),
    ("missing_firmware_file", _missing_firmware, "does not exist"),
    ("no_confirmation_without_a_terminal", _no_confirmation, "--yes"),
    ("root_signed_by_a_stranger", _sign_root_with_a_stranger, "not a root key"),
    ("unsigned_root_is_not_published", _publish_unsigned_root, "signatures"),
]


@pytest.mark.parametrize(("name", "make", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_writes_nothing(
    setup: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    make: Callable[[Path, pytest.MonkeyPatch], list[str]],
    message: str,
) -> None:
    argv = make(setup, monkeypatch)
    before_repo = _tree_digest(setup / "repo")
    before_proposal = (setup / "p.json").read_bytes()
    capsys.readouterr()
    assert tufota(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tufota: error:"), err
    assert len(err.splitlines()) == 1, err
    assert message in err, err
    assert not (setup / "out.tar").exists()
    assert _tree_digest(setup / "repo") == before_repo
    assert (setup / "p.json").read_bytes() == before_proposal
