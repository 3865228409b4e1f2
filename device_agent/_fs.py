"""Crash-safe file writes for the agent's state, outbox and slots.

Invariant: a file written through this module is either absent, its previous
complete content, or its new complete content, whatever instant the process
(or the power) dies at: bytes go to a temporary file in the same directory,
are fsynced, renamed over the final name with ``os.replace``, and the
directory is fsynced so the rename itself survives.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from device_agent import _faults
from tufota_core import RepositoryError

_CHUNK = 1024 * 1024


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry change (create, rename, unlink) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, write: Callable[[IO[bytes]], object], mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, mode)
        _faults.point("fs.before_replace")
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)
    _faults.point("fs.after_replace")


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    _write_atomic(path, lambda f: f.write(data), mode)


def atomic_write_json(path: Path, obj: Any, mode: int = 0o644) -> None:
    """Replace ``path`` with ``obj`` as indented JSON, atomically and durably."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), mode)


def atomic_copy(source: Path, path: Path, mode: int = 0o644) -> str:
    """Copy ``source`` to ``path`` atomically; return the SHA-256 hex of the bytes copied."""
    digest = hashlib.sha256()

    def write(tmp: IO[bytes]) -> None:
        with source.open("rb") as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                tmp.write(chunk)

    _write_atomic(path, write, mode)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: Path) -> Any:
    """Parse a JSON file this agent wrote.

    Raises:
        FileNotFoundError: the file does not exist.
        RepositoryError: the file exists but is not valid JSON.
    """
    data = path.read_bytes()
    try:
        return json.loads(data)
    except ValueError as e:
        raise RepositoryError(f"{path} is corrupt: {e}") from e
