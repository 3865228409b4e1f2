"""Test doubles for staging: a fake clock, a recording publisher, a device fleet driver."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from staging import PostgresTrackerStore, SqliteTrackerStore, SqlTrackerStore
from tufota_core import Report, RolloutDoc, TransportError

HW = "gw-100"
START = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)


class RecordingPublisher:
    """An in-memory repository: remembers every document it was asked to publish."""

    def __init__(self) -> None:
        self.docs: list[RolloutDoc] = []
        self.fail = False

    def publish_rollout(self, doc: RolloutDoc) -> None:
        if self.fail:
            raise TransportError("repository unreachable")
        # What a device would read back must parse as what was published.
        assert RolloutDoc.from_bytes(doc.to_bytes()) == doc
        self.docs.append(doc)

    @property
    def last(self) -> RolloutDoc:
        return self.docs[-1]


class Devices:
    """Registers devices and sends reports with increasing sequence numbers."""

    def __init__(self, store: SqliteTrackerStore, clock: FakeClock) -> None:
        self.store = store
        self.clock = clock
        self.seq: dict[str, int] = {}

    def add(
        self,
        count: int,
        *,
        prefix: str = "dev",
        hardware_id: str = HW,
        tags: tuple[str, ...] = (),
        version: str = "1.0.0",
    ) -> list[str]:
        ids = []
        for i in range(count):
            device_id = f"{prefix}-{i:04d}"
            self.store.register_device(
                device_id,
                hardware_id,
                public_key={"keytype": "ed25519", "keyval": {"public": device_id}},
                tags=tags,
                status="accepted",
                installed_version=version,
                at=self.clock(),
            )
            ids.append(device_id)
        return ids

    def report(
        self,
        device_id: str,
        state: str,
        *,
        installed: str | None = None,
        target: str | None = None,
        rollout_id: str | None = None,
        error_code: str | None = None,
        hardware_id: str = HW,
    ) -> bool:
        seq = self.seq.get(device_id, 0) + 1
        self.seq[device_id] = seq
        report = Report(
            device_id=device_id,
            hardware_id=hardware_id,
            seq=seq,
            state=state,
            installed_version=installed,
            target_version=target,
            rollout_id=rollout_id,
            error_code=error_code,
        )
        return self.store.record_report(report, self.clock())

    def succeed(self, device_ids: list[str], version: str, rollout_id: str) -> None:
        for device_id in device_ids:
            self.report(
                device_id, "succeeded", installed=version, target=version, rollout_id=rollout_id
            )


class WebhookReceiver:
    """Loopback HTTP server keeping JSON POSTs; the first ``fail`` posts get ``fail_with``."""

    def __init__(self, fail: int = 0, fail_with: int = 503) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.bodies: list[dict[str, object]] = []
        self.attempts = 0
        self.fail = fail
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.attempts += 1
                if outer.fail > 0:
                    outer.fail -= 1
                    self.send_response(fail_with)
                    self.end_headers()
                    return
                outer.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def kinds(self, event: str = "opened") -> list[str]:
        return [b["alert"]["kind"] for b in self.bodies if b["event"] == event]  # type: ignore[index]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def reopen(store: SqlTrackerStore) -> SqlTrackerStore:
    """A second store object on the same database, as another process would open it."""
    if isinstance(store, PostgresTrackerStore):
        return PostgresTrackerStore(store._url)
    assert isinstance(store, SqliteTrackerStore)
    return SqliteTrackerStore(store._path)
