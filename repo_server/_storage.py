"""Repository storage: where the served files (metadata and targets) live.

Everything a device fetches is a static object under a key such as
``metadata/3.snapshot.json`` or ``targets/firmware/gw/1.2.0/<sha256>.fw.bin``.
Backends implement the small ``Storage`` interface; the publisher relies on
two guarantees only:

* ``put`` is atomic per object: a reader sees the old bytes or the new bytes.
* ``lock`` serialises publishers (across processes for the local backend).

Keys are validated by ``check_key`` before any backend sees them: relative,
``/``-separated, no empty, ``.`` or ``..`` segments, no leading dot segment.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tufota_core import InputError, NotFoundError

MAX_KEY_LENGTH = 512
_CHUNK = 64 * 1024
MUTABLE_KEYS = frozenset({"metadata/timestamp.json"})


def cache_control(key: str) -> str:
    """The ``Cache-Control`` a served object deserves.

    ``timestamp.json`` is the only object rewritten in place: caches must
    revalidate it on every poll. Everything else is written once under a
    versioned or content-addressed name and never changes.
    """
    if key in MUTABLE_KEYS:
        return "no-cache"
    return "public, max-age=31536000, immutable"


def check_key(key: str) -> str:
    """Return ``key`` when it is a safe storage key.

    Raises:
        InputError: the key is absolute, empty, too long or walks out of its tree.
    """
    if not key or len(key) > MAX_KEY_LENGTH or "\\" in key or "\x00" in key:
        raise InputError(f"invalid storage key {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", "..") or segment.startswith("."):
            raise InputError(f"invalid storage key {key!r}")
    return key


@dataclass(frozen=True)
class ObjectInfo:
    """What a conditional or ranged GET needs to know about an object."""

    size: int
    mtime: float
    etag: str


class Storage(ABC):
    """Where the repository's served objects live."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes. Raises NotFoundError."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` atomically under ``key``."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Store a local file's content atomically under ``key`` (streamed)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size, modification time and entity tag. Raises NotFoundError."""

    @abstractmethod
    def iter_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Yield bytes ``start``..``end`` inclusive. Raises NotFoundError."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys that start with ``prefix``, sorted."""

    @abstractmethod
    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive publishing lock."""

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        """Release connections; the storage is unusable afterwards."""

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFoundError:
            return False
        return True


class LocalStorage(Storage):
    """A directory on the local file system (the embedded default).

    ``lock_path`` must lie outside ``root`` so it is never served.
    """

    def __init__(self, root: Path, lock_path: Path) -> None:
        self.root = root
        self._lock_path = lock_path
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"{key} does not exist") from None

    def _write(self, key: str, data: bytes | None, source: Path | None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                if data is not None:
                    out.write(data)
                elif source is not None:
                    with source.open("rb") as src:
                        while chunk := src.read(_CHUNK):
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put(self, key: str, data: bytes) -> None:
        self._write(key, data, None)

    def put_file(self, key: str, path: Path) -> None:
        self._write(key, None, path)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"{key} does not exist") from None
        if not path.is_file():
            raise NotFoundError(f"{key} does not exist")
        tag = hashlib.sha256(f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        return ObjectInfo(size=st.st_size, mtime=st.st_mtime, etag=f'"{tag[:32]}"')

    def iter_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        path = self._path(key)
        try:
            f = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"{key} does not exist") from None

        def chunks() -> Iterator[bytes]:
            with f:
                f.seek(start)
                remaining = end - start + 1
                while remaining > 0:
                    chunk = f.read(min(_CHUNK, remaining))
                    if not chunk:
                        return
                    remaining -= len(chunk)
                    yield chunk

        return chunks()

    def list(self, prefix: str) -> list[str]:
        keys = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith("."):
                    continue
                key = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
