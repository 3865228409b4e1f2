"""Every command, given bad values, prints one line, exits non-zero and changes nothing.

The cases walk the command groups with values a first-time user types by
mistake (units, percentages, names, ids, paths). Each run happens in-process
against a real repository; the test hashes every file under the working
directory before and after, so a refused command that wrote anything fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

import pytest

from tufota_cli.main import main

BAD = [
    # rollouts: durations, fractions, waves, windows, names
    ["rollout", "start", "--hardware", "gw-100", "--version", "1.0.0", "--soak", "5x"],
    ["rollout", "start", "--hardware", "gw-100", "--version", "1.0.0", "--soak", "9999999d"],
    ["rollout", "start", "--hardware", "gw-100", "--version", "1.0.0", "--soak", "-5m"],
    [
        "rollout",
        "start",
        "--hardware",
        "gw-100",
        "--version",
        "1.0.0",
        "--success-threshold",
        "150%",
    ],
    [
        "rollout",
        "start",
        "--hardware",
        "gw-100",
        "--version",
        "1.0.0",
        "--failure-threshold",
        "-1%",
    ],
    ["rollout", "start", "--hardware", "gw-100", "--version", "1.0.0", "--stall-timeout", "x"],
    ["rollout", "start", "--hardware", "gw-100", "--version", "1.0.0", "--waves", "200%"],
    ["rollout", "start", "--hardware", "gw-100", "--version", "1.0.0", "--waves", ""],
    ["rollout", "start", "--hardware", "gw-100", "--version", "1.0.0", "--waves", "50%,10%"],
    [
        "rollout",
        "start",
        "--hardware",
        "gw-100",
        "--version",
        "1.0.0",
        "--maintenance-window",
        "Funday 02:00-04:00 UTC",
    ],
    ["rollout", "start", "--hardware", "gw-100", "--version", "9.9.9"],
    ["rollout", "start", "--hardware", "gw 100!", "--version", "1.0.0"],
    ["rollout", "start", "--hardware", "gw-100", "--version", "not-a-version"],
    ["rollout", "start", "--hardware", "gw-100", "--version", "1.0.0", "--min-devices", "-3"],
    ["rollout", "status", "no-such-rollout"],
    ["rollout", "pause", "no-such-rollout", "--reason", "x"],
    ["rollout", "history", "no-such-rollout"],
    # alerts
    ["alert", "settings", "--patch-grace", "7x"],
    ["alert", "resolve", "999999", "--reason", "x"],
    ["alert", "resolve", str(2**63), "--reason", "x"],
    ["alert", "sink", "add", "--webhook", "not a url"],
    # devices
    ["device", "register", "bad id!", "--hardware", "gw-100", "--public-key", "nope.pub"],
    ["device", "revoke", "no-such-device"],
    ["device", "accept", "no-such-device"],
    ["device", "provision", "dev-1", "--hardware", "gw-100", "--out", "d1", "--tags", "a b"],
    # tokens
    ["token", "revoke", "x" * 200],
    ["token", "revoke", "no-such-token"],
    # releases and keys
    ["release", "add", "no-such-file.img", "--hardware", "gw-100", "--version", "2.0.0"],
    ["release", "add", "fw.img", "--hardware", "gw-100", "--version", "1.0.0"],
    ["release", "add", "fw.img", "--hardware", "gw-100", "--version", "2.0.0", "--cvss", "11"],
    ["release", "verify", "no-such-bundle.tar.gz"],
    ["release", "verify", "fw.img"],
    ["key", "show", "no-such.pub"],
    ["key", "generate", "--out", "k", "--type", "rsa-9"],
    ["expiry", "check", "--within", "14x"],
    ["product", "add", "gw 200", "--key", "no-such.pub"],
    # repository
    ["repo", "verify", "--trusted-root", "no-such-root.json"],
]


def _repo_args(argv: list[str], repo: str) -> list[str]:
    """``--repo`` where the command takes one (not for key/release verify/product...)."""
    groups = ("rollout", "alert", "device", "token", "fleet", "repo")
    commands = (["release", "add"], ["product", "add"], ["expiry", "check"])
    needs_repo = argv[0] in groups or argv[:2] in commands
    return [*argv, "--repo", repo] if needs_repo else argv


def _digest(path: Path) -> str:
    if path.suffix == ".db":
        # A database is compared by content: a reader's checkpoint rewrites pages, not data.
        with contextlib.closing(sqlite3.connect(path)) as conn:
            dump = "\n".join(conn.iterdump())
        return hashlib.sha256(dump.encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): _digest(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("bad-values")
    mp = pytest.MonkeyPatch()
    mp.setenv("TUFOTA_PASSPHRASE", "a long test passphrase")
    mp.chdir(work)
    try:
        assert main(["init", str(work / "repo")]) == 0
        (work / "fw.img").write_bytes(b"firmware 1.0.0\n" * 100)
        argv = ["release", "add", "fw.img", "--repo", str(work / "repo")]
        assert main([*argv, "--hardware", "gw-100", "--version", "1.0.0"]) == 0
        assert main(["fleet", "status", "--repo", str(work / "repo")]) == 0  # creates the tracker
    finally:
        mp.undo()
    return work


@pytest.mark.parametrize("argv", BAD, ids=[" ".join(a)[:60] for a in BAD])
def test_bad_value_gives_one_line_and_changes_nothing(
    argv: list[str],
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("TUFOTA_PASSPHRASE", "a long test passphrase")
    before = _snapshot(workdir)
    capsys.readouterr()
    try:
        code = main(_repo_args(argv, str(workdir / "repo")))
    except SystemExit as e:  # argparse's usage errors
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code in (1, 2), f"exit {code}; stdout: {out!r}; stderr: {err!r}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("tufota"), lines[0]
    assert len(lines[0]) < 400, lines[0]
    after = _snapshot(workdir)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a refused command changed {changed}"
