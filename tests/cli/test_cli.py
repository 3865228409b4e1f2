"""The ``tufota`` command: happy paths, and bad input giving one line and no partial files."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from repo_server import Repository
from tufota_cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["init", "--help"],
        ["release", "add", "--help"],
        ["serve", "--help"],
        ["device", "provision", "--help"],
        ["rollout", "start", "--help"],
        ["rollout", "status", "--help"],
        ["fleet", "status", "--help"],
        ["demo", "--help"],
    ],
)
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: tufota" in capsys.readouterr().out


def test_init_release_provision_rollout_and_status(
    tmp_path: Path, passphrase_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(tmp_path / "repo")
    assert run(capsys, "init", repo)[0] == 0
    image = tmp_path / "fw.img"
    image.write_bytes(b"firmware" * 100)
    code, out, _ = run(
        capsys,
        "release",
        "add",
        str(image),
        "--repo",
        repo,
        "--hardware",
        "gw-100",
        "--version",
        "1.0.0",
    )
    assert code == 0
    assert "new product line gw-100" in out
    code, out, _ = run(
        capsys,
        "release",
        "add",
        str(image),
        "--repo",
        repo,
        "--hardware",
        "gw-100",
        "--version",
        "1.1.0",
        "--severity",
        "high",
        "--cvss",
        "8.1",
        "--fixes",
        "CVE-2026-1234",
    )
    assert code == 0
    assert "new product line" not in out
    code, out, _ = run(
        capsys,
        "device",
        "provision",
        "dev-1",
        "--repo",
        repo,
        "--hardware",
        "gw-100",
        "--out",
        str(tmp_path / "dev-1"),
        "--tags",
        "canary",
        "--factory-version",
        "1.0.0",
    )
    assert code == 0
    assert (tmp_path / "dev-1" / "agent.toml").is_file()
    assert (tmp_path / "dev-1" / "device.key").stat().st_mode & 0o077 == 0
    code, out, _ = run(
        capsys,
        "rollout",
        "start",
        "--repo",
        repo,
        "--hardware",
        "gw-100",
        "--version",
        "1.1.0",
        "--waves",
        "canary:tag=canary,100%",
    )
    assert code == 0, out
    code, out, _ = run(capsys, "rollout", "status", "--repo", repo, "--json")
    status = json.loads(out)["rollouts"][0]
    assert status["state"] == "active"
    assert status["waves"][0]["eligible"] == 1
    code, out, _ = run(capsys, "fleet", "status", "--repo", repo, "--json")
    assert code == 0
    assert json.loads(out)["devices"][0]["installed_version"] == "1.0.0"


def _one_line_error(code: int, err: str, needle: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tufota: error:")
    assert needle in lines[0], lines[0]


@pytest.fixture
def repo_path(released_repo: Repository, passphrase_env: str) -> str:
    return str(released_repo.path)


def test_missing_firmware_file(
    repo_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _tree(Path(repo_path))
    code, _, err = run(
        capsys,
        "release",
        "add",
        str(tmp_path / "nope.img"),
        "--repo",
        repo_path,
        "--hardware",
        "gw-100",
        "--version",
        "2.0.0",
    )
    _one_line_error(code, err, "does not exist")
    assert _tree(Path(repo_path)) == before


@pytest.mark.parametrize(
    ("version", "needle"),
    [("2.0", "not a semantic version"), ("1.0.1", "not newer"), ("1.1.0", "not newer")],
)
def test_release_version_must_be_semver_and_newer(
    repo_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str, needle: str
) -> None:
    image = tmp_path / "fw.img"
    image.write_bytes(b"x")
    before = _tree(Path(repo_path))
    code, _, err = run(
        capsys,
        "release",
        "add",
        str(image),
        "--repo",
        repo_path,
        "--hardware",
        "gw-100",
        "--version",
        version,
    )
    _one_line_error(code, err, needle)
    assert _tree(Path(repo_path)) == before


def test_repository_that_does_not_exist(
    tmp_path: Path, passphrase_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "rollout", "status", "--repo", str(tmp_path / "nowhere"))
    _one_line_error(code, err, "not a tufota repository")


def test_device_for_hardware_without_release(
    repo_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dev"
    code, _, err = run(
        capsys,
        "device",
        "provision",
        "dev-1",
        "--repo",
        repo_path,
        "--hardware",
        "other",
        "--out",
        str(out),
    )
    _one_line_error(code, err, "no product line")
    assert not out.exists()
    assert not list(tmp_path.glob(".dev.*"))


def test_rollout_for_hardware_or_version_without_release(
    repo_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys,
        "rollout",
        "start",
        "--repo",
        repo_path,
        "--hardware",
        "other",
        "--version",
        "1.0.0",
        "--waves",
        "100%",
    )
    _one_line_error(code, err, "other")
    code, _, err = run(
        capsys,
        "rollout",
        "start",
        "--repo",
        repo_path,
        "--hardware",
        "gw-100",
        "--version",
        "3.0.0",
        "--waves",
        "100%",
    )
    _one_line_error(code, err, "no release 3.0.0")


def test_bad_wave_spec(repo_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys,
        "rollout",
        "start",
        "--repo",
        repo_path,
        "--hardware",
        "gw-100",
        "--version",
        "1.1.0",
        "--waves",
        "50%,10%",
    )
    _one_line_error(code, err, "cumulative")


def test_init_refuses_a_non_empty_directory(
    tmp_path: Path, passphrase_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "precious.txt").write_text("keep")
    code, _, err = run(capsys, "init", str(tmp_path / "repo"))
    _one_line_error(code, err, "not empty")
    assert _tree(tmp_path / "repo") == ["precious.txt"]


def test_init_without_passphrase_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TUFOTA_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal: no prompt possible
    code, _, err = run(capsys, "init", str(tmp_path / "repo"))
    _one_line_error(code, err, "TUFOTA_PASSPHRASE")
    assert list(tmp_path.iterdir()) == []


def test_wrong_passphrase_is_named(
    repo_path: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TUFOTA_PASSPHRASE", "not the passphrase")
    image = tmp_path / "fw.img"
    image.write_bytes(b"x")
    before = _tree(Path(repo_path))
    code, _, err = run(
        capsys,
        "release",
        "add",
        str(image),
        "--repo",
        repo_path,
        "--hardware",
        "gw-100",
        "--version",
        "2.0.0",
    )
    _one_line_error(code, err, "wrong passphrase")
    assert _tree(Path(repo_path)) == before


def test_serve_on_a_port_in_use(repo_path: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tufota_cli.main",
                "serve",
                "--repo",
                repo_path,
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    _one_line_error(result.returncode, result.stderr, "cannot listen")
