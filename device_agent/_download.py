"""One-pass, resumable, verified downloads of a TUF target file.

The orchestrator gets a ``TargetFile`` from ngclient (length and hashes,
verified through the delegation chain) and asks :class:`Downloader` to put
exactly those bytes at ``dest``. The body is streamed once: the receiving
thread writes each chunk to ``dest.part`` while a second thread hashes the same
chunk, so nothing is read back from disk and nothing is held in memory beyond
``download_queue_depth`` chunks.

Invariants:
* ``dest`` appears (fsync, then ``os.replace``) only after the byte count
  equals the signed length and every signed hash matched. Unverified bytes
  only ever live in ``dest.part``.
* No more than the signed length is ever written: a stream that goes on is cut
  at the first extra byte and the partial file discarded
  (``target_length_mismatch``); a stream whose hash does not match is discarded
  (``target_hash_mismatch``).
* ``dest.part`` only ever holds a prefix of the target named in its sidecar
  ``dest.part.json`` (length, hashes, and the server's ETag). A partial of
  another target is deleted, never continued; a resumed transfer asks for
  ``Range: bytes=N-`` with ``If-Range: <ETag>``, and a server that answers
  200 (file changed, or no range support) restarts the file from byte 0.
* After a resumed transfer fails its hash check, the prefix on disk may be the
  corrupt part (a power cut can leave garbage in unsynced blocks), so the
  download is retried once from byte 0 before the target is declared bad.
* A network failure, a stall (``SlowRetrievalError``: fewer than
  ``min_bytes_per_second`` over ``slow_window`` seconds) or an exhausted data
  budget keep the partial file, fsynced, for the next attempt, and raise
  ``TransportError``.
* Bytes fetched count against the optional data budget
  (``state_dir/budget.json``), which is saved at least every
  ``budget_save_bytes``; a crash can under-count by at most that much.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import requests
from tuf.api.metadata import TargetFile

from device_agent import _faults
from device_agent._config import AgentLimits
from device_agent._errors import (
    DATA_BUDGET_EXHAUSTED,
    DOWNLOAD_FAILED,
    FIRMWARE_INFO_INVALID,
    SERVER_UNREACHABLE,
    SLOW_RETRIEVAL,
    TARGET_HASH_MISMATCH,
    TARGET_LENGTH_MISMATCH,
    coded,
)
from device_agent._fs import atomic_write_json, fsync_dir, read_json
from device_agent._pace import DataBudget, StallGuard, Throttle
from tufota_core import RepositoryError, TransportError, TufotaError, VerificationError

logger = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_BLAKE2B_256 = "blake2b-256"  # securesystemslib's name for BLAKE2b with a 32-byte digest
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Expected:
    """What the signed metadata says the bytes must be."""

    length: int
    hashes: Mapping[str, str]

    @classmethod
    def from_target(cls, info: TargetFile) -> Expected:
        return cls(info.length, dict(info.hashes))

    @property
    def sha256(self) -> str | None:
        return self.hashes.get("sha256")

    def to_json(self) -> dict[str, Any]:
        return {"length": self.length, "hashes": dict(sorted(self.hashes.items()))}


@dataclass(frozen=True)
class DownloadResult:
    """What :meth:`Downloader.fetch` did.

    Attributes:
        path: The verified file (``dest``).
        sha256: Its SHA-256, hex.
        fetched: Bytes received from the source by this call.
        resumed_from: Offset the transfer resumed from (0: from the start).
        reused: True when ``dest`` already held the verified bytes.
    """

    path: Path
    sha256: str
    fetched: int
    resumed_from: int = 0
    reused: bool = False


def _new_hasher(name: str) -> Any:
    try:
        if name == _BLAKE2B_256:
            return hashlib.blake2b(digest_size=32)
        return hashlib.new(name)
    except ValueError:
        raise coded(
            VerificationError(f"target hash algorithm {name!r} is not supported"),
            FIRMWARE_INFO_INVALID,
        ) from None


def hashers_for(expected: Expected) -> dict[str, Any]:
    """One hash object per signed algorithm, plus SHA-256 (the slot bookkeeping hash)."""
    if not expected.hashes:
        raise coded(VerificationError("target has no hashes"), FIRMWARE_INFO_INVALID)
    names = {*expected.hashes, "sha256"}
    return {name: _new_hasher(name) for name in sorted(names)}


def file_matches(path: Path, expected: Expected, chunk_size: int = 1024 * 1024) -> str | None:
    """SHA-256 of ``path`` when its length and every hash match ``expected``, else None."""
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size != expected.length:
                return None
            hashers = hashers_for(expected)
            while chunk := f.read(chunk_size):
                for h in hashers.values():
                    h.update(chunk)
    except OSError:
        return None
    if any(hashers[n].hexdigest() != v for n, v in expected.hashes.items()):
        return None
    digest: str = hashers["sha256"].hexdigest()
    return digest


# -- sources -------------------------------------------------------------------


@dataclass
class Opened:
    """An open response body.

    Attributes:
        offset: The byte offset the body starts at (0 when a range was not honoured).
        chunks: The body; raises ``TransportError`` on network failure.
        validator: The server's strong ETag, if any, to send as ``If-Range`` later.
        close: Releases the connection.
    """

    offset: int
    chunks: Iterator[bytes]
    validator: str | None
    close: Callable[[], None]


class ByteSource(ABC):
    """Where target bytes come from: HTTP(S), or a local bundle directory."""

    @abstractmethod
    def open(self, url: str, offset: int, validator: str | None) -> Opened:
        """Open ``url`` from ``offset`` (0: whole file).

        Raises:
            TransportError: the source is unreachable or answered with an error.
        """


class HttpSource(ByteSource):
    """Ranged GETs over a ``requests.Session`` (timeouts from ``AgentLimits``)."""

    def __init__(self, session: requests.Session, limits: AgentLimits) -> None:
        self._session = session
        self._limits = limits

    def _get(self, url: str, headers: dict[str, str]) -> requests.Response:
        timeout = (self._limits.connect_timeout, self._limits.read_timeout)
        try:
            return self._session.get(url, headers=headers, stream=True, timeout=timeout)
        except requests.Timeout as e:
            raise coded(TransportError(f"timed out fetching {url}"), SLOW_RETRIEVAL) from e
        except requests.RequestException as e:
            raise coded(TransportError(f"cannot fetch {url}: {e}"), SERVER_UNREACHABLE) from e

    def open(self, url: str, offset: int, validator: str | None) -> Opened:
        # Identity encoding: the signed length and hashes are of the raw bytes.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if validator:
                headers["If-Range"] = validator
        response = self._get(url, headers)
        if response.status_code == 416 and offset:
            # Our partial is not a prefix of what the server has now: start over.
            response.close()
            return self.open(url, 0, None)
        if response.status_code >= 400:
            response.close()
            raise coded(
                TransportError(f"GET {url} answered HTTP {response.status_code}"), DOWNLOAD_FAILED
            )
        start = 0
        if response.status_code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                response.close()
                raise coded(
                    TransportError(
                        f"GET {url}: Content-Range {response.headers.get('Content-Range')!r} "
                        f"does not start at {offset}"
                    ),
                    DOWNLOAD_FAILED,
                )
            start = offset
        elif response.status_code != 200:
            response.close()
            raise coded(
                TransportError(f"GET {url} answered HTTP {response.status_code}"), DOWNLOAD_FAILED
            )
        etag = response.headers.get("ETag")
        strong = etag if etag and not etag.startswith("W/") else None
        return Opened(start, self._chunks(url, response), strong, response.close)

    def _chunks(self, url: str, response: requests.Response) -> Iterator[bytes]:
        # read1 returns what has arrived (up to the chunk size) instead of
        # waiting for a full chunk, so a trickling server is noticed in time.
        raw = response.raw
        size = self._limits.download_chunk_size
        try:
            while chunk := raw.read1(size):
                yield chunk
        except requests.Timeout as e:
            raise coded(TransportError(f"timed out reading {url}"), SLOW_RETRIEVAL) from e
        except Exception as e:  # urllib3 and socket errors, whatever their class
            if isinstance(e, TufotaError):
                raise
            raise coded(
                TransportError(f"connection lost reading {url}: {type(e).__name__}: {e}"),
                SERVER_UNREACHABLE,
            ) from e


class FileSource(ByteSource):
    """``file://`` URLs (offline bundles), with the same offset semantics as HTTP ranges."""

    def __init__(self, chunk_size: int) -> None:
        self._chunk = chunk_size

    def open(self, url: str, offset: int, validator: str | None) -> Opened:
        path = Path(url_to_path(url))
        try:
            f = path.open("rb")
        except OSError as e:
            raise coded(TransportError(f"cannot open {path}: {e}"), DOWNLOAD_FAILED) from e
        size = os.fstat(f.fileno()).st_size
        start = offset if 0 < offset <= size else 0
        f.seek(start)

        def chunks() -> Iterator[bytes]:
            try:
                while chunk := f.read(self._chunk):
                    yield chunk
            except OSError as e:
                raise coded(TransportError(f"cannot read {path}: {e}"), DOWNLOAD_FAILED) from e

        return Opened(start, chunks(), None, f.close)


def url_to_path(url: str) -> str:
    """The local path of a ``file://`` URL (percent-decoded)."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise coded(TransportError(f"{url} is not a local file:// URL"), DOWNLOAD_FAILED)
    return unquote(parsed.path)


# -- the downloader ------------------------------------------------------------------


class _HashThread:
    """Hashes chunks in order on a worker thread (hashlib releases the GIL)."""

    def __init__(self, hashers: dict[str, Any], depth: int) -> None:
        self.hashers = hashers
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="tufota-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        hashers = list(self.hashers.values())
        while (chunk := self._queue.get()) is not None:
            for h in hashers:
                h.update(chunk)

    def put(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def finish(self) -> dict[str, str]:
        self._queue.put(None)
        self._thread.join()
        return {name: h.hexdigest() for name, h in self.hashers.items()}

    def __enter__(self) -> _HashThread:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class _RestartError(Exception):
    """Internal: the partial file was not a good prefix; start again from byte 0."""


class Downloader:
    """Fetches one verified target file at a time (see the module docstring)."""

    def __init__(
        self,
        source: ByteSource,
        limits: AgentLimits,
        *,
        rate_limit: int = 0,
        budget: DataBudget | None = None,
        progress: ProgressCallback | None = None,
        resume: bool = True,
    ) -> None:
        """Prepare a downloader.

        Args:
            source: Where bytes come from.
            limits: Chunk size, queue depth and stall limits.
            rate_limit: Average bytes per second not to exceed (0: no cap).
            budget: Data budget to charge and obey, if any.
            progress: Called with (bytes on disk, total) after each chunk.
            resume: Keep partial files after a network failure and continue them.
        """
        self._source = source
        self._limits = limits
        self._rate = rate_limit
        self._budget = budget
        self._progress = progress
        self._resume = resume

    def fetch(self, url: str, expected: Expected, dest: Path) -> DownloadResult:
        """Put the verified target at ``dest``; reuse a verified ``dest``; resume a partial.

        Raises:
            VerificationError: ``target_length_mismatch`` or ``target_hash_mismatch``
                (nothing kept), ``firmware_info_invalid`` (unsupported hash).
            TransportError: ``server_unreachable``, ``download_failed``,
                ``slow_retrieval`` or ``data_budget_exhausted`` (the partial is kept
                when resuming is on).
            RepositoryError: the local disk cannot be written.
        """
        hashers_for(expected)  # unsupported algorithm: fail before any I/O
        sha256 = file_matches(dest, expected, self._limits.download_chunk_size)
        if sha256 is not None:
            logger.debug("reusing verified %s", dest)
            return DownloadResult(dest, sha256, 0, reused=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        fetched = 0
        for attempt in (1, 2):
            try:
                result = self._attempt(url, expected, dest)
            except _RestartError as e:
                fetched += e.args[0]
                if attempt == 1:
                    logger.warning("resumed download of %s failed its hash check; refetching", url)
                    continue
                raise AssertionError("unreachable") from None  # pragma: no cover
            return DownloadResult(dest, result[0], fetched + result[1], result[2])
        raise AssertionError("unreachable")  # pragma: no cover

    # -- one attempt ---------------------------------------------------------------

    def _paths(self, dest: Path) -> tuple[Path, Path]:
        return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")

    def _resume_point(self, expected: Expected, part: Path, meta: Path) -> tuple[int, str | None]:
        """Bytes of ``part`` that may continue, and the ETag they came with."""
        if not self._resume:
            return 0, None
        try:
            info = read_json(meta)
            size = part.stat().st_size
        except (FileNotFoundError, RepositoryError):
            return 0, None
        if not isinstance(info, dict) or info.get("expected") != expected.to_json():
            return 0, None
        if size >= expected.length:
            return 0, None
        etag = info.get("etag")
        return size, etag if isinstance(etag, str) else None

    def _discard(self, part: Path, meta: Path) -> None:
        for path in (part, meta):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _attempt(self, url: str, expected: Expected, dest: Path) -> tuple[str, int, int]:
        part, meta = self._paths(dest)
        offset, etag = self._resume_point(expected, part, meta)
        if offset == 0:
            self._discard(part, meta)
        if self._budget is not None and self._budget.remaining <= 0:
            raise coded(
                TransportError("the data budget for this period is used up"),
                DATA_BUDGET_EXHAUSTED,
            )
        opened = self._source.open(url, offset, etag)
        fetched = 0
        try:
            if opened.offset != offset:
                logger.info("server sent %s from byte %d; starting over", url, opened.offset)
                offset = opened.offset
            if self._resume:
                atomic_write_json(meta, {"expected": expected.to_json(), "etag": opened.validator})
            with (
                _HashThread(hashers_for(expected), self._limits.download_queue_depth) as hasher,
                _open_part(part, offset) as out,
            ):
                if offset:
                    logger.info("resuming %s at byte %d of %d", url, offset, expected.length)
                    self._hash_prefix(part, offset, hasher)
                try:
                    fetched = self._stream(url, opened, expected, out, hasher, offset)
                except TransportError:
                    out.flush()
                    os.fsync(out.fileno())
                    if not self._resume:
                        self._discard(part, meta)
                    raise
                except BaseException:
                    self._discard(part, meta)
                    raise
                out.flush()
                os.fsync(out.fileno())
                digests = hasher.finish()
        except OSError as e:
            raise RepositoryError(f"cannot write {part}: {e}") from e
        finally:
            opened.close()
            if self._budget is not None:
                self._budget.save()
        bad = [n for n, v in expected.hashes.items() if digests[n] != v]
        if bad:
            self._discard(part, meta)
            if offset:
                raise _RestartError(fetched)
            raise coded(
                VerificationError(f"{url}: {', '.join(bad)} does not match the signed hash"),
                TARGET_HASH_MISMATCH,
            )
        _faults.point("download.verified")
        os.replace(part, dest)
        with contextlib.suppress(FileNotFoundError):
            meta.unlink()
        fsync_dir(dest.parent)
        return digests["sha256"], fetched, offset

    def _hash_prefix(self, part: Path, offset: int, hasher: _HashThread) -> None:
        left = offset
        with part.open("rb") as f:
            while left > 0 and (chunk := f.read(min(self._limits.download_chunk_size, left))):
                hasher.put(chunk)
                left -= len(chunk)

    def _stream(
        self,
        url: str,
        opened: Opened,
        expected: Expected,
        out: IO[bytes],
        hasher: _HashThread,
        offset: int,
    ) -> int:
        total = expected.length
        done = offset
        throttle = Throttle(self._rate)
        guard = StallGuard(self._limits.min_bytes_per_second, self._limits.slow_window)
        budget = self._budget
        fetched = 0
        for chunk in opened.chunks:
            n = len(chunk)
            if done + n > total:
                raise coded(
                    VerificationError(f"{url} sent more than the signed {total} bytes"),
                    TARGET_LENGTH_MISMATCH,
                )
            _write_all(out, chunk)
            hasher.put(chunk)
            done += n
            fetched += n
            _faults.point("download.chunk")
            if budget is not None:
                budget.charge(n)
            if self._progress is not None:
                self._progress(done, total)
            if (slow := guard.account(n)) is not None:
                raise coded(TransportError(f"{url} is too slow: {slow}"), SLOW_RETRIEVAL)
            throttle.account(n)
            if budget is not None and budget.remaining <= 0 and done < total:
                raise coded(
                    TransportError(
                        f"the data budget for this period is used up at {done} of {total} bytes"
                    ),
                    DATA_BUDGET_EXHAUSTED,
                )
        if done != total:
            # The body ended cleanly (a cut connection raises above, as urllib3
            # enforces Content-Length): the server's file is not the signed one.
            raise coded(
                VerificationError(f"{url} is {done} bytes, not the signed {total}"),
                TARGET_LENGTH_MISMATCH,
            )
        return fetched


@contextlib.contextmanager
def _open_part(part: Path, offset: int) -> Iterator[IO[bytes]]:
    fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        f = os.fdopen(fd, "wb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def _write_all(out: IO[bytes], data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = out.write(view)
        view = view[written or 0 :]
