"""Release bundles: one tar (or tar.gz) file carrying signed metadata and firmware.

A bundle is what an offline signing machine hands to the repository server
(``tufota release upload``, ``POST /api/v1/releases``). Layout::

    bundle.json                   manifest: format, what the bundle carries
    metadata/root.json            optional: a new root version (rotation)
    metadata/targets.json         optional: new top-level targets (product lines)
    metadata/<role>.json          delegated targets roles, e.g. firmware-gw-100
    context/targets.json          optional: the top-level targets the roles were signed
                                  against, so ``release verify`` works offline; never published
    targets/<target path>         firmware blobs, e.g. targets/firmware/gw-100/1.1.0/fw.img

Invariants of ``read_bundle``:

* Nothing in the archive chooses a file system path: member names are parsed
  against the layout above and blobs are written under names the reader makes
  up, inside a private temporary directory (mode 0700) that is removed when the
  context exits, whatever happens.
* Only regular files (and harmless directory entries) are accepted; links,
  devices, FIFOs, absolute or ``..`` names, duplicate names, undeclared members,
  declared-but-missing members, and members or totals above ``BundleLimits``
  raise ``InputError`` before the caller sees anything.
* Every blob is the file of exactly one target in exactly one carried role, and
  its length and sha256 match that target (``VerificationError`` otherwise).
  Signatures are *not* checked here: that is the verifier's job
  (``signing.verify_bundle`` offline, ``Publisher.publish`` on the server).

``write_bundle`` writes the same layout deterministically (fixed owner, mode
and mtime, no gzip timestamp), so signing the same metadata twice gives the
same bytes, and writes atomically (temporary file, then rename).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from tuf.api.metadata import Metadata, Root, TargetFile, Targets

from signing._fs import atomic_file
from tufota_core import InputError, NotFoundError, VerificationError, safe_text

BUNDLE_FORMAT = "tufota.bundle/1"
MANIFEST = "bundle.json"
_TOP_LEVEL = ("root", "targets", "snapshot", "timestamp")
_ROLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_CHUNK = 1024 * 1024
_CONTEXT = "context/targets"  # key of the context targets among the parsed metadata
_BLOCK = 512
_EXTENSION_TYPES = {b"x": "pax", b"g": "global pax", b"L": "GNU long name", b"K": "GNU long link"}
_REGULAR_TYPES = (b"0", b"\0", b"7")
_MAX_EXTENSIONS_IN_A_ROW = 4
_PAX_RECORD = re.compile(rb"(\d{1,8}) ([^=\n]{1,64})=")


def _shown(name: str) -> str:
    """A member name as an error message may show it: neutralised and short."""
    return repr(safe_text(name, 80))


@dataclass(frozen=True)
class BundleLimits:
    """Caps that keep a hostile bundle from exhausting the reader.

    Every cap is checked from the tar headers, before the data it guards is
    read, allocated or written to disk.

    Attributes:
        max_members: Archive members, directory entries included.
        max_metadata_bytes: Size of one metadata file or the manifest (devices
            refuse targets metadata above 5 MB by default, so larger cannot work).
        max_metadata_total_bytes: Sum of all metadata files (held in memory).
        max_blob_bytes: Size of one firmware file.
        max_total_bytes: Sum of all member sizes (uncompressed).
        max_blobs: Firmware files in one bundle.
        max_header_bytes: Payload of one tar extension header (GNU long name or
            link, pax record set); a bundle's names are short.
        max_compression_ratio: Uncompressed bytes per compressed byte of a
            tar.gz, checked once more than ``compression_floor_bytes`` came out.
        compression_floor_bytes: Output below which the ratio is not checked
            (small metadata compresses well).
    """

    max_members: int = 256
    max_metadata_bytes: int = 5 * 1024 * 1024
    max_metadata_total_bytes: int = 16 * 1024 * 1024
    max_blob_bytes: int = 2 * 1024**3
    max_total_bytes: int = 4 * 1024**3
    max_blobs: int = 64
    max_header_bytes: int = 8 * 1024
    max_compression_ratio: int = 200
    compression_floor_bytes: int = 16 * 1024 * 1024


@dataclass
class ReleaseBundle:
    """A bundle's parsed content; blob paths are valid only inside ``read_bundle``.

    Attributes:
        roles: Delegated targets roles by name (e.g. ``firmware-gw-100``).
        targets: New top-level targets metadata, or None.
        root: A new root version, or None.
        blobs: Each firmware target with the path of its extracted file.
        manifest: The parsed ``bundle.json``.
        context_targets: The top-level targets the roles were signed against
            (for offline verification only; never to be published).
    """

    roles: dict[str, Metadata[Targets]] = field(default_factory=dict)
    targets: Metadata[Targets] | None = None
    root: Metadata[Root] | None = None
    blobs: list[tuple[TargetFile, Path]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    context_targets: Metadata[Targets] | None = None


# -- member names ---------------------------------------------------------------


def _check_target_path(path: str) -> str:
    parts = path.split("/")
    if not parts or any(not _SEGMENT.match(p) or ".." in p for p in parts):
        raise InputError(f"bundle: target path {_shown(path)} is not a safe relative path")
    return path


def _check_role_name(name: str) -> str:
    if not _ROLE_NAME.match(name) or name in _TOP_LEVEL:
        raise InputError(f"bundle: {_shown(name)} is not a delegated role name")
    return name


def _metadata_member(role: str) -> str:
    return f"metadata/{role}.json"


def _blob_member(target_path: str) -> str:
    return f"targets/{target_path}"


# -- writing ----------------------------------------------------------------------


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, path: Path, length: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = length
    info.mode = 0o644
    info.mtime = 0
    with path.open("rb") as f:
        tar.addfile(info, f)


def write_bundle(
    out: Path,
    *,
    roles: dict[str, Metadata[Targets]] | None = None,
    blobs: list[tuple[TargetFile, Path]] | None = None,
    targets: Metadata[Targets] | None = None,
    root: Metadata[Root] | None = None,
    context_targets: Metadata[Targets] | None = None,
    compress: bool = True,
    overwrite: bool = False,
) -> None:
    """Write a bundle atomically to ``out`` (tar.gz unless ``compress`` is False).

    Each blob must be the file of a target listed by one of ``roles``, with
    the signed length and sha256.

    Raises:
        InputError: nothing to write, ``out`` exists (without ``overwrite``), a
            bad role name, or a blob that no role lists.
        NotFoundError: a blob file is missing (``InputError`` subclass).
        VerificationError: a blob's bytes do not match its target.
    """
    roles = dict(roles or {})
    blobs = list(blobs or [])
    if not roles and targets is None and root is None:
        raise InputError("a bundle needs at least one metadata file")
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; refusing to overwrite it")
    if not out.parent.is_dir():
        raise InputError(f"directory {out.parent} does not exist")
    for name in roles:
        _check_role_name(name)
    listed = {path for md in roles.values() for path in md.signed.targets}
    seen: set[str] = set()
    for target, path in blobs:
        _check_target_path(target.path)
        if target.path not in listed:
            raise InputError(f"bundle: no role in the bundle lists {target.path}")
        if target.path in seen:
            raise InputError(f"bundle: {target.path} is given twice")
        seen.add(target.path)
        _verify_file(target, path)
    manifest = {
        "format": BUNDLE_FORMAT,
        "root": root is not None,
        "targets": targets is not None,
        "roles": sorted(roles),
        "blobs": sorted(seen),
        "context": [] if context_targets is None else ["targets"],
    }
    with atomic_file(out) as raw, contextlib.ExitStack() as stack:
        stream: Any = raw
        if compress:
            stream = stack.enter_context(
                gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="")
            )
        tar = stack.enter_context(tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT))
        _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        if root is not None:
            _add_bytes(tar, _metadata_member("root"), root.to_bytes())
        if targets is not None:
            _add_bytes(tar, _metadata_member("targets"), targets.to_bytes())
        if context_targets is not None:
            _add_bytes(tar, "context/targets.json", context_targets.to_bytes())
        for name in sorted(roles):
            _add_bytes(tar, _metadata_member(name), roles[name].to_bytes())
        for target, path in sorted(blobs, key=lambda b: b[0].path):
            _add_file(tar, _blob_member(target.path), path, target.length)


def _verify_file(target: TargetFile, path: Path) -> None:
    try:
        with path.open("rb") as f:
            target.verify_length_and_hashes(f)
    except FileNotFoundError:
        raise NotFoundError(f"firmware file {path} does not exist") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e}") from e
    except Exception as e:  # tuf raises LengthOrHashMismatchError
        raise VerificationError(f"{path} does not match the signed {target.path}") from e


# -- reading ----------------------------------------------------------------------


def _member_kind(name: str, is_dir: bool) -> tuple[str, str]:
    """Classify a member name: ("manifest"|"metadata"|"blob"|"dir", key)."""
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(part in ("", ".", "..") for part in name.rstrip("/").split("/"))
    ):
        raise InputError(f"bundle: member name {_shown(name)} is not a safe relative path")
    if is_dir:
        normal = name.rstrip("/")
        if normal in ("metadata", "targets", "context"):
            return "dir", normal
        if normal.startswith("targets/"):
            return "dir", _check_target_path(normal[len("targets/") :])
        raise InputError(f"bundle: unexpected directory {_shown(name)}")
    if name == MANIFEST:
        return "manifest", name
    if name.startswith("metadata/"):
        rest = name[len("metadata/") :]
        if "/" in rest or not rest.endswith(".json"):
            raise InputError(f"bundle: unexpected member {_shown(name)}")
        role = rest[: -len(".json")]
        if role not in ("root", "targets"):
            _check_role_name(role)
        return "metadata", role
    if name.startswith("targets/"):
        return "blob", _check_target_path(name[len("targets/") :])
    if name == "context/targets.json":
        return "context", "targets"
    raise InputError(f"bundle: unexpected member {_shown(name)}")


def _read_capped(stream: IO[bytes], size: int, name: str) -> bytes:
    data = stream.read(size + 1)
    if len(data) != size:
        raise InputError(
            f"bundle: member {_shown(name)} is truncated or longer than its header says"
        )
    return data


def _copy_capped(stream: IO[bytes], size: int, dest: Path, name: str) -> None:
    done = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        while True:
            chunk = stream.read(min(_CHUNK, size - done + 1))
            if not chunk:
                break
            done += len(chunk)
            if done > size:
                break
            out.write(chunk)
    if done != size:
        raise InputError(
            f"bundle: member {_shown(name)} is truncated or longer than its header says"
        )


def _parse_manifest(data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise InputError(f"bundle: {MANIFEST} is not JSON: {e}") from e
    except RecursionError:  # hostile nesting; a manifest is a flat object
        raise InputError(f"bundle: {MANIFEST} nests too deeply") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise InputError(f"bundle: {MANIFEST} is not a {BUNDLE_FORMAT} manifest")
    roles, blobs = manifest.get("roles"), manifest.get("blobs")
    if (
        not isinstance(roles, list)
        or not isinstance(blobs, list)
        or not all(isinstance(r, str) for r in roles)
        or not all(isinstance(b, str) for b in blobs)
        or not isinstance(manifest.get("root"), bool)
        or not isinstance(manifest.get("targets"), bool)
    ):
        raise InputError(f"bundle: {MANIFEST} is malformed")
    context = manifest.setdefault("context", [])
    if context not in ([], ["targets"]):
        raise InputError(f"bundle: {MANIFEST} has an unknown context list")
    if len(set(roles)) != len(roles) or len(set(blobs)) != len(blobs):
        raise InputError(f"bundle: {MANIFEST} names something twice")
    return manifest


def _parse_metadata(role: str, data: bytes) -> Metadata[Any]:
    try:
        md: Metadata[Any] = Metadata.from_bytes(data)
    except Exception as e:  # the tuf deserializer raises many kinds
        raise InputError(f"bundle: {_metadata_member(role)} is not TUF metadata: {e}") from e
    expected = Root if role == "root" else Targets
    if not isinstance(md.signed, expected):
        raise InputError(f"bundle: {_metadata_member(role)} is not {expected.type} metadata")
    return md


@contextlib.contextmanager
def read_bundle(path: Path, limits: BundleLimits | None = None) -> Iterator[ReleaseBundle]:
    """Open a bundle; its blobs live in a private directory removed on exit.

    Usage::

        with read_bundle(Path("release.tar.gz")) as bundle:
            publisher.publish(bundle.roles, [Blob(t, path=p) for t, p in bundle.blobs],
                              bundle.targets)

    Raises:
        NotFoundError: ``path`` does not exist.
        InputError: not a tar archive, or a malformed or hostile one (see the
            module docstring), or a member above ``limits``.
        VerificationError: a blob does not match its signed length and hash.
    """
    limits = limits or BundleLimits()
    if not path.is_file():
        raise NotFoundError(f"bundle {path} does not exist")
    work = Path(tempfile.mkdtemp(prefix="tufota-bundle-"))
    try:
        yield _read(path, limits, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read(path: Path, limits: BundleLimits, work: Path) -> ReleaseBundle:
    # tarfile reads extension headers (long names, pax records) whole inside
    # next(), before any check of ours: the raw stream is checked first, and
    # tarfile then opens it with the same compression the pre-scan saw.
    gzipped = _prescan(path, limits)
    try:
        with tarfile.open(path, mode="r:gz" if gzipped else "r:") as tar:
            manifest, metadata, blob_files = _scan(tar, limits, work)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path} is not a readable tar or tar.gz bundle: {e}") from e
    return _assemble(manifest, metadata, blob_files)


class _Stream:
    """The archive's uncompressed bytes, with the compression ratio checked on every read."""

    def __init__(self, raw: IO[bytes], gzipped: bool, limits: BundleLimits) -> None:
        self._raw = raw
        self._data: IO[bytes] = (
            cast("IO[bytes]", gzip.GzipFile(fileobj=raw, mode="rb")) if gzipped else raw
        )
        self._gzipped = gzipped
        self._limits = limits
        self.offset = 0

    def read(self, size: int) -> bytes:
        data = self._data.read(size)
        self.offset += len(data)
        if self._gzipped and self.offset > self._limits.compression_floor_bytes:
            consumed = max(self._raw.tell(), 1)
            if self.offset > self._limits.max_compression_ratio * consumed:
                raise InputError(
                    f"bundle: decompresses to more than {self._limits.max_compression_ratio}x "
                    f"its compressed size ({self.offset // 1024**2} MiB from "
                    f"{consumed // 1024} KiB so far); refused as a compression bomb "
                    "(upload an uncompressed tar if this is intended)"
                )
        return data

    def skip(self, size: int) -> None:
        if not self._gzipped:
            self._raw.seek(size, os.SEEK_CUR)
            self.offset += size
            return
        while size > 0:
            chunk = self.read(min(_CHUNK, size))
            if not chunk:
                raise InputError("bundle: the archive is truncated")
            size -= len(chunk)


def _number(field: bytes) -> int:
    """A tar header number: octal text or GNU base-256 (as tarfile reads it)."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        if field[:1] == b"\xff":
            raise InputError("bundle: a tar header holds a negative number")
        return value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise InputError("bundle: a tar header holds a malformed number") from None


def _checksum_ok(block: bytes) -> bool:
    unsigned = 256 + sum(block[:148]) + sum(block[156:])
    signed = 256 + sum(b - 256 if b > 127 else b for b in block[:148] + block[156:])
    try:
        return _number(block[148:156]) in (unsigned, signed)
    except InputError:
        return False


def _pax_size(payload: bytes, global_header: bool) -> int | None:
    """The ``size`` a pax record set gives the next member, or None.

    Raises:
        InputError: malformed records, sparse files, or a global size.
    """
    size = None
    pos = 0
    while pos < len(payload) and payload[pos] != 0:
        match = _PAX_RECORD.match(payload, pos)
        if match is None:
            raise InputError("bundle: a pax header is malformed")
        length = int(match.group(1))
        end = pos + length
        if length < len(match.group(0)) + 1 or end > len(payload) or payload[end - 1] != 0x0A:
            raise InputError("bundle: a pax header is malformed")
        key, value = match.group(2), payload[match.end() : end - 1]
        if key.startswith(b"GNU.sparse"):
            raise InputError("bundle: sparse files are refused")
        if key == b"size":
            if global_header:
                raise InputError("bundle: a global pax header may not set sizes")
            if not value.isdigit() or len(value) > 20:
                raise InputError("bundle: a pax header holds a malformed size")
            size = int(value)
        pos = end
    return size


def _prescan(path: Path, limits: BundleLimits) -> bool:
    """Walk the raw tar headers, refusing what tarfile would allocate or write unchecked.

    Reads at most one header payload (``max_header_bytes``) and one chunk at a
    time, so memory stays constant whatever the archive claims; member data is
    skipped, not stored. Checks: compression (tar or gzip only) and its ratio,
    header checksums, extension header sizes, member count, member types,
    each member's size and the total.

    Returns:
        Whether the archive is gzip-compressed.

    Raises:
        InputError: the first check that failed, in a short message.
    """
    unreadable = f"{path} is not a readable tar or tar.gz bundle"
    biggest = max(limits.max_blob_bytes, limits.max_metadata_bytes)
    try:
        with path.open("rb") as raw:
            magic = raw.read(6)
            raw.seek(0)
            if magic.startswith(b"BZh") or magic == b"\xfd7zXZ\x00":
                raise InputError(f"{unreadable}: only tar and gzip-compressed tar are accepted")
            gzipped = magic.startswith(b"\x1f\x8b")
            stream = _Stream(raw, gzipped, limits)
            members = extensions = 0
            total = 0
            pending_size: int | None = None
            while True:
                block = stream.read(_BLOCK)
                if len(block) < _BLOCK:
                    if members == 0:
                        raise InputError(f"{unreadable}: no tar header")
                    raise InputError("bundle: the archive is truncated")
                if block.count(0) == _BLOCK:
                    if members == 0:
                        raise InputError(f"{unreadable}: empty archive")
                    break
                if not _checksum_ok(block):
                    if members == 0 and extensions == 0:
                        raise InputError(f"{unreadable}: bad header checksum")
                    raise InputError(
                        f"bundle: bad tar header checksum at byte {stream.offset - _BLOCK}"
                    )
                kind, size = block[156:157], _number(block[124:136])
                if kind in _EXTENSION_TYPES:
                    extensions += 1
                    if extensions > _MAX_EXTENSIONS_IN_A_ROW:
                        raise InputError("bundle: too many tar extension headers in a row")
                    if size > limits.max_header_bytes:
                        raise InputError(
                            f"bundle: a {_EXTENSION_TYPES[kind]} header of {size} bytes "
                            f"(at most {limits.max_header_bytes}); bundle names are short"
                        )
                    padded = -(-size // _BLOCK) * _BLOCK
                    payload = stream.read(padded)
                    if len(payload) < padded:
                        raise InputError("bundle: the archive is truncated")
                    if kind in (b"x", b"g"):
                        given = _pax_size(payload[:size], kind == b"g")
                        pending_size = given if given is not None else pending_size
                    continue
                extensions = 0
                members += 1
                if members > limits.max_members:
                    raise InputError(f"bundle has more than {limits.max_members} members")
                if pending_size is not None:
                    size, pending_size = pending_size, None
                directory = kind == b"5" or (
                    kind == b"\0" and block[:100].split(b"\0", 1)[0].endswith(b"/")
                )
                if directory:
                    continue  # tarfile reads no data for a directory, whatever its size
                if kind not in _REGULAR_TYPES:
                    raise InputError(
                        f"bundle: member #{members} is not a regular file "
                        f"(links and devices are refused; tar type {kind!r})"
                    )
                if size > biggest:
                    raise InputError(f"bundle: member #{members} is larger than {biggest} bytes")
                total += size
                if total > limits.max_total_bytes:
                    raise InputError(f"bundle is larger than {limits.max_total_bytes} bytes")
                stream.skip(-(-size // _BLOCK) * _BLOCK)
            return gzipped
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{unreadable}: {e}") from e


def _scan(
    tar: tarfile.TarFile, limits: BundleLimits, work: Path
) -> tuple[dict[str, Any] | None, dict[str, bytes], dict[str, Path]]:
    """Stream the members once, checking each before reading its data."""
    metadata: dict[str, bytes] = {}
    blob_files: dict[str, Path] = {}
    manifest: dict[str, Any] | None = None
    names: set[str] = set()
    count = total = held = 0
    context: bytes | None = None
    while (member := tar.next()) is not None:
        count += 1
        if count > limits.max_members:
            raise InputError(f"bundle has more than {limits.max_members} members")
        name = member.name
        kind, key = _member_kind(name, member.isdir())
        normal = name.rstrip("/")
        if normal in names:
            raise InputError(f"bundle: member {_shown(normal)} appears twice")
        names.add(normal)
        if member.isdir():
            continue
        if not member.isreg() or member.issparse():
            raise InputError(
                f"bundle: member {_shown(name)} is not a regular file (no links or devices)"
            )
        total += member.size
        if total > limits.max_total_bytes:
            raise InputError(f"bundle is larger than {limits.max_total_bytes} bytes")
        cap = limits.max_blob_bytes if kind == "blob" else limits.max_metadata_bytes
        if member.size > cap:
            raise InputError(f"bundle: {_shown(name)} is larger than {cap} bytes")
        if kind != "blob":
            held += member.size
            if held > limits.max_metadata_total_bytes:
                raise InputError(
                    f"bundle: its metadata is larger than {limits.max_metadata_total_bytes} bytes"
                )
        stream = tar.extractfile(member)
        if stream is None:  # pragma: no cover - regular members always have data
            raise InputError(f"bundle: cannot read member {_shown(name)}")
        if kind == "blob":
            if len(blob_files) >= limits.max_blobs:
                raise InputError(f"bundle has more than {limits.max_blobs} firmware files")
            dest = work / f"{len(blob_files):04d}.blob"
            _copy_capped(stream, member.size, dest, name)
            blob_files[key] = dest
        else:
            data = _read_capped(stream, member.size, name)
            if kind == "manifest":
                manifest = _parse_manifest(data)
            elif kind == "context":
                context = data
            else:
                metadata[key] = data
    if context is not None:
        metadata[_CONTEXT] = context
    return manifest, metadata, blob_files


def _assemble(
    manifest: dict[str, Any] | None, metadata: dict[str, bytes], blob_files: dict[str, Path]
) -> ReleaseBundle:
    if manifest is None:
        raise InputError(f"bundle has no {MANIFEST}")
    context = metadata.pop(_CONTEXT, None)
    if (context is not None) != (manifest["context"] == ["targets"]):
        raise InputError("bundle: context/targets.json and the manifest disagree")
    declared = {"root"} if manifest["root"] else set()
    if manifest["targets"]:
        declared.add("targets")
    declared.update(manifest["roles"])
    if set(metadata) != declared:
        missing, extra = declared - set(metadata), set(metadata) - declared
        if missing:
            raise InputError(f"bundle is missing metadata: {', '.join(sorted(missing))}")
        raise InputError(f"bundle carries undeclared metadata: {', '.join(sorted(extra))}")
    if set(blob_files) != set(manifest["blobs"]):
        missing, extra = (
            set(manifest["blobs"]) - set(blob_files),
            set(blob_files) - set(manifest["blobs"]),
        )
        if missing:
            raise InputError(f"bundle is missing firmware files: {', '.join(sorted(missing))}")
        raise InputError(f"bundle carries undeclared files: {', '.join(sorted(extra))}")
    if not metadata:
        raise InputError("bundle carries no metadata")
    bundle = ReleaseBundle(manifest=manifest)
    if context is not None:
        bundle.context_targets = _parse_metadata("targets", context)
    for role, data in metadata.items():
        md = _parse_metadata(role, data)
        if role == "root":
            bundle.root = md
        elif role == "targets":
            bundle.targets = md
        else:
            bundle.roles[role] = md
    for target_path, file in sorted(blob_files.items()):
        owners = [md for md in bundle.roles.values() if target_path in md.signed.targets]
        if len(owners) != 1:
            raise InputError(
                f"bundle: firmware file {target_path} is listed by {len(owners)} roles, not one"
            )
        target = owners[0].signed.targets[target_path]
        _check_blob(target, file)
        bundle.blobs.append((target, file))
    return bundle


def _check_blob(target: TargetFile, file: Path) -> None:
    size = file.stat().st_size
    if size != target.length:
        raise VerificationError(f"bundle: {target.path} is {size} bytes, signed as {target.length}")
    if "sha256" not in target.hashes:
        raise VerificationError(f"bundle: {target.path} has no sha256 hash")
    try:
        with file.open("rb") as f:
            target.verify_length_and_hashes(f)
    except Exception as e:  # tuf raises LengthOrHashMismatchError
        raise VerificationError(f"bundle: {target.path} does not match its signed hashes") from e
