"""``tufota demo --serve``: it says where the dashboard is and gives a token to sign in with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from repo_server import Repository


def test_demo_serve_prints_the_dashboard_url_and_an_operator_token(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    demo = subprocess.Popen(
        [sys.executable, "-m", "tufota_cli.main", "demo", "--devices", "4", "--canaries", "2",
         "--serve", "--workspace", str(workspace)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        assert demo.stdout is not None
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("operator token"):
                break
        dashboard = next(line.split()[1] for line in lines if line.startswith("dashboard:"))
        token = lines[-1].rsplit(" ", 1)[1].strip()
        assert dashboard.endswith("/dashboard")
        assert requests.get(dashboard, timeout=10).status_code == 200
        base = dashboard.removesuffix("/dashboard")
        api = f"{base}/api/v1/rollouts"
        signed_in = requests.get(api, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert signed_in.status_code == 200
        bogus = requests.get(api, headers={"Authorization": "Bearer tfo_0_bogus"}, timeout=10)
        assert bogus.status_code == 401
        with Repository.open(workspace / "repo").token_store() as tokens:
            record = tokens.lookup(token)
        assert record is not None
        assert record.role == "operator"
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(demo.pid, signal.SIGKILL)
            demo.wait()
        if demo.stdout:
            demo.stdout.close()
        if demo.stderr:
            demo.stderr.close()
    assert "".join(lines).count("operator token") == 1, "".join(lines)
