"""The whole path through the real commands: a server process, agent processes, real HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

BIN = Path(sys.executable).parent
PASSPHRASE = "integration passphrase"


def _env() -> dict[str, str]:
    return {**os.environ, "TUFOTA_PASSPHRASE": PASSPHRASE}


def wait_until_healthy(server: subprocess.Popen[str], url: str, timeout: float = 30) -> None:
    """Wait for a started ``tufota serve`` to answer its health check (or fail the test)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{url}/api/v1/health", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        assert server.poll() is None, server.communicate()[1]
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)


def tufota(*args: str) -> str:
    result = subprocess.run(
        [str(BIN / "tufota"), *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def agent(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "tufota-agent"), "run", "--config", str(config), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _agent_status(config: Path) -> dict[str, object]:
    result = subprocess.run(
        [str(BIN / "tufota-agent"), "status", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_VIEWER: dict[str, dict[str, str]] = {}  # a viewer token's header per server URL


@pytest.fixture
def served_repo(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    repo = tmp_path / "repo"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    tufota("init", str(repo), "--server-url", url)
    for version in ("1.0.0", "1.1.0"):
        image = tmp_path / f"fw-{version}.img"
        image.write_bytes(os.urandom(64 * 1024))
        tufota(
            "release",
            "add",
            str(image),
            "--repo",
            str(repo),
            "--hardware",
            "gw-100",
            "--version",
            version,
        )
    # API reads need a token; 'token create' prints only the token on stdout.
    token = tufota("token", "create", "--name", "e2e", "--role", "viewer", "--repo", str(repo))
    _VIEWER[url] = {"Authorization": f"Bearer {token.strip()}"}
    server = subprocess.Popen(
        [
            str(BIN / "tufota"),
            "serve",
            "--repo",
            str(repo),
            "--port",
            str(port),
            "--tick-interval",
            "0.2",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_healthy(server, url)
        yield repo, url
    finally:
        server.terminate()
        server.communicate(timeout=20)


def _rollout(url: str) -> dict[str, object]:
    rollouts = requests.get(f"{url}/api/v1/rollouts", headers=_VIEWER[url], timeout=5).json()[
        "rollouts"
    ]
    assert len(rollouts) == 1
    return rollouts[0]  # type: ignore[no-any-return]


def test_signed_release_reaches_every_device_in_two_waves(
    served_repo: tuple[Path, str], tmp_path: Path
) -> None:
    repo, url = served_repo
    configs = []
    for n in range(4):
        out = tmp_path / f"dev-{n}"
        tufota(
            "device",
            "provision",
            f"dev-{n}",
            "--repo",
            str(repo),
            "--hardware",
            "gw-100",
            "--out",
            str(out),
            "--factory-version",
            "1.0.0",
            *(["--tags", "canary"] if n == 0 else []),
        )
        configs.append(out / "agent.toml")
    tufota(
        "rollout",
        "start",
        "--repo",
        str(repo),
        "--hardware",
        "gw-100",
        "--version",
        "1.1.0",
        "--waves",
        "canary:tag=canary,fleet:100%",
        "--success-threshold",
        "100%",
    )

    # Wave 1: only the canary installs; the others are not in an open wave yet.
    for config in configs:
        assert agent(config).returncode == 0
    assert _agent_status(configs[0])["pending_version"] == "1.1.0"
    for config in configs[1:]:
        assert _agent_status(config)["pending_version"] is None
        assert _agent_status(config)["installed_version"] == "1.0.0"
    # The canary "reboots": it boots the new slot, passes its health check and reports.
    assert agent(configs[0]).returncode == 0
    assert _agent_status(configs[0])["installed_version"] == "1.1.0"

    deadline = time.monotonic() + 30
    while _rollout(url)["current_wave"] != 1:
        assert time.monotonic() < deadline, _rollout(url)
        time.sleep(0.2)

    # Wave 2: everyone else.
    for _ in range(2):
        for config in configs:
            assert agent(config).returncode == 0
    deadline = time.monotonic() + 30
    while _rollout(url)["state"] != "completed":
        assert time.monotonic() < deadline, _rollout(url)
        time.sleep(0.2)

    fleet = json.loads(tufota("fleet", "status", "--repo", str(repo), "--json"))
    assert {d["installed_version"] for d in fleet["devices"]} == {"1.1.0"}
    history = requests.get(f"{url}/api/v1/devices/dev-0", headers=_VIEWER[url], timeout=5).json()[
        "history"
    ]
    assert any(e.get("state") == "succeeded" for e in history)


def test_demo_updates_every_device_in_two_waves() -> None:
    result = subprocess.run(
        [str(BIN / "tufota"), "demo", "--devices", "20"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # Act 1: the canaries' injected failures pause 1.1.0 and the webhook hears of it.
    assert "state paused  wave 1/2" in out
    assert "webhook received: opened [rollout_paused]" in out
    # Act 2: the fix goes out with the critical preset, through both waves, to everyone.
    assert (
        "first rollout paused at the canary wave; 20/20 devices on 1.1.1; rollout completed" in out
    )
    assert "wave 2/2 'fleet' completed" in out
    assert "by exposure: none 20" in out
