"""Offline update bundles: a copy of the repository's static tree, carried by hand.

An offline bundle is either an archive (``.tar.gz``, ``.tgz`` or ``.tar``, what
``tufota release export`` writes) whose members are::

    tufota-offline-bundle.json   {"format": 1, "hardware_id": ..., "version": ...,
                                  "target": "firmware/<hw>/<version>/<file>"}
    metadata/...                 as below
    targets/...                  as below

or a directory (on a USB stick, say)::

    bundle.json     optional: {"schema": "tufota.bundle/1",
                               "target": "firmware/<hw>/<version>/<file>"}
    metadata/       a copy of the server's metadata/ tree: timestamp.json, the
                    versioned snapshot, targets and delegated roles it names, and
                    every N.root.json newer than the device's root (rotation)
    targets/        the firmware blob under its served name
                    (``firmware/<hw>/<version>/<sha256>.<file>``)

``tufota-agent install-bundle BUNDLE`` reads it through a ``file://`` fetcher
into the same ngclient client and metadata cache as online updates. A
directory may also carry ``tufota-offline-bundle.json`` (an unpacked archive).

Invariants:
* An archive is unpacked into a private temporary directory, removed
  afterwards, and read before anything is allocated for it: no member chooses
  a path outside ``metadata/`` and ``targets/`` (no absolute or ``..`` names,
  no duplicates), only regular files and directories are accepted (no links,
  devices, FIFOs, sparse files), and the member count, each member's size and
  the total are capped (``AgentLimits``) from the headers, before the member
  is read. A tar header payload (long name, pax record) larger than
  ``max_bundle_header_bytes`` is refused before it is read.
* An *upload* bundle (a tar with ``bundle.json``, what ``tufota release sign``
  writes for the server) is refused with one line that says so.
* Nothing in the bundle is trusted: metadata verifies from the device's trusted
  root (rotation, expiry, rollback against what the device has already seen),
  the firmware against the signed length and hashes. ``bundle.json`` only
  *selects* a target; an unsigned choice cannot widen what is accepted.
* The firmware must be for this device's hardware and newer than the installed
  version (``wrong_hardware``, ``version_mismatch``, ``downgrade_refused``),
  exactly as for an online rollout; waves do not apply (a person chose to
  install it).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from device_agent._config import AgentLimits
from device_agent._decide import check_firmware
from device_agent._errors import BUNDLE_INVALID, DOWNGRADE_REFUSED, WRONG_HARDWARE, coded
from tufota_core import (
    FirmwareInfo,
    InputError,
    NotFoundError,
    RolloutDoc,
    VerificationError,
    Wave,
    is_newer,
    rollout_target_path,
)

BUNDLE_SCHEMA = "tufota.bundle/1"
BUNDLE_FILE = "bundle.json"
OFFLINE_MANIFEST = "tufota-offline-bundle.json"
OFFLINE_FORMAT = 1
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_MAX_BUNDLE_FILE = 64 * 1024
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Bundle:
    """A bundle directory: where its tree is, and which target it asks to install."""

    directory: Path
    target_path: str | None

    @property
    def base_url(self) -> str:
        """``file://`` URL of the directory holding ``metadata/`` and ``targets/``."""
        return self.directory.as_uri()


def _invalid(message: str) -> InputError:
    return coded(InputError(message), BUNDLE_INVALID)


def read_bundle(directory: Path) -> Bundle:
    """Check the layout of a bundle directory and read its description if there is one.

    Raises:
        InputError: code ``bundle_invalid``: not a directory, no
            ``metadata/timestamp.json``, or a malformed ``bundle.json`` or
            ``tufota-offline-bundle.json``.
    """
    directory = directory.resolve()
    if not directory.is_dir():
        raise _invalid(f"bundle {directory} is not a directory")
    if not (directory / "metadata" / "timestamp.json").is_file():
        raise _invalid(f"bundle {directory} has no metadata/timestamp.json")
    manifest = directory / OFFLINE_MANIFEST
    if manifest.is_file():
        return Bundle(directory, _read_manifest(manifest))
    spec = directory / BUNDLE_FILE
    if not spec.exists():
        return Bundle(directory, None)
    try:
        if spec.stat().st_size > _MAX_BUNDLE_FILE:
            raise ValueError(f"larger than {_MAX_BUNDLE_FILE} bytes")
        data: Any = json.loads(spec.read_bytes())
        if not isinstance(data, dict) or data.get("schema") != BUNDLE_SCHEMA:
            raise ValueError(f"schema is not {BUNDLE_SCHEMA}")
        target = data["target"]
        if not isinstance(target, str) or not target:
            raise ValueError("target must be a target path")
    except (OSError, ValueError, KeyError) as e:
        raise coded(InputError(f"{spec} is not a bundle description: {e}"), BUNDLE_INVALID) from e
    return Bundle(directory, target)


def _read_manifest(path: Path) -> str:
    """The target an offline bundle's ``tufota-offline-bundle.json`` names.

    The manifest is unsigned: it only selects a target, which must then verify
    like any other. Its fields must agree with each other.

    Raises:
        InputError: code ``bundle_invalid``: a malformed manifest.
    """
    try:
        if path.stat().st_size > _MAX_BUNDLE_FILE:
            raise ValueError(f"larger than {_MAX_BUNDLE_FILE} bytes")
        data: Any = json.loads(path.read_bytes())
        if not isinstance(data, dict) or data.get("format") != OFFLINE_FORMAT:
            raise ValueError(f"format is not {OFFLINE_FORMAT}")
        fields = [data.get(k) for k in ("hardware_id", "version", "target")]
        if not all(isinstance(v, str) and v for v in fields):
            raise ValueError("hardware_id, version and target must be non-empty strings")
        hardware, version, target = (str(v) for v in fields)
        parts = target.split("/")
        if len(parts) != 4 or parts[:3] != ["firmware", hardware, version]:
            raise ValueError(f"target {target!r} is not firmware/{hardware}/{version}/<file>")
    except (OSError, ValueError) as e:
        raise _invalid(f"{path.name} is not an offline bundle manifest: {e}") from e
    return str(target)


def is_archive(path: Path) -> bool:
    """True when ``path`` names an offline bundle archive rather than a directory."""
    return path.is_file() or (not path.exists() and path.name.lower().endswith(ARCHIVE_SUFFIXES))


class _BoundedReader:
    """The decompressed archive, refusing any single read larger than ``max_read``.

    ``tarfile`` reads a long-name or pax header's whole payload in one call,
    inside ``next()``; refusing that call is what bounds its memory.
    """

    def __init__(self, stream: IO[bytes], max_read: int) -> None:
        self._stream = stream
        self._max = max_read

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self._max:
            raise _invalid(f"a tar header or read of {size} bytes is over the {self._max}-byte cap")
        return self._stream.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


def _member_path(name: str) -> PurePosixPath:
    """The member's relative path, or ``bundle_invalid`` when it could leave the bundle."""
    path = PurePosixPath(name.removeprefix("./"))
    if (
        not name
        or path.is_absolute()
        or "\\" in name
        or any(part in ("", ".", "..") for part in path.parts)
        or len(name) > 1024
    ):
        raise _invalid(f"bundle member {name[:100]!r} has an unsafe name")
    return path


@contextlib.contextmanager
def open_archive(archive: Path, work_parent: Path, limits: AgentLimits) -> Iterator[Bundle]:
    """Unpack an offline bundle archive into a private temporary directory (see invariants).

    Yields the unpacked bundle; the directory is removed when the context exits.

    Raises:
        InputError: code ``bundle_invalid``: not a readable tar (gzip or plain),
            an upload bundle, an unsafe or unexpected member, or a cap exceeded.
        NotFoundError: the archive does not exist.
    """
    work_parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bundle-", dir=work_parent))
    try:
        try:
            raw = archive.open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"bundle {archive} does not exist") from None
        except OSError as e:
            raise _invalid(f"cannot read bundle {archive}: {e}") from e
        with raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw  # type: ignore[assignment]
            try:
                _unpack(
                    archive, _BoundedReader(stream, limits.max_bundle_header_bytes), work, limits
                )
            except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile, UnicodeError) as e:
                raise _invalid(f"bundle {archive} is not a readable tar archive: {e}") from e
        manifest = work / OFFLINE_MANIFEST
        if not manifest.is_file():
            raise _invalid(f"bundle {archive} has no {OFFLINE_MANIFEST}")
        if not (work / "metadata" / "timestamp.json").is_file():
            raise _invalid(f"bundle {archive} has no metadata/timestamp.json")
        yield Bundle(work, _read_manifest(manifest))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unpack(archive: Path, reader: _BoundedReader, work: Path, limits: AgentLimits) -> None:
    count = total = 0
    seen: set[PurePosixPath] = set()
    upload = (
        f"{archive} is an upload bundle for the server ({BUNDLE_FILE}); export an "
        "offline bundle with 'tufota release export'"
    )
    with tarfile.open(fileobj=reader, mode="r:") as tar:  # type: ignore[call-overload]
        while (member := tar.next()) is not None:
            count += 1
            if count > limits.max_bundle_members:
                raise _invalid(
                    f"bundle {archive} has more than {limits.max_bundle_members} members"
                )
            path = _member_path(member.name)
            if path == PurePosixPath(BUNDLE_FILE):
                raise _invalid(upload)
            if count == 1 and path != PurePosixPath(OFFLINE_MANIFEST):
                _find_upload_manifest(tar, limits, upload)
                raise _invalid(
                    f"bundle {archive} does not start with {OFFLINE_MANIFEST}; "
                    "is it an offline bundle from 'tufota release export'?"
                )
            if member.isdir():
                if path.parts[0] not in ("metadata", "targets"):
                    raise _invalid(f"bundle member {member.name!r} is not expected")
                continue
            if not member.isreg() or member.issparse():
                raise _invalid(f"bundle member {member.name!r} is not a regular file")
            if path in seen:
                raise _invalid(f"bundle member {member.name!r} appears twice")
            seen.add(path)
            cap = _member_cap(path, member.name, limits)
            if member.size > cap:
                raise _invalid(f"bundle member {member.name!r} is {member.size} bytes, over {cap}")
            total += member.size
            if total > limits.max_bundle_bytes:
                raise _invalid(f"bundle {archive} holds more than {limits.max_bundle_bytes} bytes")
            _extract(tar, member, work / path)


def _member_cap(path: PurePosixPath, name: str, limits: AgentLimits) -> int:
    if path == PurePosixPath(OFFLINE_MANIFEST):
        return _MAX_BUNDLE_FILE
    if path.parts[0] == "metadata" and len(path.parts) == 2 and path.suffix == ".json":
        return limits.max_bundle_metadata_bytes
    if path.parts[0] == "targets" and len(path.parts) >= 2:
        return limits.max_firmware_bytes
    raise _invalid(f"bundle member {name!r} is not expected (only metadata/ and targets/)")


def _find_upload_manifest(tar: tarfile.TarFile, limits: AgentLimits, message: str) -> None:
    """Raise ``message`` when a later member is ``bundle.json`` (headers only, capped)."""
    for _ in range(limits.max_bundle_members):
        member = tar.next()
        if member is None:
            return
        if member.name.removeprefix("./") == BUNDLE_FILE:
            raise _invalid(message)


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    if source is None:
        raise _invalid(f"bundle member {member.name!r} has no data")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with source, os.fdopen(fd, "wb") as out:
        left = member.size
        while left:
            chunk = source.read(min(_CHUNK, left))
            if not chunk:
                raise _invalid(f"bundle member {member.name!r} is truncated")
            out.write(chunk)
            left -= len(chunk)


def default_target(doc: RolloutDoc | None, hardware_id: str) -> str:
    """The target a bundle without ``bundle.json`` installs: its rollout document's.

    Raises:
        InputError: code ``bundle_invalid`` when the bundle has no rollout document.
    """
    if doc is None:
        raise coded(
            InputError(
                f"bundle names no target: add {BUNDLE_FILE} or the signed "
                f"{rollout_target_path(hardware_id)}"
            ),
            BUNDLE_INVALID,
        )
    return doc.target_path


def check_bundle_firmware(
    target_path: str,
    custom: dict[str, Any] | None,
    length: int,
    *,
    hardware_id: str,
    installed_version: str | None,
    max_bytes: int,
) -> FirmwareInfo:
    """Apply the online rules to a bundle's verified firmware target.

    Raises:
        VerificationError: ``wrong_hardware``, ``version_mismatch``,
            ``firmware_info_invalid``, ``firmware_too_large`` or ``downgrade_refused``.
    """
    parts = target_path.split("/")
    if len(parts) != 4 or parts[0] != "firmware":
        raise coded(
            VerificationError(f"{target_path} is not a firmware target path"), BUNDLE_INVALID
        )
    if parts[1] != hardware_id:
        raise coded(
            VerificationError(f"bundle firmware {target_path} is not for {hardware_id}"),
            WRONG_HARDWARE,
        )
    try:
        doc = RolloutDoc(
            rollout_id="offline-bundle",
            hardware_id=hardware_id,
            version=parts[2],
            target_path=target_path,
            waves=(Wave("offline", 100.0),),
            current_wave=0,
            state="active",
        )
    except InputError as e:
        raise coded(VerificationError(f"bundle target: {e}"), BUNDLE_INVALID) from e
    info = check_firmware(doc, custom, length, max_bytes)
    if not is_newer(info.version, installed_version):
        raise coded(
            VerificationError(
                f"bundle firmware {info.version} is not newer than installed "
                f"{installed_version}; refusing to downgrade"
            ),
            DOWNGRADE_REFUSED,
        )
    return info
