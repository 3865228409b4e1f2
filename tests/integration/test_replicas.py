"""Three `tufota serve` replicas on one PostgreSQL and one S3 bucket, behind a balancer.

Real processes, real HTTP on loopback, moto's S3 server, a PostgreSQL the
suite started, simulated devices running the real agent. The leader is
SIGKILLed mid-rollout: another replica must take over, the rollout must
complete, the alert must fire once, and every report a device had
acknowledged must be in the tracker exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from repo_server import RepoConfig, Repository, add_release_locally
from staging import AlertSettings, PostgresTrackerStore, SinkSpec
from tests.conftest import PASSPHRASE, ask
from tests.repo_server.conftest import AWS_ENV
from tests.staging.helpers import WebhookReceiver
from tufota_cli.simulate_cmd import SimOptions, Simulation
from tufota_core import FirmwareInfo

HW = "gw-100"
TUFOTA = str(Path(sys.executable).parent / "tufota")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Balancer:
    """A round-robin TCP balancer: each new connection goes to the next replica that accepts."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self._next = 0
        self._loop = asyncio.new_event_loop()
        self.port = _free_port()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port)
        )
        self._server = server
        ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(len(self.ports)):
            port = self.ports[self._next % len(self.ports)]
            self._next += 1
            try:
                upstream = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class Replica:
    def __init__(self, name: str, port: int, repo: Repository, url: str, log: Path) -> None:
        self.name = name
        self.port = port
        self.log = log
        env = {**os.environ, **AWS_ENV, "TUFOTA_PASSPHRASE": PASSPHRASE}
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            [
                TUFOTA,
                "serve",
                "--repo",
                repo.config.storage,
                "--state-dir",
                str(repo.path),
                "--database",
                url,
                "--replica-name",
                name,
                "--port",
                str(self.port),
                "--tick-interval",
                "0.3",
                "--lab-allow-offline-keys",
            ],
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if requests.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"replica {self.name} did not start: {self.log.read_text()}")

    def metrics(self, token: str) -> str:
        headers = {"Authorization": f"Bearer {token}"}
        return requests.get(f"{self.url}/metrics", headers=headers, timeout=60).text

    def leads(self, token: str) -> bool:
        return re.search(r"^tufota_leader 1\.0$", self.metrics(token), re.M) is not None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


@pytest.fixture
def s3_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """moto's S3 server in its own process (the devices here would starve an in-process one)."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(endpoint, timeout=1)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="fleet")
        client.close()
        yield endpoint, "fleet"
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def fleet_repo(tmp_path: Path, s3_bucket: tuple[str, str], postgres_url: str) -> Repository:
    """A state directory publishing to S3, with 1.0.0 and a 1.1.0 that fixes a CVSS 9.1 CVE."""
    endpoint, bucket = s3_bucket
    storage = RepoConfig(storage=f"s3://{bucket}/fleet", s3_endpoint_url=endpoint)
    repo = Repository.create(tmp_path / "state", PASSPHRASE, storage=storage)
    for info in (
        FirmwareInfo(HW, "1.0.0"),
        FirmwareInfo(HW, "1.1.0", severity="critical", cvss=9.1, fixes=("CVE-2026-1234",)),
    ):
        image = tmp_path / f"gw-{info.version}.img"
        image.write_bytes(f"image {info.version}\n".encode() * 1000)
        add_release_locally(repo, image, info, ask)
    repo.storage.close()
    repo.database = postgres_url
    return repo


def test_three_replicas_survive_the_leader_being_killed_mid_rollout(
    fleet_repo: Repository, tmp_path: Path, postgres_url: str
) -> None:
    receiver = WebhookReceiver()
    with PostgresTrackerStore(postgres_url) as store:
        store.set_alert_settings(
            AlertSettings(
                sinks=(SinkSpec("ops", "webhook", url=receiver.url, allow_private=True),),
                patch_grace_seconds=0,
            )
        )
    with fleet_repo.token_store() as tokens:
        operator = tokens.create("ops", "operator")
        viewer = tokens.create("watch", "viewer")
    ports = [_free_port() for _ in range(3)]
    balancer = Balancer(ports)
    replicas: list[Replica] = []
    sim = None
    try:
        sim = Simulation(
            fleet_repo,
            balancer.url,
            tmp_path / "devices",
            SimOptions(
                hardware_id=HW,
                devices=24,
                factory_version="1.0.0",
                canaries=3,
                poll_interval=30,
                reboot_seconds=6,
                speedup=60,
                workers=6,
            ),
        )
        sim.provision()  # before the servers start: the first fleet check sees the CVE
        replicas = [
            Replica(f"r{i}", port, fleet_repo, postgres_url, tmp_path / f"r{i}.log")
            for i, port in enumerate(ports, 1)
        ]
        for replica in replicas:
            replica.wait_ready()
        leaders = [r for r in replicas if r.leads(viewer)]
        assert len(leaders) == 1, [r.metrics(viewer) for r in replicas]
        started = requests.post(
            f"{balancer.url}/api/v1/rollouts",
            json={
                "hardware_id": HW,
                "version": "1.1.0",
                "waves": "canary:tag=canary,half:50%,all:100%",
                "success_threshold": "100%",
                "soak": "3s",
            },
            headers={"Authorization": f"Bearer {operator}"},
            timeout=30,
        )
        assert started.status_code == 201, started.text
        rid = started.json()["rollout_id"]
        outcome: dict[str, Any] = {}
        runner = threading.Thread(
            target=lambda: outcome.update(result=sim.run(120, rollout_id=rid)), daemon=True
        )
        runner.start()

        with PostgresTrackerStore(postgres_url) as watch:
            deadline = time.monotonic() + 60
            while watch.get_rollout(rid).current_wave < 1:
                assert time.monotonic() < deadline, "the canary wave never passed"
                time.sleep(0.1)
            assert watch.get_rollout(rid).state == "active"  # mid-rollout
            while not watch.list_alerts(open_only=True, kinds=["unpatched_vulnerability"]):
                assert time.monotonic() < deadline, "the first leader never opened the alert"
                time.sleep(0.1)
            (leader,) = [r for r in replicas if r.name == watch.get_setting("leader")["replica"]]
            assert leader.leads(viewer)
            leader.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            survivors = [r for r in replicas if r is not leader]
            while watch.get_setting("leader")["replica"] == leader.name:
                assert time.monotonic() - killed < 10, "no replica took over within 10 s"
                time.sleep(0.05)
            takeover = time.monotonic() - killed
            (successor,) = [
                r for r in survivors if r.name == watch.get_setting("leader")["replica"]
            ]
            assert successor.leads(viewer)
            assert sum(r.leads(viewer) for r in survivors) == 1
            runner.join(150)
            assert not runner.is_alive()
            result = outcome["result"]
            assert result.rollout_state == "completed", json.dumps(result.to_json())
            assert result.versions == {"1.1.0": 24}
            assert takeover < 10

            # Every replica answered devices.
            served = [
                sum(
                    float(m)
                    for m in re.findall(
                        r'^tufota_reports_total\{result="accepted"\} (\S+)$',
                        r.metrics(viewer),
                        re.M,
                    )
                )
                for r in survivors
            ]
            assert all(n > 0 for n in served), served

            # The unpatched-CVE alert opened once, though two leaders ran the monitors.
            alerts = watch.list_alerts(kinds=["unpatched_vulnerability"])
            assert len(alerts) == 1, alerts
            deadline = time.monotonic() + 15
            while "unpatched_vulnerability" not in receiver.kinds():
                assert time.monotonic() < deadline, "the alert was never delivered"
                time.sleep(0.2)
            assert receiver.kinds().count("unpatched_vulnerability") == 1

            # Acknowledged reports: each device's newest is the tracker's, none twice.
            for device in sim.devices:
                status = device.agent.status()
                assert status["reports_pending"] == 0
                acknowledged = status["agent"]["next_seq"] - 1
                assert watch.get_device(device.device_id).last_seq == acknowledged
            with watch._tx(write=False) as conn:
                repeated = conn.execute(
                    "SELECT device_id, seq, count(*) AS n FROM events WHERE kind = 'report'"
                    " GROUP BY device_id, seq HAVING count(*) > 1"
                ).fetchall()
            assert repeated == []
    finally:
        if sim is not None:
            sim.close()
        balancer.close()
        for replica in replicas:
            replica.stop()
        receiver.close()
