"""``tufota rollout`` / ``alert`` / ``simulate`` on a real repository: refusals change nothing.

Each refused command is checked against a snapshot of the tracker (a full SQL
dump) and of every file of the repository's public tree, byte for byte.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from repo_server import Repository
from staging import SqliteTrackerStore
from tests.conftest import PASSPHRASE
from tufota_cli.main import main
from tufota_cli.simulate_cmd import SimOptions, Simulation

HW = "gw-100"


def _snapshot(repo: Repository) -> tuple[list[str], dict[str, str]]:
    """The tracker as SQL text and a hash of every file under public/."""
    conn = sqlite3.connect(repo.tracker_path)
    try:
        dump = list(conn.iterdump())
    finally:
        conn.close()
    public = repo.path / "public"
    files = {
        str(p.relative_to(public)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(public.rglob("*"))
        if p.is_file()
    }
    return dump, files


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as e:  # argparse refusals
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def started(
    released_repo: Repository,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> str:
    monkeypatch.setenv("TUFOTA_PASSPHRASE", PASSPHRASE)
    repo = str(released_repo.path)
    code, out, err = _run(
        [
            *("rollout", "start", "--repo", repo, "--hardware", HW, "--version", "1.1.0"),
            *("--waves", "canary:10%,all:100%"),
        ],
        capsys,
    )
    assert code == 0, err
    return out.split()[2].rstrip(":")


@pytest.mark.parametrize(
    ("setup", "command"),
    [
        (["pause"], ["resume"]),
        ([], ["pause"]),
        ([], ["abort"]),
        ([], ["advance"]),
        ([], ["tick"]),
    ],
)
def test_a_command_refused_for_want_of_a_passphrase_changes_nothing(
    released_repo: Repository,
    started: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setup: list[str],
    command: list[str],
) -> None:
    repo = str(released_repo.path)
    for action in setup:
        assert _run(["rollout", action, started, "--repo", repo], capsys)[0] == 0
    monkeypatch.delenv("TUFOTA_PASSPHRASE")
    before = _snapshot(released_repo)
    target = [started] if command[0] != "tick" else []
    code, _out, err = _run(["rollout", *command, *target, "--repo", repo], capsys)
    assert code == 1
    assert "no passphrase" in err
    assert err.count("\n") == 1
    assert _snapshot(released_repo) == before


def test_a_wrong_passphrase_also_changes_nothing(
    released_repo: Repository,
    started: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = str(released_repo.path)
    monkeypatch.setenv("TUFOTA_PASSPHRASE", "not the passphrase")
    before = _snapshot(released_repo)
    code, _out, _err = _run(["rollout", "pause", started, "--repo", repo], capsys)
    assert code == 1
    assert _snapshot(released_repo) == before


def test_pausing_a_paused_rollout_says_so_and_exits_0(
    released_repo: Repository, started: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(released_repo.path)
    assert _run(["rollout", "pause", started, "--repo", repo], capsys)[0] == 0
    before = _snapshot(released_repo)
    code, out, _err = _run(["rollout", "pause", started, "--repo", repo], capsys)
    assert (code, out.strip()) == (0, f"rollout {started} is already paused")
    assert _snapshot(released_repo) == before
    code, out, _err = _run(["rollout", "resume", started, "--repo", repo], capsys)
    assert code == 0
    code, out, _err = _run(["rollout", "resume", started, "--repo", repo], capsys)
    assert (code, out.strip()) == (0, f"rollout {started} is already active")


def test_complete_with_a_reason_ends_the_rollout_and_records_why(
    released_repo: Repository, started: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(released_repo.path)
    code, _out, err = _run(["rollout", "complete", started, "--repo", repo], capsys)
    assert code == 2  # the reason is required
    assert "--reason" in err
    code, _out, err = _run(
        ["rollout", "complete", started, "--repo", repo, "--reason", "done"], capsys
    )
    assert code == 1
    assert "advance first" in err
    assert _run(["rollout", "advance", started, "--repo", repo], capsys)[0] == 0
    code, out, err = _run(
        ["rollout", "complete", started, "--repo", repo, "--reason", "2 units retired"], capsys
    )
    assert code == 0, err
    assert "completed" in out
    code, out, _err = _run(["rollout", "history", started, "--repo", repo], capsys)
    assert "completed by hand: 2 units retired" in out


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--soak", "9999999d", "longer than the limit of 365d"),
        ("--soak", "5x", "not like 90s"),
        ("--poll-interval", "5min", "not like 90s"),
        ("--retry-backoff", "400d", "longer than the limit of 365d"),
        ("--success-threshold", "150%", "outside 0-100%"),
    ],
)
def test_an_out_of_range_duration_is_a_clear_error_and_creates_nothing(
    released_repo: Repository,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv("TUFOTA_PASSPHRASE", PASSPHRASE)
    SqliteTrackerStore(released_repo.tracker_path).close()
    before = _snapshot(released_repo)
    code, _out, err = _run(
        [
            *("rollout", "start", "--repo", str(released_repo.path), "--hardware", HW),
            *("--version", "1.1.0", "--waves", "all:100%", option, value),
        ],
        capsys,
    )
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert _snapshot(released_repo) == before


def test_alert_settings_with_a_bad_duration_is_one_error_and_keeps_the_settings(
    released_repo: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(released_repo.path)
    SqliteTrackerStore(released_repo.tracker_path).close()
    before = _snapshot(released_repo)
    for value, message in (("7x", "not like 90s"), ("9999d", "longer than the limit")):
        code, _out, err = _run(
            ["alert", "settings", "--repo", repo, "--patch-grace", value], capsys
        )
        assert code == 2
        assert message in err
        assert "Traceback" not in err
    assert _snapshot(released_repo) == before


def test_a_webhook_sink_on_a_metadata_address_needs_allow_private(
    released_repo: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(released_repo.path)
    url = "http://169.254.169.254/latest/meta-data/"
    code, _out, err = _run(
        ["alert", "sink", "add", "ops", "--webhook", url, "--repo", repo], capsys
    )
    assert code == 1
    assert "link-local" in err
    assert "--allow-private" in err
    code, _out, err = _run(
        ["alert", "sink", "add", "ops", "--webhook", url, "--allow-private", "--repo", repo],
        capsys,
    )
    assert code == 0, err
    with SqliteTrackerStore(released_repo.tracker_path) as store:
        (sink,) = store.get_alert_settings().sinks
    assert sink.allow_private is True


def test_simulations_of_two_hardware_lines_share_a_tracker(
    released_repo: Repository, tmp_path: Path
) -> None:
    for hardware in (HW, "sensor-9"):
        sim = Simulation(
            released_repo,
            "http://127.0.0.1:9",
            tmp_path / hardware,
            SimOptions(hardware_id=hardware, devices=2),
        )
        try:
            sim.provision()
        finally:
            sim.close()
    with SqliteTrackerStore(released_repo.tracker_path) as store:
        ids = [d.device_id for d in store.list_devices()]
    assert ids == [
        "sim-gw-100-00001",
        "sim-gw-100-00002",
        "sim-sensor-9-00001",
        "sim-sensor-9-00002",
    ]


def test_fleet_status_counts_a_revoked_device_in_its_summary(
    released_repo: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    key = {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "00" * 32}}
    with SqliteTrackerStore(released_repo.tracker_path) as store:
        for name in ("plc-1", "plc-2"):
            store.register_device(name, HW, public_key=key, status="accepted")
        store.set_device_status("plc-2", "revoked", reason="stolen")
    code, out, err = _run(["fleet", "status", "--repo", str(released_repo.path)], capsys)
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("plc-2"))
    assert "revoked" in row
    assert "by status:   accepted 1, revoked 1" in out
    assert "(revoked devices not counted: 1)" in out


def test_start_without_a_passphrase_creates_and_publishes_nothing(
    released_repo: Repository, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TUFOTA_PASSPHRASE", raising=False)
    SqliteTrackerStore(released_repo.tracker_path).close()
    before = _snapshot(released_repo)
    code, _out, err = _run(
        [
            *("rollout", "start", "--repo", str(released_repo.path), "--hardware", HW),
            *("--version", "1.1.0", "--waves", "all:100%"),
        ],
        capsys,
    )
    assert code == 1
    assert "no passphrase" in err
    assert _snapshot(released_repo) == before
