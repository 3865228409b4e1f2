"""Signed report ingest: verify in the event loop, commit in batches on one writer thread.

Invariants:

* A report is acknowledged (202) only after the transaction holding it
  committed (``TrackerStore.record_reports``; SQLite WAL with
  ``synchronous=FULL``). Requests that arrive while a batch commits wait for
  the next one, so one fsync covers many reports (group commit); no report
  waits for a timer.
* Every report's signature is verified against the device's registered key
  before it is queued. Parsed keys are cached by device id: a device's key
  never changes (a device id is registered once). Registration status is not
  cached: the writer reads it in the same transaction that applies the report,
  so a revocation committed before the batch refuses the report.
* Answers keep the order of checks of the plain route: malformed (400), then
  unknown device (401), revoked or pending (403), bad signature (401), replay
  (409). The fast path (cached key, good signature) only skips work whose
  outcome is already known; any failure there re-runs the checks in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from securesystemslib.signer import SSlibKey
from starlette.types import ASGIApp, Receive, Scope, Send

from repo_server._errors import status_for
from staging import ReportOutcome, TrackerStore
from tufota_core import (
    MAX_REPORT_BYTES,
    InputError,
    NotFoundError,
    Report,
    TufotaError,
    VerificationError,
    check_device_id,
    parse_envelope,
    utcnow,
    verify_report,
)

logger = logging.getLogger(__name__)

MAX_BATCH = 2048
MAX_CACHED_KEYS = 200_000

_MISMATCH = "report device_id does not match the URL"
_STATUS_BY_OUTCOME = {
    "unknown": (401, "unknown_device"),
    "revoked": (403, "device_revoked"),
    "pending": (403, "device_pending"),
    "replayed": (409, "replayed_report"),
    "wrong_hardware": (400, "bad_input"),
}


class BodyTooLargeError(Exception):
    """A request body went past its cap; reading stopped there."""


async def read_capped_body(receive: Receive, cap: int) -> bytes | None:
    """The whole ASGI request body, or None when the client went away.

    Raises:
        BodyTooLargeError: more than ``cap`` bytes; nothing past the cap is kept.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def error_body(code: str, message: str) -> bytes:
    """The JSON error body every route answers with (``_errors``)."""
    return json.dumps({"error": code, "message": message}).encode()


class _DeviceKey(SSlibKey):
    """An ``SSlibKey`` that parses its public key once instead of at every verification."""

    _parsed: PublicKeyTypes | None = None

    def _crypto_key(self) -> PublicKeyTypes:
        if self._parsed is None:
            self._parsed = super()._crypto_key()
        return self._parsed


def parse_device_key(public_key: Any) -> SSlibKey:
    """A device's registered key (``{"keyid": ..., **SSlibKey.to_dict()}``), parsed once.

    Raises:
        ValueError, KeyError, TypeError: the stored key is unusable.
    """
    data = dict(public_key)
    keyid = str(data.pop("keyid", ""))
    key = _DeviceKey.from_dict(keyid, data)
    key._crypto_key()  # a key that cannot be parsed fails here, not at each report
    return key


class _RefusedError(Exception):  # an answer, not a failure
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ReportWriter:
    """One thread applying queued reports in batches, one transaction per batch.

    ``submit`` is called from event loops (any number of them: each future is
    resolved on its own loop); the thread starts at the first report.
    """

    def __init__(self, store: TrackerStore, max_batch: int = MAX_BATCH) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: deque[tuple[Report, asyncio.Future[ReportOutcome]]] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def submit(self, report: Report) -> ReportOutcome:
        """Queue a verified report; return its outcome once its batch committed.

        Raises:
            StoreError: the batch could not be committed (nothing of it was).
        """
        future: asyncio.Future[ReportOutcome] = asyncio.get_running_loop().create_future()
        with self._wake:
            if self._closed:
                raise RuntimeError("the report writer is stopped")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tufota-report-writer", daemon=True
                )
                self._thread.start()
            self._queue.append((report, future))
            if len(self._queue) == 1:
                self._wake.notify()
        return await future

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop the thread (the next report starts a new one)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._wake:
            self._closed = False
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if not self._queue:
                    return
                count = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(count)]
            self._commit(batch)

    def _commit(self, batch: list[tuple[Report, asyncio.Future[ReportOutcome]]]) -> None:
        reports = [report for report, _future in batch]
        results: list[ReportOutcome | BaseException]
        try:
            results = list(self._store.record_reports(reports, utcnow(), accepted_only=True))
        except Exception as e:
            if len(batch) > 1:  # one poisoned report must not refuse its batch-mates
                for item in batch:
                    self._commit([item])
                return
            results = [e]
        by_loop: dict[
            asyncio.AbstractEventLoop,
            list[tuple[asyncio.Future[ReportOutcome], ReportOutcome | BaseException]],
        ] = {}
        for (_report, future), result in zip(batch, results, strict=True):
            by_loop.setdefault(future.get_loop(), []).append((future, result))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these
                loop.call_soon_threadsafe(_resolve, items)


def _resolve(
    items: list[tuple[asyncio.Future[ReportOutcome], ReportOutcome | BaseException]],
) -> None:
    for future, result in items:
        if future.done():  # the request was cancelled (client gone)
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class ReportIngestor:
    """Checks, verifies and commits one signed report; answers ``(status, JSON body)``."""

    def __init__(self, store: TrackerStore, max_cached_keys: int = MAX_CACHED_KEYS) -> None:
        self._store = store
        self._keys: dict[str, SSlibKey] = {}
        self._max_cached_keys = max_cached_keys
        self.writer = ReportWriter(store)

    def close(self) -> None:
        self.writer.close()

    async def ingest(self, device_id: str, body: bytes) -> tuple[int, bytes]:
        """Handle ``POST /api/v1/devices/{device_id}/reports`` with ``body``."""
        try:
            report = await self._verified(device_id, body)
            outcome = await self.writer.submit(report)
        except _RefusedError as e:
            return e.status, error_body(e.code, e.message)
        except TufotaError as e:  # the store failed: nothing of the batch was committed
            status = status_for(e)
            logger.error("report of %s not recorded: %s", device_id, e)
            return status, error_body(e.code, str(e))
        if outcome.applied:
            transition = "true" if outcome.transition else "false"
            return 202, b'{"accepted":true,"seq":%d,"transition":%s}' % (
                report.seq,
                transition.encode(),
            )
        status, code = _STATUS_BY_OUTCOME[outcome.result]
        return status, error_body(code, outcome.message)

    async def _verified(self, device_id: str, body: bytes) -> Report:
        if len(body) > MAX_REPORT_BYTES:
            raise _RefusedError(413, "too_large", f"a report is at most {MAX_REPORT_BYTES} bytes")
        try:
            envelope = json.loads(body)
        except ValueError as e:
            raise _RefusedError(400, "bad_request", f"report body is not JSON: {e}") from None
        except RecursionError:  # "[[[[..." within the size cap
            raise _RefusedError(400, "bad_request", "report body nests too deeply") from None
        key = self._keys.get(device_id)
        if key is not None:
            try:
                report = verify_report(envelope, key)
            except (InputError, VerificationError):
                pass  # answer as the full sequence of checks says
            else:
                if report.device_id != device_id:
                    raise _RefusedError(400, "bad_report", _MISMATCH)
                return report
        return await self._checked(device_id, envelope)

    async def _checked(self, device_id: str, envelope: Any) -> Report:
        """Every check in order: a cache miss (first report of a device) or a refusal."""
        try:
            check_device_id(device_id)
            report, _sig = parse_envelope(envelope)
        except InputError as e:
            raise _RefusedError(400, "bad_report", str(e)) from None
        if report.device_id != device_id:
            raise _RefusedError(400, "bad_report", _MISMATCH)
        status, key = await asyncio.to_thread(self._load, device_id)
        if len(self._keys) >= self._max_cached_keys:
            self._keys.pop(next(iter(self._keys)))  # the oldest entry
        self._keys[device_id] = key
        if status == "revoked":
            raise _RefusedError(403, "device_revoked", f"device {device_id} is revoked")
        if status != "accepted":
            raise _RefusedError(403, "device_pending", f"device {device_id} is not accepted yet")
        try:
            return verify_report(envelope, key)
        except VerificationError as e:
            raise _RefusedError(401, "bad_signature", str(e)) from None

    def _load(self, device_id: str) -> tuple[str, SSlibKey]:
        try:
            device = self._store.get_device(device_id)
        except NotFoundError:
            raise _RefusedError(
                401, "unknown_device", f"device {device_id} is not registered"
            ) from None
        try:
            key = parse_device_key(device.public_key)
        except (ValueError, KeyError, TypeError) as e:
            raise _RefusedError(500, "bad_device_key", f"registered key is unusable: {e}") from None
        return device.status, key


_PREFIX = "/api/v1/devices/"
_SUFFIX = "/reports"
_JSON_HEADERS = [(b"content-type", b"application/json")]


class ReportFastPath:
    """Pure ASGI middleware answering ``POST /api/v1/devices/{device_id}/reports`` itself.

    A report is the one request a whole fleet sends at a high rate, so it skips
    the framework's routing, dependency solving and response wrapping; the
    FastAPI route of the same path documents it (OpenAPI) and answers through
    the same ``ReportIngestor``. Middlewares outside this one (error handler,
    ingest metrics) still see every report.
    """

    def __init__(self, app: ASGIApp, ingestor: Callable[[], ReportIngestor]) -> None:
        self.app = app
        self._ingestor = ingestor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
                device_id = path[len(_PREFIX) : -len(_SUFFIX)]
                if device_id and "/" not in device_id:
                    await self._answer(device_id, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(self, device_id: str, receive: Receive, send: Send) -> None:
        try:
            body = await read_capped_body(receive, MAX_REPORT_BYTES)
        except BodyTooLargeError:  # stop reading: the answer is known
            status, payload = (
                413,
                error_body("too_large", f"a report is at most {MAX_REPORT_BYTES} bytes"),
            )
        else:
            if body is None:
                return
            status, payload = await self._ingestor().ingest(device_id, body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", b"%d" % len(payload))],
            }
        )
        await send({"type": "http.response.body", "body": payload})
