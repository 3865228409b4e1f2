"""A plant for the operator surfaces: a real repository with CVE-fixing releases, a tracker,
API tokens, the server on loopback, and devices that post real signed reports over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from securesystemslib.signer import CryptoSigner

from repo_server import (
    Repository,
    ServerContext,
    ServerThread,
    add_release_locally,
    create_app,
)
from staging import RolloutController, RolloutOptions, SqliteTrackerStore
from tests.conftest import PASSPHRASE, ask
from tufota_core import FirmwareInfo, Report, parse_wave_spec, sign_report, utcnow, wave_index

HW = "gw-100"
RELEASES = (
    FirmwareInfo(HW, "1.0.0"),
    FirmwareInfo(HW, "1.1.0", severity="high", cvss=7.5, fixes=("CVE-2026-1111",)),
    FirmwareInfo(HW, "1.2.0", severity="critical", cvss=9.8, fixes=("CVE-2026-2222",)),
)


class _Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)


class Plant:
    """The server and a fleet of devices that talk to it like real agents (signed reports)."""

    def __init__(self, repo: Repository, ctx: ServerContext, thread: ServerThread) -> None:
        self.repo = repo
        self.ctx = ctx
        self.thread = thread
        self.signers: dict[str, CryptoSigner] = {}
        self.seq: dict[str, int] = {}
        self._tokens: dict[str, str] = {}

    @property
    def url(self) -> str:
        return self.thread.url

    @property
    def store(self) -> SqliteTrackerStore:
        assert isinstance(self.ctx.store, SqliteTrackerStore)
        return self.ctx.store

    def add_device(
        self, device_id: str, *, hw: str = HW, tags: tuple[str, ...] = (), version: str = "1.0.0"
    ) -> None:
        signer = CryptoSigner.generate_ed25519()
        public = {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}
        self.ctx.store.register_device(
            device_id,
            hw,
            public_key=public,
            tags=tags,
            status="accepted",
            installed_version=version,
        )
        self.signers[device_id] = signer
        self.seq[device_id] = 0

    def report(self, device_id: str, state: str, **fields: Any) -> requests.Response:
        """Sign a report as the device and POST it; asserts the server accepted it."""
        self.seq[device_id] += 1
        hw = self.ctx.store.get_device(device_id).hardware_id
        report = Report(device_id, hw, self.seq[device_id], state, **fields)
        response = requests.post(
            f"{self.url}/api/v1/devices/{device_id}/reports",
            json=sign_report(report, self.signers[device_id]),
            timeout=10,
        )
        assert response.status_code == 202, response.text
        return response

    def start(self, version: str = "1.2.0", waves: str = "canary:tag=canary,100%") -> str:
        target = f"firmware/{HW}/{version}/{HW}-{version}.img"
        doc = self.ctx.controller.start(
            HW,
            version,
            target,
            parse_wave_spec(waves),
            RolloutOptions(success_threshold=1.0, failure_threshold=0.5),
        )
        return doc.rollout_id

    def backfill(self, device_id: str, state: str, at: datetime, **fields: Any) -> None:
        """Record a report as received at ``at`` (history for charts), through the real store."""
        self.seq[device_id] += 1
        hw = self.ctx.store.get_device(device_id).hardware_id
        self.ctx.store.record_report(
            Report(device_id, hw, self.seq[device_id], state, **fields), at
        )

    def story(self) -> str:
        """A rollout an hour in: canary and a 25% wave done, the last wave under way.

        40 devices; the canary (4, tagged) succeeded, the 25% wave had one
        rollback, the 100% wave has devices downloading, one failed health
        check, one stalled download and two that never checked in. Returns
        the rollout id.
        """
        now = utcnow()
        clock = _Clock(now - timedelta(minutes=60))
        controller = RolloutController(self.ctx.store, self.ctx.publisher, clock=clock)
        for i in range(40):
            version = "1.1.0" if i % 4 == 1 else "1.0.0"
            self.add_device(f"plc-{i:03d}", tags=("canary",) if i < 4 else (), version=version)
        doc = controller.start(
            HW,
            "1.2.0",
            f"firmware/{HW}/1.2.0/{HW}-1.2.0.img",
            parse_wave_spec("canary:tag=canary,25%,100%"),
            RolloutOptions(success_threshold=0.8, failure_threshold=0.3),
        )
        rid = doc.rollout_id
        work = {"target_version": "1.2.0", "rollout_id": rid}
        members: dict[int, list[str]] = {0: [], 1: [], 2: []}
        for device in self.ctx.store.list_devices(HW):
            index = wave_index(rid, list(doc.waves), device.device_id, device.tags)
            assert index is not None
            members[index].append(device.device_id)

        def at(minutes_ago: float) -> datetime:
            clock.now = now - timedelta(minutes=minutes_ago)
            return clock.now

        for n, device_id in enumerate(members[0]):
            self.backfill(device_id, "downloading", at(58 - 2 * n), **work)
            self.backfill(device_id, "succeeded", at(57 - 2 * n), installed_version="1.2.0", **work)
        at(47)
        controller.tick()  # the 25% wave opens
        for n, device_id in enumerate(members[1]):
            self.backfill(device_id, "downloading", at(45 - 3 * n), **work)
            if n == 2:
                fields = {"error_code": "boot_failed", "message": "new slot did not boot"}
                self.backfill(device_id, "rolled_back", at(44 - 3 * n), **fields, **work)
            else:
                self.backfill(
                    device_id, "succeeded", at(44 - 3 * n), installed_version="1.2.0", **work
                )
        at(25)
        controller.tick()  # the last wave opens
        for n, device_id in enumerate(members[2]):
            minutes_ago = 20 - n * 18 / len(members[2])
            if n in (5, 11):
                continue  # never checked in
            if n == 3:
                self.backfill(device_id, "downloading", at(22), **work)  # stalled
            elif n == 8:
                fields = {"error_code": "health_check", "message": "modbus did not start in 120 s"}
                self.backfill(device_id, "downloading", at(minutes_ago), **work)
                self.backfill(device_id, "failed", at(minutes_ago - 0.5), **fields, **work)
            elif n > len(members[2]) // 2 and n % 3:
                self.backfill(device_id, "downloading", at(minutes_ago), **work)
            else:
                self.backfill(device_id, "downloading", at(minutes_ago), **work)
                self.backfill(
                    device_id, "succeeded", at(minutes_ago - 1), installed_version="1.2.0", **work
                )
        return rid

    def token(self, role: str) -> str:
        assert self.ctx.tokens is not None
        return self.ctx.tokens.create(f"test-{role}", role)

    def auth(self, role: str = "viewer") -> dict[str, str]:
        """An ``Authorization`` header with a token of ``role`` (one token per role)."""
        if role not in self._tokens:
            self._tokens[role] = self.token(role)
        return {"Authorization": f"Bearer {self._tokens[role]}"}

    def stop_server(self) -> None:
        """Stop the server (the port stays reserved for ``start_server``)."""
        self.thread.stop()

    def start_server(self) -> None:
        """Start a new server on the same port, as a service restart would."""
        self.thread = ServerThread(
            create_app(self.ctx, background=False), port=self.thread.port
        ).start()


def make_repo(root: Path) -> Repository:
    repo = Repository.create(root / "repo", PASSPHRASE)
    for info in RELEASES:
        image = root / f"{info.hardware_id}-{info.version}.img"
        image.write_bytes(f"firmware {info.version}\n".encode() * 512)
        add_release_locally(repo, image, info, ask)
    return repo


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[Plant]:
    """A server on loopback with tokens, releases 1.0.0-1.2.0 of gw-100 and no devices yet."""
    repo = make_repo(tmp_path)
    publisher = repo.publisher(ask)
    store = SqliteTrackerStore(repo.tracker_path)
    ctx = ServerContext(
        publisher, store, RolloutController(store, publisher), tokens=repo.token_store()
    )
    plant = Plant(repo, ctx, ServerThread(create_app(ctx, background=False)).start())
    try:
        yield plant
    finally:
        plant.thread.stop()
        store.close()
