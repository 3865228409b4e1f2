"""Report ingest over real HTTP: group commit, acknowledgement after commit, status checks."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from securesystemslib.signer import CryptoSigner

from repo_server import Repository, ServerContext, ServerThread, create_app
from staging import (
    ReportOutcome,
    RolloutController,
    SqliteTrackerStore,
    SqlTrackerStore,
    StoreError,
)
from tests.conftest import PASSPHRASE, ask
from tufota_core import MAX_REPORT_BYTES, Report, sign_report


class RecordingStore(SqliteTrackerStore):
    """The real store, noting each batch; the first batch may be slow or every batch may fail."""

    def __init__(self, path: Path, *, first_delay: float = 0.0, fail: bool = False) -> None:
        super().__init__(path)
        self.batches: list[int] = []
        self.first_delay = first_delay
        self.fail = fail
        self._noted = threading.Lock()

    def record_reports(
        self, reports: Sequence[Report], received_at: datetime, *, accepted_only: bool = False
    ) -> list[ReportOutcome]:
        with self._noted:
            self.batches.append(len(reports))
            first = len(self.batches) == 1
        if first and self.first_delay:
            time.sleep(self.first_delay)  # commits queue up behind this one
        if self.fail:
            raise StoreError("tracker store: disk I/O error")
        return super().record_reports(reports, received_at, accepted_only=accepted_only)


@contextlib.contextmanager
def _serve(repo: Repository, store: SqliteTrackerStore) -> Iterator[str]:
    publisher = repo.publisher(ask)
    ctx = ServerContext(publisher, store, RolloutController(store, publisher))
    try:
        with ServerThread(create_app(ctx, background=False)) as thread:
            yield thread.url
    finally:
        store.close()


def _register(store: SqlTrackerStore, device_id: str) -> CryptoSigner:
    signer = CryptoSigner.generate_ed25519()
    public = {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}
    store.register_device(
        device_id, "gw-100", public_key=public, status="accepted", installed_version="1.0.0"
    )
    return signer


def _post(url: str, device_id: str, signer: CryptoSigner, seq: int) -> requests.Response:
    body = sign_report(Report(device_id, "gw-100", seq, "downloading", bytes_done=seq), signer)
    return requests.post(f"{url}/api/v1/devices/{device_id}/reports", json=body, timeout=10)


def test_concurrent_reports_share_a_commit_and_each_202_is_committed(
    released_repo: Repository,
) -> None:
    store = RecordingStore(released_repo.tracker_path, first_delay=0.3)
    signers = {f"dev-{n}": _register(store, f"dev-{n}") for n in range(24)}
    with _serve(released_repo, store) as url:
        with ThreadPoolExecutor(len(signers)) as pool:
            answers = list(pool.map(lambda d: _post(url, d, signers[d], 1), signers))
        assert [a.status_code for a in answers] == [202] * len(signers)
        assert {a.json()["seq"] for a in answers} == {1}
        assert all(a.json()["transition"] for a in answers)
        assert sum(store.batches) == len(signers)
        assert max(store.batches) > 1  # reports waiting behind the slow commit went together
        assert {store.get_device(d).last_seq for d in signers} == {1}


def test_revocation_refuses_the_next_report_of_a_device_whose_key_is_cached(
    released_repo: Repository,
) -> None:
    store = SqliteTrackerStore(released_repo.tracker_path)
    signer = _register(store, "dev-1")
    with _serve(released_repo, store) as url:
        assert _post(url, "dev-1", signer, 1).status_code == 202
        assert _post(url, "dev-1", signer, 1).json()["error"] == "replayed_report"
        store.set_device_status("dev-1", "revoked")
        refused = _post(url, "dev-1", signer, 2)
        assert (refused.status_code, refused.json()["error"]) == (403, "device_revoked")
        assert store.get_device("dev-1").last_seq == 1
        other = _post(url, "dev-1", CryptoSigner.generate_ed25519(), 3)
        assert (other.status_code, other.json()["error"]) == (403, "device_revoked")


def test_a_report_the_store_cannot_commit_is_not_acknowledged(released_repo: Repository) -> None:
    store = RecordingStore(released_repo.tracker_path, fail=True)
    signer = _register(store, "dev-1")
    with _serve(released_repo, store) as url:
        answer = _post(url, "dev-1", signer, 1)
        assert answer.status_code >= 500
        assert answer.json()["error"] == "store_error"
        assert store.get_device("dev-1").last_seq == 0


@pytest.mark.parametrize("size", [MAX_REPORT_BYTES + 1, 4 * MAX_REPORT_BYTES])
def test_an_oversized_report_is_refused_unread(released_repo: Repository, size: int) -> None:
    store = SqliteTrackerStore(released_repo.tracker_path)
    _register(store, "dev-1")
    with _serve(released_repo, store) as url:
        answer = requests.post(
            f"{url}/api/v1/devices/dev-1/reports", data=b"{" + b" " * size, timeout=10
        )
        assert (answer.status_code, answer.json()["error"]) == (413, "too_large")


def test_a_replica_killed_mid_stream_on_postgresql_loses_no_acknowledged_report(
    released_repo: Repository, postgres_url: str, tmp_path: Path
) -> None:
    """Two `tufota serve` on one PostgreSQL; one is SIGKILLed while 16 devices stream reports."""
    from staging import PostgresTrackerStore

    store = PostgresTrackerStore(postgres_url)
    signers = {f"dev-{n}": _register(store, f"dev-{n}") for n in range(16)}
    servers = [_serve_process(released_repo, postgres_url, tmp_path / f"s{i}.log") for i in (1, 2)]
    acked: dict[str, int] = dict.fromkeys(signers, 0)
    next_seq: dict[str, int] = dict.fromkeys(signers, 1)
    stop = threading.Event()

    def stream(device_id: str) -> None:
        url = servers[0][1]
        while not stop.is_set() and next_seq[device_id] <= 2000:
            seq = next_seq[device_id]
            try:
                answer = _post(url, device_id, signers[device_id], seq)
            except requests.RequestException:
                return  # the server died under this report: not acknowledged
            if answer.status_code == 202:
                acked[device_id] = seq
                next_seq[device_id] = seq + 1

    try:
        with ThreadPoolExecutor(len(signers)) as pool:
            futures = [pool.submit(stream, d) for d in signers]
            time.sleep(2.0)
            servers[0][0].kill()  # SIGKILL, mid-stream
            servers[0][0].wait(10)
            stop.set()
            for future in futures:
                future.result()
        assert sum(acked.values()) > 50  # the stream was really running
        for device_id, seq in acked.items():  # every 202 was committed
            assert store.get_device(device_id).last_seq >= seq
        survivor = servers[1][1]
        for device_id in signers:  # the devices resend what was not acknowledged
            last = store.get_device(device_id).last_seq
            replay = _post(survivor, device_id, signers[device_id], acked[device_id])
            if acked[device_id]:
                assert replay.json()["error"] == "replayed_report"
            fresh = _post(survivor, device_id, signers[device_id], last + 1)
            assert fresh.status_code == 202, fresh.text
        with store._tx(write=False) as conn:
            repeated = conn.execute(
                "SELECT device_id, seq FROM events WHERE kind = 'report'"
                " GROUP BY device_id, seq HAVING count(*) > 1"
            ).fetchall()
        assert repeated == []
    finally:
        for process, _url in servers:
            process.kill()
            process.wait(10)
        store.close()


def _serve_process(repo: Repository, database: str, log: Path) -> tuple[Any, str]:
    """`tufota serve` on ``repo`` and ``database`` in its own process; waits until it answers."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tufota = str(Path(sys.executable).parent / "tufota")
    with log.open("w") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [
                tufota,
                "serve",
                "--repo",
                str(repo.path),
                "--database",
                database,
                "--port",
                str(port),
            ],
            env={**os.environ, "TUFOTA_PASSPHRASE": PASSPHRASE},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if requests.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return process, url
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
