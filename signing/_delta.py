"""Generate a ``tufota-delta/1`` or ``/2`` delta between two firmware images (offline, pure files).

Method (chosen by measurement, see docs/decisions/0009-delta-format.md):

1. When both images are tar archives, members are matched by name, then by
   name with digit runs ignored (``lib/modules/6.1.0-53/..`` matches
   ``lib/modules/6.1.0-54/..``), preferring the candidate with the fewest
   differing digit runs (``ipv6/x.ko`` stays with ``ipv6/x.ko``, not
   ``ipv4/x.ko``) and giving up on a tie. Identical members
   become one COPY from the source image; changed members are diffed one
   against the other; new members are stored. Tar headers are diffed against
   the matched member's header. Other images are one member.
2. A changed member is diffed with bsdiff's suffix-array matcher
   (``bsdiff4.core.diff``); its control triples become ADD/INSERT operations
   and all-zero ADD runs become COPY. Members larger than ``window`` are
   diffed window by window against the source at the same offset widened by
   ``window_margin``, which bounds the matcher's memory.
3. The ops, diff and extra streams are xz-compressed separately with a
   dictionary of at most ``dict_size`` so a device decodes them in bounded memory.
4. A changed member that is a gzip file on both sides, and whose token
   strings (:mod:`tufota_core._deflate`) re-encode to both files bit for bit,
   becomes one DEFLATE operation: the new token string is diffed against the
   old one (step 2) instead of the compressed bytes, which differ from the
   first change on. Such a delta is ``tufota-delta/2``; without one it stays
   ``/1`` so devices that know only ``/1`` keep using it.

Invariants: the output file is written under a temporary name and renamed
only once complete; generation never changes its inputs; the delta
reproduces ``result`` byte for byte from ``source`` (checked by the caller
with :func:`device_agent`'s applier in tests, and by every device against the
signed full image's hash).
"""

from __future__ import annotations

import hashlib
import importlib
import lzma
import os
import re
import resource
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tuf.api.metadata import Metadata, TargetFile, Targets

from tufota_core import FirmwareInfo, InputError, NotFoundError, TufotaError, Version
from tufota_core._deflate import reproducible_tokens
from tufota_core._delta import (
    DELTA_FORMAT,
    DELTA_FORMAT_2,
    DELTA_HEADER,
    DELTA_MAGICS,
    MAX_TOKEN_STRING,
    OP_ADD,
    OP_COPY,
    OP_DEFLATE,
    OP_END,
    OP_INSERT,
    DeltaInfo,
    delta_target_path,
    encode_varint,
    zigzag,
)

_DIGITS = re.compile(rb"[0-9]+")
_BLOCK = 512


@dataclass(frozen=True)
class DeltaConfig:
    """Limits and knobs of delta generation, with safe defaults.

    Attributes:
        window: Largest slice of a member diffed at once; bsdiff's suffix
            array needs about 9 bytes of memory per source byte.
        window_margin: Extra source bytes on each side of a window.
        dict_size: xz dictionary of each stream; the device needs about this
            much memory per stream to decode.
        preset: xz preset (9 = best; ``extreme`` adds the e flag).
        max_ratio: A delta larger than this share of the result image is not
            worth publishing (:func:`worth_publishing`).
        max_image: Largest image accepted.
        deflate: Diff gzip members by their token strings when they re-encode
            exactly (makes a ``tufota-delta/2`` delta when used).
        max_tokens: Largest token string diffed so; at most the limit every
            device enforces (``MAX_TOKEN_STRING``).
    """

    window: int = 64 * 1024 * 1024
    window_margin: int = 8 * 1024 * 1024
    dict_size: int = 2 * 1024 * 1024
    preset: int = 9
    extreme: bool = True
    max_ratio: float = 0.5
    max_image: int = 8 * 1024 * 1024 * 1024
    deflate: bool = True
    max_tokens: int = MAX_TOKEN_STRING


@dataclass
class DeltaStats:
    """What generation produced and cost.

    Attributes:
        source_length, result_length: Image sizes.
        delta_length: Size of the delta file.
        seconds: Wall time of generation.
        members, copied, diffed, stored: Tar members (1 for a raw image) and
            how each was encoded.
        tokenized: Of the diffed members, gzip files diffed by their token strings.
        format: The delta's format (``tufota-delta/1`` or ``/2``).
        source_sha256, result_sha256: Hashes of the two images.
    """

    source_length: int = 0
    result_length: int = 0
    delta_length: int = 0
    seconds: float = 0.0
    members: int = 0
    copied: int = 0
    diffed: int = 0
    stored: int = 0
    tokenized: int = 0
    format: str = DELTA_FORMAT
    source_sha256: str = ""
    result_sha256: str = ""
    sections: dict[str, int] = field(default_factory=dict)
    peak_rss_mib: float = 0.0  # of the whole process so far: an upper bound for this delta

    @property
    def ratio(self) -> float:
        """Delta size / result image size."""
        return self.delta_length / self.result_length if self.result_length else 1.0


def worth_publishing(stats: DeltaStats, config: DeltaConfig) -> bool:
    """True when the delta saves enough over the full image to be published."""
    return stats.ratio <= config.max_ratio


@dataclass(frozen=True)
class _Member:
    name: str
    header: int  # offset of the first header block
    data: int  # offset of the data
    size: int


def _tar_members(path: Path, length: int) -> list[_Member] | None:
    """The regular-file members of an uncompressed tar in file order, or None if not a tar."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = [_Member(m.name, m.offset, m.offset_data, m.size) for m in tar if m.isreg()]
    except (tarfile.TarError, OSError, ValueError):
        return None
    for m in members:
        if m.data + m.size > length:
            return None
    return members


def _loose(name: str) -> bytes:
    return _DIGITS.sub(b"#", name.encode("utf-8", "surrogateescape"))


class _Writer:
    """Accumulates operations and streams, xz-compressing each as it goes."""

    def __init__(self, config: DeltaConfig, tmp: Path) -> None:
        preset = config.preset | (lzma.PRESET_EXTREME if config.extreme else 0)
        filters: list[dict[str, Any]] = [
            {"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": config.dict_size}
        ]
        self.files: dict[str, IO[bytes]] = {}
        self.compressors: dict[str, Any] = {}
        for name in ("ops", "diff", "extra"):
            self.files[name] = open(tmp / name, "w+b")  # noqa: SIM115 - closed in finish
            self.compressors[name] = lzma.LZMACompressor(
                format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters
            )
        self.cursor = 0
        self.out_length = 0
        self._ops = bytearray()
        # A pending COPY is held back so contiguous copies merge into one.
        self._copy: list[int] | None = None
        self.deflated = 0
        self._outer: tuple[int, int, int] | None = None  # inside DEFLATE: what to resume

    def begin_deflate(self, offset: int, length: int, result_length: int, tokens: int) -> None:
        """Start a DEFLATE operation; copy/add/insert then address the token strings."""
        self._emit_copy()
        self._ops.append(OP_DEFLATE)
        for value in (zigzag(offset - self.cursor), length, result_length, tokens):
            self._ops += encode_varint(value)
        self._outer = (offset + length, self.out_length + result_length, tokens)
        self.cursor = self.out_length = 0

    def end_deflate(self) -> None:
        assert self._outer is not None
        self._emit_copy()
        self._ops.append(OP_END)
        cursor, out_length, tokens = self._outer
        if self.out_length != tokens:
            raise TufotaError(f"token diff covers {self.out_length} of {tokens} bytes")
        self.cursor, self.out_length, self._outer = cursor, out_length, None
        self.deflated += 1
        self._flush_ops()

    def _put(self, name: str, data: bytes | memoryview) -> None:
        if data:
            self.files[name].write(self.compressors[name].compress(data))

    def _flush_ops(self, force: bool = False) -> None:
        if force or len(self._ops) > 1 << 16:
            self._put("ops", bytes(self._ops))
            self._ops.clear()

    def _emit_copy(self) -> None:
        if self._copy is not None:
            offset, length = self._copy
            self._ops.append(OP_COPY)
            self._ops += encode_varint(zigzag(offset - self.cursor))
            self._ops += encode_varint(length)
            self.cursor = offset + length
            self._copy = None
            self._flush_ops()

    def copy(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        self.out_length += length
        if self._copy is not None and self._copy[0] + self._copy[1] == offset:
            self._copy[1] += length
            return
        self._emit_copy()
        self._copy = [offset, length]

    def add(self, offset: int, diff: bytes | memoryview) -> None:
        """Source bytes at ``offset`` plus ``diff`` (mod 256); zero runs become COPY."""
        if not diff:
            return
        if not bytes(diff).strip(b"\0"):
            self.copy(offset, len(diff))
            return
        self._emit_copy()
        self.out_length += len(diff)
        self._ops.append(OP_ADD)
        self._ops += encode_varint(zigzag(offset - self.cursor))
        self._ops += encode_varint(len(diff))
        self.cursor = offset + len(diff)
        self._put("diff", diff)
        self._flush_ops()

    def insert(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self._emit_copy()
        self.out_length += len(data)
        self._ops.append(OP_INSERT)
        self._ops += encode_varint(len(data))
        self._put("extra", data)
        self._flush_ops()

    def finish(self) -> dict[str, int]:
        self._emit_copy()
        self._ops.append(OP_END)
        self._flush_ops(force=True)
        sizes = {}
        for name, f in self.files.items():
            f.write(self.compressors[name].flush())
            sizes[name] = f.tell()
        return sizes


def _read_at(f: IO[bytes], offset: int, length: int) -> bytes:
    f.seek(offset)
    data = f.read(length)
    if len(data) != length:
        raise InputError(f"image ended while reading {length} bytes at offset {offset}")
    return data


def _int64(data: bytes, at: int) -> int:
    value = int.from_bytes(data[at : at + 8], "little")
    return -(value & ~(1 << 63)) if value & (1 << 63) else value


def _bsdiff(writer: _Writer, old: bytes, old_base: int, new: bytes, matcher: Any) -> None:
    """Diff ``new`` against ``old`` (which sits at ``old_base`` in the source image)."""
    control, diff, extra = matcher(old, new)
    old_pos = new_pos = diff_pos = extra_pos = 0
    for at in range(0, len(control), 24):
        x, y, z = _int64(control, at), _int64(control, at + 8), _int64(control, at + 16)
        if x:
            writer.add(old_base + old_pos, memoryview(diff)[diff_pos : diff_pos + x])
            diff_pos += x
            old_pos += x
            new_pos += x
        if y:
            writer.insert(memoryview(extra)[extra_pos : extra_pos + y])
            extra_pos += y
            new_pos += y
        old_pos += z
    if new_pos != len(new):
        raise TufotaError(f"bsdiff produced {new_pos} of {len(new)} bytes")


def _diff_member(
    writer: _Writer,
    src: IO[bytes],
    old: _Member,
    new_data: bytes,
    config: DeltaConfig,
    matcher: Any,
) -> None:
    for start in range(0, len(new_data), config.window):
        piece = new_data[start : start + config.window]
        lo = max(0, start - config.window_margin)
        hi = min(old.size, start + len(piece) + config.window_margin)
        if hi <= lo:
            writer.insert(piece)
            continue
        _bsdiff(writer, _read_at(src, old.data + lo, hi - lo), old.data + lo, piece, matcher)


def _diff_tokens(
    writer: _Writer,
    src: IO[bytes],
    old: _Member,
    new_data: bytes,
    config: DeltaConfig,
    matcher: Any,
) -> bool:
    """Diff two gzip members by their token strings; False (nothing written) when they can't be."""
    gzip_magic = b"\x1f\x8b\x08"
    if not config.deflate or not new_data.startswith(gzip_magic):
        return False
    old_data = _read_at(src, old.data, old.size)
    if not old_data.startswith(gzip_magic):
        return False
    limit = min(config.max_tokens, MAX_TOKEN_STRING)
    if max(old.size, len(new_data)) > limit:
        return False
    old_tokens = reproducible_tokens(old_data, limit)
    new_tokens = reproducible_tokens(new_data, limit) if old_tokens is not None else None
    if old_tokens is None or new_tokens is None:
        return False
    writer.begin_deflate(old.data, old.size, len(new_data), len(new_tokens))
    _bsdiff(writer, old_tokens, 0, new_tokens, matcher)
    writer.end_deflate()
    return True


def _load_matcher() -> Any:
    try:
        # Optional: only release engineers who publish deltas install it.
        core = importlib.import_module("bsdiff4.core")
    except ImportError as e:
        raise InputError(
            "delta generation needs the bsdiff4 package: pip install 'tufota[delta]'"
        ) from e
    return core.diff


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _members(path: Path, length: int) -> list[_Member]:
    members = _tar_members(path, length)
    if members is None:
        return [_Member("", 0, 0, length)]
    return members


def _plan(source: list[_Member], result: list[_Member]) -> Iterator[tuple[_Member, _Member | None]]:
    by_name = {m.name: m for m in source}
    loose: dict[bytes, list[_Member]] = {}
    for m in source:
        loose.setdefault(_loose(m.name), []).append(m)
    for m in result:
        match = by_name.get(m.name)
        if match is None:
            match = _closest(m.name, loose.get(_loose(m.name), []))
        yield m, match


def _closest(name: str, candidates: list[_Member]) -> _Member | None:
    """The candidate whose digit runs differ from ``name``'s in the fewest places, if unique.

    ``6.1.0-54/ipv6/x.ko`` picks ``6.1.0-53/ipv6/x.ko`` over ``6.1.0-53/ipv4/x.ko``.
    """
    digits = _DIGITS.findall(name.encode("utf-8", "surrogateescape"))
    scored = sorted(
        (
            sum(
                a != b
                for a, b in zip(
                    digits, _DIGITS.findall(c.name.encode("utf-8", "surrogateescape")), strict=True
                )
            ),
            i,
        )
        for i, c in enumerate(candidates)
    )
    if not scored or (len(scored) > 1 and scored[0][0] == scored[1][0]):
        return None
    return candidates[scored[0][1]]


def make_delta(
    source: Path, result: Path, out: Path, config: DeltaConfig | None = None
) -> DeltaStats:
    """Write a delta that rebuilds ``result`` from ``source`` to ``out``.

    Raises:
        InputError: an image is missing, too large, or bsdiff4 is not installed.
    """
    config = config or DeltaConfig()
    matcher = _load_matcher()
    started = time.monotonic()
    try:
        src_len, res_len = source.stat().st_size, result.stat().st_size
    except OSError as e:
        raise InputError(f"cannot read image: {e}") from e
    if max(src_len, res_len) > config.max_image:
        raise InputError(f"image larger than the delta limit of {config.max_image} bytes")
    stats = DeltaStats(
        source_length=src_len,
        result_length=res_len,
        source_sha256=_hash_file(source),
        result_sha256=_hash_file(result),
    )
    src_members = _members(source, src_len)
    res_members = _members(result, res_len)
    if src_members[0].name == "" or res_members[0].name == "":
        # Either side is not a tar: diff the images as one member each.
        src_members, res_members = [_Member("", 0, 0, src_len)], [_Member("", 0, 0, res_len)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".delta-") as tmpdir:
        tmp = Path(tmpdir)
        writer = _Writer(config, tmp)
        with open(source, "rb") as src, open(result, "rb") as res:
            position = 0
            for new, old in _plan(src_members, res_members):
                stats.members += 1
                # Padding of the previous member and this member's header blocks.
                if new.header > position:
                    writer.insert(_read_at(res, position, new.header - position))
                header = _read_at(res, new.header, new.data - new.header)
                if old is not None and old.data - old.header == len(header):
                    old_header = _read_at(src, old.header, len(header))
                    writer.add(
                        old.header,
                        bytes((b - a) & 0xFF for a, b in zip(old_header, header, strict=True)),
                    )
                else:
                    writer.insert(header)
                data = _read_at(res, new.data, new.size)
                if (
                    old is not None
                    and old.size == new.size
                    and _read_at(src, old.data, old.size) == data
                ):
                    writer.copy(old.data, old.size)
                    stats.copied += 1
                elif old is not None and old.size and new.size:
                    if not _diff_tokens(writer, src, old, data, config, matcher):
                        _diff_member(writer, src, old, data, config, matcher)
                    stats.diffed += 1
                else:
                    writer.insert(data)
                    stats.stored += 1
                position = new.data + new.size
            if res_len > position:
                writer.insert(_read_at(res, position, res_len - position))
        sizes = writer.finish()
        if writer.out_length != res_len:
            raise TufotaError(f"delta covers {writer.out_length} of {res_len} bytes")
        stats.sections = sizes
        stats.tokenized = writer.deflated
        stats.format = DELTA_FORMAT_2 if writer.deflated else DELTA_FORMAT
        part = tmp / "delta"
        with open(part, "wb") as f:
            f.write(
                DELTA_HEADER.pack(
                    DELTA_MAGICS[stats.format],
                    src_len,
                    bytes.fromhex(stats.source_sha256),
                    res_len,
                    bytes.fromhex(stats.result_sha256),
                    sizes["ops"],
                    sizes["diff"],
                    sizes["extra"],
                )
            )
            for name in ("ops", "diff", "extra"):
                stream = writer.files[name]
                stream.seek(0)
                while chunk := stream.read(1 << 20):
                    f.write(chunk)
                stream.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, out)
    stats.delta_length = out.stat().st_size
    stats.seconds = time.monotonic() - started
    stats.peak_rss_mib = _peak_rss_mib()
    return stats


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes there, KiB here


@dataclass(frozen=True)
class DeltaRelease:
    """A delta made for a release: its signed target, its file and what it cost.

    ``target`` is None when the delta saved too little to be published.
    """

    source_version: str
    target: TargetFile | None
    path: Path
    stats: DeltaStats


def _source_target(product: Metadata[Targets], hardware_id: str, version: str) -> TargetFile:
    found = [
        t
        for t in product.signed.targets.values()
        if isinstance(t.custom, dict)
        and t.custom.get("hardware_id") == hardware_id
        and t.custom.get("version") == version
    ]
    if len(found) != 1:
        raise NotFoundError(
            f"{hardware_id} has no signed release {version} to make a delta from"
            if not found
            else f"{hardware_id} {version} has {len(found)} images; cannot pick a delta source"
        )
    return found[0]


def add_deltas(
    product: Metadata[Targets],
    result: TargetFile,
    result_file: Path,
    sources: list[tuple[str, Path]],
    workdir: Path,
    config: DeltaConfig | None = None,
) -> list[DeltaRelease]:
    """Make a delta to ``result`` from each (version, image file) and add it to ``product``.

    Each source file must be the signed image of that version in ``product``
    (length and SHA-256 checked), so a delta always starts from bytes that
    devices of the line were given. A delta larger than ``config.max_ratio``
    of the image is made but not added (``target`` None). Does not bump the
    role version or sign: the caller adds the release in the same role
    version.

    Raises:
        NotFoundError: a source version was never released.
        InputError: a source file is not that release's image, or generation failed.
    """
    config = config or DeltaConfig()
    info = FirmwareInfo.from_custom(result.custom)
    made = []
    for version, path in sources:
        source = _source_target(product, info.hardware_id, version)
        if Version.parse(version) >= Version.parse(info.version):
            raise InputError(f"a delta must start from an older release than {info.version}")
        try:
            length = path.stat().st_size
        except OSError as e:
            raise NotFoundError(f"image of {version} {path}: {e}") from e
        if length != source.length or _hash_file(path) != source.hashes.get("sha256"):
            raise InputError(f"{path} is not the signed image of {info.hardware_id} {version}")
        out = (
            workdir
            / delta_target_path(
                info.hardware_id, info.version, result.path.rsplit("/", 1)[-1], version
            ).rsplit("/", 1)[-1]
        )
        stats = make_delta(path, result_file, out, config)
        target = None
        if worth_publishing(stats, config):
            delta_info = DeltaInfo(
                hardware_id=info.hardware_id,
                source_version=version,
                source_length=source.length,
                source_sha256=source.hashes["sha256"],
                result_target=result.path,
                result_version=info.version,
                result_length=result.length,
                result_sha256=result.hashes["sha256"],
                delta_format=stats.format,
            )
            target_path = delta_target_path(
                info.hardware_id, info.version, result.path.rsplit("/", 1)[-1], version
            )
            target = TargetFile.from_file(target_path, str(out), ["sha256"])
            target.unrecognized_fields["custom"] = delta_info.to_custom()
            product.signed.targets[target_path] = target
        made.append(DeltaRelease(version, target, out, stats))
    return made
