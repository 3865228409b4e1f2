"""One-pass, resumable, verified downloads of a TUF target file.

The orchestrator gets a ``TargetFile`` from ngclient (length and hashes,
verified through the delegation chain) and asks :class:`Downloader` to put
exactly those bytes at ``dest``. The body is streamed once: each chunk is
received into one of ``download_queue_depth`` reusable buffers, written to
``dest.part`` and hashed (in the receiving thread, or on a second one when
there are several buffers), so nothing is read back from disk and nothing is
held in memory beyond those buffers.

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
  ``budget_save_bytes``; a crash can under-count by at most that much. No read
  asks for more than the budget has left.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import io
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
import urllib3
from tuf.api.metadata import TargetFile

from device_agent import _faults
from device_agent._config import AgentLimits
from device_agent._errors import (
    DATA_BUDGET_EXHAUSTED,
    DISK_FULL,
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
from tufota_core import InstallError, RepositoryError, TransportError, VerificationError

logger = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_BLAKE2B_256 = "blake2b-256"  # securesystemslib's name for BLAKE2b with a 32-byte digest
ProgressCallback = Callable[[int, int], None]
Reader = Callable[[memoryview], int]


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
        readinto: Reads the next bytes of the body into the buffer it is given and
            returns how many: as soon as some arrived (at least 1, at most the
            buffer's length), 0 at the end of the body. Raises ``TransportError``
            on network failure.
        validator: The server's strong ETag, if any, to send as ``If-Range`` later.
        close: Releases the connection.
    """

    offset: int
    readinto: Reader
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
        return Opened(start, self._reader(url, response), strong, response.close)

    def _reader(self, url: str, response: requests.Response) -> Reader:
        read = _body_reader(response)

        def readinto(buffer: memoryview) -> int:
            try:
                return read(buffer)
            except (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError) as e:
                raise coded(TransportError(f"timed out reading {url}"), SLOW_RETRIEVAL) from e
            except Exception as e:  # urllib3 and socket errors, whatever their class
                raise coded(
                    TransportError(f"connection lost reading {url}: {type(e).__name__}: {e}"),
                    SERVER_UNREACHABLE,
                ) from e

        return readinto


def _body_reader(response: requests.Response) -> Reader:
    """Read what has arrived of ``response``'s body, straight into the caller's buffer.

    A body with a ``Content-Length`` and no transfer or content coding (what a
    static server or a CDN sends for a firmware file) is read from the
    connection's buffered socket with ``readinto1``: one ``recv`` into the
    caller's buffer, no allocation and no copy per chunk, and never a byte past
    ``Content-Length`` (reading on would block on a keep-alive connection). A
    body that ends before ``Content-Length`` raises ``ConnectionError``, as
    urllib3 does. Anything else goes through urllib3's ``read1`` and is copied.
    """
    raw = response.raw
    inner = getattr(raw, "_fp", None)  # urllib3 2 keeps http.client's response here
    sock = getattr(inner, "fp", None)
    coding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if (
        isinstance(inner, http.client.HTTPResponse)
        and not inner.chunked
        and isinstance(inner.length, int)
        and coding == "identity"
        and isinstance(sock, io.BufferedReader)
    ):
        left = inner.length

        def direct(buffer: memoryview) -> int:
            nonlocal left
            if not left or not buffer:
                return 0
            n = sock.readinto1(buffer[:left] if len(buffer) > left else buffer)
            if not n:
                raise ConnectionError(f"the body ended {left} bytes before its Content-Length")
            left -= n
            return n

        return direct

    def copied(buffer: memoryview) -> int:
        data = raw.read1(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    return copied


class FileSource(ByteSource):
    """``file://`` URLs (offline bundles), with the same offset semantics as HTTP ranges."""

    def __init__(self, chunk_size: int) -> None:
        self._chunk = chunk_size

    def open(self, url: str, offset: int, validator: str | None) -> Opened:
        path = Path(url_to_path(url))
        try:
            f = path.open("rb", buffering=0)
        except OSError as e:
            raise coded(TransportError(f"cannot open {path}: {e}"), DOWNLOAD_FAILED) from e
        size = os.fstat(f.fileno()).st_size
        start = offset if 0 < offset <= size else 0
        f.seek(start)

        def readinto(buffer: memoryview) -> int:
            try:
                return f.readinto(buffer[: self._chunk]) or 0
            except OSError as e:
                raise coded(TransportError(f"cannot read {path}: {e}"), DOWNLOAD_FAILED) from e

        return Opened(start, readinto, None, f.close)


def url_to_path(url: str) -> str:
    """The local path of a ``file://`` URL (percent-decoded)."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise coded(TransportError(f"{url} is not a local file:// URL"), DOWNLOAD_FAILED)
    return unquote(parsed.path)


# -- the downloader ------------------------------------------------------------------


class _Pipeline:
    """Reusable receive buffers and the hashers they are fed to, in order.

    ``depth`` buffers of ``size`` bytes are allocated once: the receiving
    thread takes a free one (:meth:`take`, which waits while all are in
    flight), fills and writes it, and hands it over (:meth:`hash`). Memory is
    ``depth * size`` whatever the transfer, and no bytes object is allocated
    per chunk. With ``depth`` 1 the buffer is hashed right away, in the
    receiving thread. With more, a worker thread hashes while the next chunks
    arrive (hashlib releases the GIL for the whole update): that only pays
    when a core is idle for it, which a loaded device or a two-core box whose
    second core serves or does other work does not have.
    """

    def __init__(self, hashers: dict[str, Any], size: int, depth: int) -> None:
        self.hashers = hashers
        self._list = list(hashers.values())
        self._buffers = [memoryview(bytearray(size)) for _ in range(max(depth, 1))]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(self._buffers)):
            self._free.put(index)
        self._work: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if len(self._buffers) > 1:
            self._thread = threading.Thread(target=self._run, name="tufota-hash", daemon=True)
            self._thread.start()

    def _update(self, index: int, n: int) -> None:
        data = self._buffers[index][:n]
        for h in self._list:
            h.update(data)
        data.release()
        self._free.put(index)

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            self._update(*item)

    def take(self) -> tuple[int, memoryview]:
        """A free buffer (its index, and a view of all of it)."""
        index = self._free.get()
        return index, self._buffers[index]

    def hash(self, index: int, n: int) -> None:
        """Hash the first ``n`` bytes of buffer ``index``, after everything handed over before."""
        if self._thread is None:
            self._update(index, n)
        else:
            self._work.put((index, n))

    def release(self, index: int) -> None:
        """Give buffer ``index`` back unhashed."""
        self._free.put(index)

    def finish(self) -> dict[str, str]:
        self._stop()
        return {name: h.hexdigest() for name, h in self.hashers.items()}

    def _stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._work.put(None)
            self._thread.join()

    def __enter__(self) -> _Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()


class _PartWriter:
    """Writes ``dest.part`` sequentially, keeping the image out of the page cache.

    Every ``sync_every`` bytes, ``posix_fadvise(DONTNEED)`` is called over the
    last two windows written: for the newer one it starts the kernel's
    writeback without waiting, the older one is on disk by then and its pages
    are dropped. So the final :meth:`sync` only waits for the tail instead of
    flushing the whole image at once; as long as the disk keeps up, about
    ``2 * sync_every`` bytes of the image sit in RAM, and the page cache it
    writes through is recycled instead of pushing out everything else.
    """

    def __init__(self, out: IO[bytes], offset: int, sync_every: int) -> None:
        self._fd = out.fileno()
        self._out = out
        self._position = offset
        self._pushed = self._dropped = offset
        advise = getattr(os, "posix_fadvise", None)
        self._every = sync_every if advise is not None and sync_every > 0 else 0

    def write(self, data: memoryview) -> None:
        while data:
            written = self._out.write(data) or 0
            data = data[written:]
            self._position += written
        if self._every and self._position - self._pushed >= self._every:
            with contextlib.suppress(OSError):  # only advice: the final fsync is what counts
                os.posix_fadvise(
                    self._fd,
                    self._dropped,
                    self._position - self._dropped,
                    os.POSIX_FADV_DONTNEED,
                )
            self._dropped, self._pushed = self._pushed, self._position

    def sync(self) -> None:
        self._out.flush()
        os.fsync(self._fd)


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
            InstallError: ``disk_full`` (no space, quota or file size limit); the
                partial is kept, so a later attempt resumes after what was written.
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
            limits = self._limits
            with (
                _Pipeline(
                    hashers_for(expected), limits.download_chunk_size, limits.download_queue_depth
                ) as pipeline,
                _open_part(part, offset) as out,
            ):
                if offset:
                    logger.info("resuming %s at byte %d of %d", url, offset, expected.length)
                    self._hash_prefix(part, offset, pipeline)
                writer = _PartWriter(out, offset, limits.download_writeback_bytes)
                try:
                    fetched = self._stream(url, opened, expected, writer, pipeline, offset)
                except TransportError:
                    writer.sync()
                    if not self._resume:
                        self._discard(part, meta)
                    raise
                except BaseException as e:
                    if not is_disk_full(e):
                        self._discard(part, meta)
                        raise
                    # Keep what was written: the next attempt resumes after it.
                    with contextlib.suppress(OSError):
                        writer.sync()
                    raise
                writer.sync()
                digests = pipeline.finish()
        except OSError as e:
            if is_disk_full(e):
                kept = part.stat().st_size if part.exists() else 0
                raise coded(
                    InstallError(
                        f"cannot write {part}: the disk is full ({e.strerror}); "
                        f"{kept} bytes kept, the download resumes there"
                    ),
                    DISK_FULL,
                ) from e
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

    def _hash_prefix(self, part: Path, offset: int, pipeline: _Pipeline) -> None:
        left = offset
        with part.open("rb", buffering=0) as f:
            while left > 0:
                index, buffer = pipeline.take()
                n = f.readinto(buffer[:left] if len(buffer) > left else buffer) or 0
                pipeline.hash(index, n)
                if not n:
                    raise RepositoryError(f"{part} is shorter than {offset} bytes")
                left -= n

    def _stream(
        self,
        url: str,
        opened: Opened,
        expected: Expected,
        writer: _PartWriter,
        pipeline: _Pipeline,
        offset: int,
    ) -> int:
        total = expected.length
        done = offset
        throttle = Throttle(self._rate)
        guard = StallGuard(self._limits.min_bytes_per_second, self._limits.slow_window)
        budget = self._budget
        progress = self._progress
        readinto = opened.readinto
        fetched = 0
        while True:
            index, buffer = pipeline.take()
            # Ask for one byte more than the signed length leaves, so that a
            # stream that goes on is noticed at its first extra byte; and never
            # for more than the data budget allows.
            want = total - done + 1
            if budget is not None:
                want = min(want, max(budget.remaining, 1))
            if self._rate:
                # Small reads under a cap, so the pace (and a progress bar) is even.
                want = min(want, max(self._rate // 4, 1))
            n = readinto(buffer[:want] if len(buffer) > want else buffer)
            if not n:
                pipeline.release(index)
                break
            if done + n > total:
                raise coded(
                    VerificationError(f"{url} sent more than the signed {total} bytes"),
                    TARGET_LENGTH_MISMATCH,
                )
            writer.write(buffer[:n])
            pipeline.hash(index, n)
            done += n
            fetched += n
            _faults.point("download.chunk")
            if budget is not None:
                budget.charge(n)
            if (slow := guard.account(n)) is not None:
                raise coded(TransportError(f"{url} is too slow: {slow}"), SLOW_RETRIEVAL)
            throttle.account(n)
            # After the throttle's pause: progress says what is written, at the
            # moment the capped rate allows it, so 100% means the transfer ended.
            if progress is not None:
                progress(done, total)
            if budget is not None and budget.remaining <= 0 and done < total:
                raise coded(
                    TransportError(
                        f"the data budget for this period is used up at {done} of {total} bytes"
                    ),
                    DATA_BUDGET_EXHAUSTED,
                )
        if done != total:
            # The body ended cleanly (a cut connection raises above, as the
            # Content-Length is enforced): the server's file is not the signed one.
            raise coded(
                VerificationError(f"{url} is {done} bytes, not the signed {total}"),
                TARGET_LENGTH_MISMATCH,
            )
        return fetched


def is_disk_full(error: BaseException) -> bool:
    """True for the write errors that mean "no room": no space, quota, file size limit."""
    return isinstance(error, OSError) and error.errno in (
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
    )


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
