"""A state-changing command that cannot get a key's passphrase changes nothing.

Every secret is gathered and every precondition checked before the first
write: without a passphrase (no environment variable, no terminal to ask on)
each command below exits 1 with one line, and the repository's files and the
tracker's rows are exactly as before. Today's failure this guards against:
``rollout resume`` said "no passphrase" after resuming and publishing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

from tufota_cli.main import main

PASSPHRASE = "a long test passphrase"


def _digest(path: Path) -> str:
    if path.suffix == ".db":
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): _digest(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def _rollout_id(repo: str, hardware: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["rollout", "status", "--repo", repo, "--json"]) == 0
    rollouts = json.loads(capsys.readouterr().out)["rollouts"]
    return next(r["rollout_id"] for r in rollouts if r["hardware_id"] == hardware)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A repository with an active rollout on gw-100 and a paused one on gw-200."""
    work = tmp_path_factory.mktemp("no-secrets")
    repo = str(work / "repo")
    mp = pytest.MonkeyPatch()
    mp.setenv("TUFOTA_PASSPHRASE", PASSPHRASE)
    mp.chdir(work)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            assert main(["init", repo]) == 0
            for hardware in ("gw-100", "gw-200"):
                for version in ("1.0.0", "1.1.0"):
                    image = work / f"{hardware}-{version}.img"
                    image.write_bytes(f"{hardware} {version}\n".encode() * 100)
                    add = ["release", "add", str(image), "--repo", repo]
                    assert main([*add, "--hardware", hardware, "--version", version]) == 0
                start = ["rollout", "start", "--repo", repo, "--hardware", hardware]
                assert main([*start, "--version", "1.0.0", "--waves", "50%,100%"]) == 0
    finally:
        mp.undo()
    return {"work": str(work), "repo": repo}


def _cases(repo: str, active: str, paused: str) -> list[list[str]]:
    image = str(Path(repo).parent / "gw-100-1.1.0.img")
    return [
        ["rollout", "pause", active, "--reason", "x", "--repo", repo],
        ["rollout", "resume", paused, "--reason", "x", "--repo", repo],
        ["rollout", "abort", active, "--reason", "x", "--repo", repo],
        ["rollout", "advance", active, "--reason", "x", "--repo", repo],
        ["rollout", "complete", active, "--reason", "x", "--repo", repo],
        ["rollout", "tick", "--repo", repo],
        ["release", "add", image, "--repo", repo, "--hardware", "gw-100", "--version", "2.0.0"],
        ["release", "add", image, "--repo", repo, "--hardware", "gw-300", "--version", "1.0.0"],
    ]


CASE_NAMES = [
    "pause",
    "resume",
    "abort",
    "advance",
    "complete",
    "tick",
    "release-add",
    "release-add-new-line",
]


@pytest.mark.parametrize("case", range(len(CASE_NAMES)), ids=CASE_NAMES)
def test_command_without_a_passphrase_changes_nothing(
    case: int,
    fleet: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    work = Path(fleet["work"])
    monkeypatch.chdir(work)
    monkeypatch.setenv("TUFOTA_PASSPHRASE", PASSPHRASE)
    active = _rollout_id(fleet["repo"], "gw-100", capsys)
    paused = _rollout_id(fleet["repo"], "gw-200", capsys)
    if case == 1:  # the resume case needs a paused rollout; pausing is idempotent
        assert main(["rollout", "pause", paused, "--reason", "setup", "--repo", fleet["repo"]]) == 0
    argv = _cases(fleet["repo"], active, paused)[case]
    for name in list(os.environ):
        if name.startswith("TUFOTA_PASSPHRASE"):
            monkeypatch.delenv(name)
    before = _snapshot(work)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, f"exit {code}; stdout {out!r}; stderr {err!r}"
    assert len(lines) == 1, err
    assert "passphrase" in lines[0], lines[0]
    after = _snapshot(work)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{' '.join(argv[:2])} without a passphrase changed {changed}"
