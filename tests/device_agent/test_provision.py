"""``tufota device provision``: a readable poll interval and the device's own policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent import AgentConfig
from tufota_cli.main import main


@pytest.fixture
def repo(tmp_path: Path, passphrase_env: str, capsys: pytest.CaptureFixture[str]) -> str:
    path = str(tmp_path / "repo")
    assert main(["init", path]) == 0
    image = tmp_path / "fw.img"
    image.write_bytes(b"firmware" * 100)
    argv = ["release", "add", str(image), "--repo", path, "--hardware", "gw-100"]
    assert main([*argv, "--version", "1.0.0"]) == 0
    capsys.readouterr()
    return path


def _provision(repo: str, out: Path, *extra: str) -> int:
    argv = ["device", "provision", "dev-1", "--repo", repo, "--hardware", "gw-100"]
    return main([*argv, "--out", str(out), *extra])


def test_provision_writes_interval_floor_and_window(
    repo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dev-1"

    code = _provision(
        repo,
        out,
        "--poll-interval",
        "10s",
        "--min-version",
        "1.0.0",
        "--maintenance-window",
        "sat 02:00-04:00 utc",
    )

    assert code == 0, capsys.readouterr().err
    config = AgentConfig.load(out / "agent.toml")
    assert config.poll_interval == 10.0
    assert config.min_version == "1.0.0"
    assert config.maintenance_window == "Sat 02:00-04:00 UTC"


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--poll-interval", "5min"], "--poll-interval '5min' is not a duration"),
        (["--poll-interval", "2d"], "--poll-interval '2d' is outside 1s - 1d"),
        (["--min-version", "one"], "--min-version: "),
        (["--maintenance-window", "Funday 02:00-04:00 UTC"], "maintenance window"),
    ],
    ids=["unit", "too-long", "floor", "window"],
)
def test_bad_provision_values_fail_in_one_line_before_anything_is_written(
    repo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], words: str
) -> None:
    out = tmp_path / "dev-1"

    assert _provision(repo, out, *extra) == 1

    err = capsys.readouterr().err
    assert words in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["device", "list", "--repo", repo]) == 0
    assert "no devices" in capsys.readouterr().out
