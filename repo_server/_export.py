"""Offline bundles: one release and everything a device needs to verify it, for a USB stick.

An *offline bundle* (``tufota release export``) is a ``.tar.gz`` for devices
without network access (``tufota-agent install-bundle``). It is not the
*upload bundle* ``tufota release sign`` writes for the server (``bundle.json``
manifest). Members, in this order::

    tufota-offline-bundle.json   {"format": 1, "hardware_id", "version", "target"}
    metadata/1.root.json .. N.root.json
    metadata/timestamp.json
    metadata/<v>.snapshot.json   the snapshot the timestamp names
    metadata/<v>.targets.json
    metadata/<v>.firmware-<hw>.json
    metadata/<v>.rollouts.json   when the repository has rollouts
    targets/firmware/<hw>/<version>/<sha256>.<file>

Every member is copied byte for byte from the repository's published tree
(the same keys as under ``public/``), so a device verifies it with the same
TUF client workflow as online. Invariants: the bundle holds only the files
of the newest published state that lead to this one release; it is written
beside its destination and renamed into place, so a failed export leaves no
partial file.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuf.api.metadata import Root, Snapshot, Targets, Timestamp

from repo_server._publisher import (
    RepoState,
    latest_root_version,
    load_state,
    metadata_key,
    target_storage_key,
)
from repo_server._storage import Storage
from signing import atomic_file
from tufota_core import (
    ROLLOUTS_ROLE,
    InputError,
    NotFoundError,
    check_hardware_id,
    is_delta_custom,
    product_role,
)

OFFLINE_MANIFEST = "tufota-offline-bundle.json"
OFFLINE_FORMAT = 1


@dataclass(frozen=True)
class OfflineExport:
    """What ``export_offline_bundle`` wrote."""

    path: Path
    target: str
    members: tuple[str, ...]
    size: int


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (``Storage.iter_range``)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def _release_target(state: RepoState, hardware_id: str, version: str) -> str:
    name = product_role(hardware_id)
    role = state.roles.get(name)
    if role is None:
        raise NotFoundError(f"product line {hardware_id} has no published releases")
    prefix = f"firmware/{hardware_id}/{version}/"
    found = [
        path
        for path, target in role.signed.targets.items()
        if path.startswith(prefix) and not is_delta_custom(target.custom)  # deltas ride online
    ]
    if not found:
        versions = sorted({p.split("/")[2] for p in role.signed.targets})
        raise NotFoundError(
            f"{hardware_id} has no release {version} (published: {', '.join(versions) or 'none'})"
        )
    if len(found) > 1:
        raise InputError(f"{hardware_id} {version} has several files: {', '.join(found)}")
    return found[0]


def offline_members(
    state: RepoState, storage: Storage, hardware_id: str, version: str
) -> list[str]:
    """Storage keys of every file a device needs for this release, in bundle order."""
    check_hardware_id(hardware_id)
    target_path = _release_target(state, hardware_id, version)
    meta = state.snapshot.signed.meta
    keys = [metadata_key(Root.type, v) for v in range(1, latest_root_version(storage) + 1)]
    keys.append(metadata_key(Timestamp.type))
    keys.append(metadata_key(Snapshot.type, state.snapshot.signed.version))
    for role in (Targets.type, product_role(hardware_id), ROLLOUTS_ROLE):
        entry = meta.get(f"{role}.json")
        if entry is not None:
            keys.append(metadata_key(role, entry.version))
    target = state.roles[product_role(hardware_id)].signed.targets[target_path]
    keys.append(target_storage_key(target))
    return keys


def export_offline_bundle(
    storage: Storage, hardware_id: str, version: str, out: Path
) -> OfflineExport:
    """Write the offline bundle of ``hardware_id`` ``version`` to ``out``.

    Raises:
        InputError: ``out`` exists, or its directory does not.
        NotFoundError: no such product line or release.
        RepositoryError: the published repository cannot be read.
    """
    if out.exists():
        raise InputError(f"{out} already exists; refusing to overwrite it")
    if not out.parent.is_dir():
        raise NotFoundError(f"directory {out.parent} does not exist")
    state = load_state(storage)
    keys = offline_members(state, storage, hardware_id, version)
    target_path = _release_target(state, hardware_id, version)
    manifest = {
        "format": OFFLINE_FORMAT,
        "hardware_id": hardware_id,
        "version": version,
        "target": target_path,
    }
    with atomic_file(out) as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
        _add(tar, OFFLINE_MANIFEST, len(data), io.BytesIO(data))
        for key in keys:
            if key.startswith("targets/"):
                size = storage.stat(key).size
                chunks = storage.iter_range(key, 0, max(size - 1, 0)) if size else iter(())
                _add(tar, key, size, io.BufferedReader(_ChunkReader(chunks)))
            else:
                data = storage.get(key)
                _add(tar, key, len(data), io.BytesIO(data))
    return OfflineExport(out, target_path, (OFFLINE_MANIFEST, *keys), out.stat().st_size)


def _add(tar: tarfile.TarFile, name: str, size: int, data: io.IOBase) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    tar.addfile(info, data)
