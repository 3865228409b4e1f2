"""What the server and a person see during a download, and faults the agent rides out.

Real HTTP on loopback throughout; the full disk is a real one (a file size
limit in a child process, so the kernel refuses the write with EFBIG exactly
where the test says), not a mocked ``write``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from device_agent import (
    ACTION_FAILED,
    ACTION_IDLE,
    ACTION_REBOOTING,
    AgentLimits,
    CycleResult,
    _faults,
    run_agent_loop,
)
from device_agent._download import Downloader, Expected, HttpSource
from tests.device_agent.conftest import Env

SIZE = 256 * 1024


def _release(env: Env, size: int = SIZE) -> str:
    path = env.repo.add_firmware("1.1.0", os.urandom(size))
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    return path


def test_downloading_reaches_the_server_before_the_first_byte_arrives(env: Env) -> None:
    _release(env)
    seen_at_first_chunk: list[list[str]] = []

    def hook(name: str) -> None:
        if name == "download.chunk" and not seen_at_first_chunk:
            seen_at_first_chunk.append(env.server.states())

    _faults.hook = hook
    try:
        assert env.agent().run_once().action == ACTION_REBOOTING
    finally:
        _faults.hook = None

    assert seen_at_first_chunk == [["downloading"]]


def test_a_slow_download_sends_heartbeats_every_interval(env: Env) -> None:
    _release(env)
    env.config = dataclasses.replace(
        env.config, rate_limit=64 * 1024, progress_step=0, heartbeat_interval=1.0
    )
    started = time.monotonic()

    assert env.agent().run_once().action == ACTION_REBOOTING

    elapsed = time.monotonic() - started
    progress = [r for r in env.server.reports if r.state == "downloading" and r.bytes_done]
    assert elapsed >= 3.5  # 256 KiB at 64 KiB/s
    assert len(progress) >= int(elapsed) - 2
    assert [r.bytes_done for r in progress] == sorted(r.bytes_done for r in progress)


def test_with_a_rate_limit_progress_reaches_100_percent_when_the_download_ends(
    env: Env, tmp_path: Path
) -> None:
    path = _release(env, size=96 * 1024)
    rate = 32 * 1024
    info = env.repo.delegated[env.repo.firmware_role].signed.targets[path]
    blob = "/" + env.repo.blobs[path].relative_to(env.repo.dir).as_posix()
    seen: list[tuple[float, int]] = []
    session = requests.Session()
    limits = AgentLimits()
    started = time.monotonic()

    Downloader(
        HttpSource(session, limits),
        limits,
        rate_limit=rate,
        progress=lambda done, total: seen.append((time.monotonic(), done)),
    ).fetch(env.url + blob, Expected.from_target(info), tmp_path / "fw.bin")

    ended = time.monotonic()
    session.close()
    full_at = next(t for t, done in seen if done == 96 * 1024)
    assert ended - full_at < 0.5
    # Never ahead of what the capped rate allows (a quarter second of slack).
    assert all(done <= rate * (t - started + 0.25) for t, done in seen)


def test_the_progress_bar_draws_on_a_terminal_that_reports_0x0(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _release(env)
    master, slave = os.openpty()  # a new pty reports 0 columns and 0 rows
    assert os.get_terminal_size(slave) == (0, 0)
    drawn: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            drawn.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    terminal = open(slave, "w")  # noqa: SIM115 - closed below
    monkeypatch.setattr(sys, "stderr", terminal)
    try:
        assert env.agent().run_once().action == ACTION_REBOOTING
    finally:
        monkeypatch.undo()
        terminal.close()
    reader.join(5)
    os.close(master)

    output = b"".join(drawn)
    assert b"firmware" in output
    assert b"100%" in output


_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from device_agent.cli import main
sys.exit(main(["run", "--once", "--config", sys.argv[1]]))
"""


def test_a_full_disk_is_reported_as_disk_full_and_the_retry_resumes(env: Env) -> None:
    size, limit = 1024 * 1024, 300 * 1024
    _release(env, size=size)
    env.write_config()

    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK.format(limit=limit), str(env.device_dir / "agent.toml")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )

    assert done.returncode == 3, done.stderr
    assert "(disk_full)" in done.stdout
    assert "Traceback" not in done.stderr
    failed = [r for r in env.server.reports if r.state == "failed"]
    assert [r.error_code for r in failed] == ["disk_full"]
    assert "the disk is full" in failed[0].message
    assert (env.config.slots_dir / "b" / "image.bin.part").stat().st_size == limit
    assert env.boot_control()["pending"] is None

    again = env.agent().run_once()

    assert again.action == ACTION_REBOOTING
    assert env.server.ranges == [f"bytes={limit}-"]


def test_the_poll_loop_survives_a_failing_cycle_and_backs_off(env: Env) -> None:
    state_file = env.config.state_dir / "agent.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text("{not json")
    stop = threading.Event()
    seen: list[CycleResult] = []

    def record(result: CycleResult) -> None:
        seen.append(result)
        if result.action == ACTION_FAILED:
            state_file.unlink()  # the operator repairs the device
        else:
            stop.set()

    run_agent_loop(env.config, stop=stop, on_cycle=record)

    assert [r.action for r in seen] == [ACTION_FAILED, ACTION_IDLE]
    assert seen[0].backoff


def test_expired_metadata_says_the_device_clock_may_be_wrong(env: Env) -> None:
    from datetime import UTC, datetime, timedelta

    # What a device whose clock runs a year ahead sees: a root past its expiry.
    expired = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    env.repo.root.signed.expires = expired
    env.repo.root.signatures.clear()
    env.repo.root.sign(env.repo.signers["root"])
    (env.device_dir / "root.json").write_bytes(env.repo.root.to_bytes())

    result = env.agent().run_once()

    assert result.error_code == "metadata_expired"
    assert f"expired at {expired:%Y-%m-%dT%H:%M:%SZ}" in result.message
    assert "device clock 20" in result.message
    assert "the device clock may be wrong" in result.message
    failed = env.server.reports[-1]
    assert (failed.state, failed.error_code) == ("failed", "metadata_expired")
    assert failed.time  # the device's clock, for the server to compare with its own


def test_download_heartbeats_come_at_least_once_per_poll_interval(env: Env) -> None:
    _release(env)
    # A 60 s heartbeat setting, but the device polls every second: the server
    # would call it silent after a few seconds without news.
    env.config = dataclasses.replace(
        env.config,
        rate_limit=64 * 1024,
        progress_step=0,
        heartbeat_interval=60.0,
        poll_interval=1.0,
    )

    assert env.agent().run_once().action == ACTION_REBOOTING

    progress = [r for r in env.server.reports if r.state == "downloading" and r.bytes_done]
    assert len(progress) >= 2


def test_a_disk_that_stays_full_leaves_the_failure_as_the_servers_last_view(env: Env) -> None:
    _release(env, size=1024 * 1024)
    env.write_config()
    script = _FULL_DISK.format(limit=300 * 1024)
    config = str(env.device_dir / "agent.toml")
    for _ in range(2):  # the retry resumes, says "downloading", and hits the full disk again
        done = subprocess.run(
            [sys.executable, "-c", script, config],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert done.returncode == 3, done.stderr
    states = [(r.state, r.error_code) for r in env.server.reports]
    assert ("downloading", None) in states[states.index(("failed", "disk_full")) + 1 :]
    assert states[-1] == ("failed", "disk_full"), states
