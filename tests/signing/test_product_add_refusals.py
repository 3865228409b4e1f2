"""Refused product-line changes leave nothing behind: no key, no published change."""

from __future__ import annotations

from pathlib import Path

import pytest

from repo_server import Repository
from signing import generate_key
from tests.conftest import PASSPHRASE
from tufota_cli.main import main


def test_a_wrong_targets_key_is_refused_before_the_new_line_key_is_made(
    released_repo: Repository,
    tmp_path: Path,
    passphrase_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = generate_key(tmp_path / "not-targets", PASSPHRASE)
    before = sorted(p.name for p in released_repo.signing_dir.iterdir())
    argv = ["product", "add", "gw-900", "--repo", str(released_repo.path), "--yes"]
    assert main([*argv, "--targets-key", str(other.path.with_suffix(".key"))]) == 1
    assert "is not a targets key" in capsys.readouterr().err
    assert sorted(p.name for p in released_repo.signing_dir.iterdir()) == before


def test_a_rotation_that_would_strand_the_line_is_refused_in_one_line(
    released_repo: Repository,
    tmp_path: Path,
    passphrase_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    new = generate_key(tmp_path / "gw-new", PASSPHRASE)
    public = released_repo.path / "public"
    before = {p: p.read_bytes() for p in public.rglob("*") if p.is_file()}
    old = released_repo.signing_dir / "release-gw-100.pub"
    argv = ["product", "rotate", "gw-100", "--repo", str(released_repo.path), "--yes"]
    capsys.readouterr()
    assert main([*argv, "--add-key", str(new.path), "--remove-key", str(old)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "keeps 0 valid signature(s) of 1" in err
    assert {p: p.read_bytes() for p in public.rglob("*") if p.is_file()} == before
