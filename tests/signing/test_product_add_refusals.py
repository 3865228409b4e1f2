"""A refused ``product add`` leaves no key behind in the signing directory."""

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
