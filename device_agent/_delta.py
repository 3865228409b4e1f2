"""Apply a ``tufota-delta/1`` or ``/2`` delta on the device: stream from the active slot.

The applier is a verifier: it always either produces an image whose length
and SHA-256 equal the *signed full image's* or raises an error with a
specific code, and leaves no file at ``dest``. Deciding whether to try a
delta and falling back to the full image is the orchestrator's job.

Steps (each failure has its own report code):

1. The signed delta info must name this device's hardware line and the very
   full image being installed (``delta_wrong_hardware``, ``delta_result_mismatch``).
2. The source file (the active slot) must have the signed source length and
   SHA-256, hashed here, never assumed (``delta_source_mismatch``).
3. The delta header must repeat the signed source and result facts
   (``delta_source_mismatch`` / ``delta_result_mismatch``) and be well formed
   (``delta_malformed``).
4. Operations are replayed with the output capped at the signed result
   length: more output, or bytes left over in a stream, is ``delta_too_long``;
   a stream that ends early is ``delta_truncated``.
   A DEFLATE operation (``/2`` only) parses a gzip file of the source into
   its token string, rebuilds the new token string and encodes it; a source
   file that is not gzip, a token string that is not well formed or over
   ``MAX_TOKEN_STRING``, or an encoding of another length than declared is
   ``delta_bad_tokens``.
5. The output's length and SHA-256 must equal the signed full image's
   (``delta_result_mismatch``); only then is it renamed to ``dest``.

Memory is bounded by ``DeltaLimits``: one chunk of each stream, the source
chunk and the output chunk, plus xz decoders capped at ``memlimit`` each;
during a DEFLATE operation also one compressed source file and two token
strings, each at most ``MAX_TOKEN_STRING`` (8 MiB). A delta format this
version does not know is refused before it is fetched
(``delta_unsupported_format``). Only the standard library is used (lzma,
hashlib, and :mod:`tufota_core._deflate`, pure Python).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import lzma
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tuf.api.metadata import TargetFile

from device_agent._download import Downloader, DownloadResult, Expected, file_matches
from device_agent._tufclient import TufClient
from tufota_core import InputError, InstallError, VerificationError
from tufota_core._deflate import TokenError, encode_tokens, tokens_of
from tufota_core._delta import (
    DELTA_FORMAT_2,
    DELTA_HEADER,
    DELTA_MAGICS,
    DELTA_UNSUPPORTED_FORMAT,
    MAX_TOKEN_STRING,
    OP_ADD,
    OP_COPY,
    OP_DEFLATE,
    OP_END,
    OP_INSERT,
    DeltaInfo,
    delta_target_path,
    unzigzag,
)

logger = logging.getLogger(__name__)

DELTA_MALFORMED = "delta_malformed"
DELTA_SOURCE_MISMATCH = "delta_source_mismatch"
DELTA_RESULT_MISMATCH = "delta_result_mismatch"
DELTA_TRUNCATED = "delta_truncated"
DELTA_TOO_LONG = "delta_too_long"
DELTA_WRONG_HARDWARE = "delta_wrong_hardware"
DELTA_BAD_TOKENS = "delta_bad_tokens"
DELTA_UNSUPPORTED = DELTA_UNSUPPORTED_FORMAT


@dataclass(frozen=True)
class DeltaLimits:
    """Bounds of delta application, with safe defaults.

    Attributes:
        chunk_size: Bytes handled per step (source read, diff add, write).
        memlimit: Most memory one xz stream decoder may use; a delta that
            needs more is refused as malformed.
        fsync: Flush the reconstructed image to stable storage before the rename.
    """

    chunk_size: int = 256 * 1024
    memlimit: int = 4 * 1024 * 1024
    fsync: bool = True


@dataclass(frozen=True)
class ApplyResult:
    """A verified reconstruction: ``length`` bytes hashing to ``sha256`` at ``path``."""

    path: Path
    length: int
    sha256: str
    delta_length: int


def _error(code: str, message: str) -> VerificationError:
    return VerificationError(message, code=code)


class _Stream:
    """Decompresses one xz section of the delta file in bounded memory.

    Holds at most one input piece and one output piece (``_PIECE`` or the
    size of the read asked for) besides the decoder's dictionary.
    """

    _PIECE = 64 * 1024

    def __init__(self, f: IO[bytes], offset: int, length: int, name: str, limits: DeltaLimits):
        self._f = f
        self._pos = offset
        self._left = length
        self._name = name
        self._decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=limits.memlimit)
        self._buf = b""
        self._off = 0

    def _more(self, want: int) -> bytes:
        try:
            if self._decoder.eof:
                return b""
            if not self._decoder.needs_input:
                return self._decoder.decompress(b"", max_length=want)
            if not self._left:
                return b""
            self._f.seek(self._pos)
            data = self._f.read(min(self._PIECE, self._left))
            if not data:
                raise _error(DELTA_TRUNCATED, f"delta file ends inside its {self._name} stream")
            self._pos += len(data)
            self._left -= len(data)
            return self._decoder.decompress(data, max_length=want)
        except lzma.LZMAError as e:
            raise _error(DELTA_MALFORMED, f"delta {self._name} stream is corrupt: {e}") from e

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or raise ``delta_truncated``."""
        end = self._off + n
        if end <= len(self._buf):
            self._off = end
            return self._buf[end - n : end]
        parts = [self._buf[self._off :]]
        got = len(parts[0])
        self._buf, self._off = b"", 0
        while got < n:
            data = self._more(max(n - got, self._PIECE))
            if not data:
                if self._decoder.eof or (self._decoder.needs_input and not self._left):
                    raise _error(DELTA_TRUNCATED, f"delta {self._name} stream ends early")
                continue
            need = n - got
            if len(data) > need:
                parts.append(data[:need])
                self._buf, self._off = data, need
                got = n
            else:
                parts.append(data)
                got += len(data)
        return b"".join(parts)

    def byte(self) -> int:
        if self._off < len(self._buf):
            self._off += 1
            return self._buf[self._off - 1]
        return self.read(1)[0]

    def varint(self) -> int:
        value = shift = 0
        for _ in range(10):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
        raise _error(DELTA_MALFORMED, f"delta {self._name} stream has an over-long number")

    def finish(self) -> None:
        """The stream must be complete, with nothing after its end."""
        if self._off < len(self._buf):
            raise _error(DELTA_TOO_LONG, f"delta {self._name} stream has bytes left over")
        while not self._decoder.eof:
            data = self._more(1)
            if data:
                raise _error(DELTA_TOO_LONG, f"delta {self._name} stream has bytes left over")
            if self._decoder.needs_input and not self._left:
                raise _error(DELTA_TRUNCATED, f"delta {self._name} stream ends early")
        if self._left or self._decoder.unused_data:
            raise _error(DELTA_TOO_LONG, f"delta {self._name} section has data after its stream")


class _Adder:
    """Bytewise addition mod 256 of two equal-length byte strings, in C via big integers.

    Per byte, (a + b) mod 256 = ((a & 0x7f) + (b & 0x7f)) ^ ((a ^ b) & 0x80): the
    low seven bits cannot carry past bit 7, so whole chunks add at once.
    """

    def __init__(self) -> None:
        self._masks: dict[int, tuple[int, int]] = {}

    def __call__(self, a: bytes, b: bytes) -> bytes:
        n = len(a)
        if not b.strip(b"\0"):
            return a
        masks = self._masks.get(n)
        if masks is None:
            masks = (int.from_bytes(b"\x7f" * n, "little"), int.from_bytes(b"\x80" * n, "little"))
            if len(self._masks) < 4:
                self._masks[n] = masks
        low, high = masks
        x, y = int.from_bytes(a, "little"), int.from_bytes(b, "little")
        return (((x & low) + (y & low)) ^ ((x ^ y) & high)).to_bytes(n, "little")


def _hash_source(source: Path, chunk: int) -> tuple[int, str]:
    h = hashlib.sha256()
    length = 0
    with open(source, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
            length += len(data)
    return length, h.hexdigest()


def check_delta_info(
    info: DeltaInfo,
    *,
    hardware_id: str,
    result_target: str,
    result_length: int,
    result_sha256: str,
) -> None:
    """The signed delta must belong to this hardware line and rebuild this full image.

    Raises:
        VerificationError: ``delta_wrong_hardware`` or ``delta_result_mismatch``.
    """
    if info.hardware_id != hardware_id or not result_target.startswith(f"firmware/{hardware_id}/"):
        raise _error(
            DELTA_WRONG_HARDWARE,
            f"delta is for hardware {info.hardware_id!r}, this device is {hardware_id!r}",
        )
    if (info.result_target, info.result_length, info.result_sha256) != (
        result_target,
        result_length,
        result_sha256,
    ):
        raise _error(
            DELTA_RESULT_MISMATCH, f"delta does not rebuild the signed image {result_target}"
        )


def apply_delta(
    info: DeltaInfo,
    source: Path,
    delta: Path,
    dest: Path,
    *,
    hardware_id: str,
    result_target: str,
    result_length: int,
    result_sha256: str,
    limits: DeltaLimits | None = None,
) -> ApplyResult:
    """Rebuild the signed full image ``result_target`` at ``dest`` from ``source`` and ``delta``.

    ``info`` is the delta target's signed custom field; ``result_*`` come
    from the signed full image's target info, never from the delta.

    Raises:
        VerificationError: with one of the ``DELTA_*`` codes; ``dest`` is untouched.
        InstallError: the image could not be written.
    """
    limits = limits or DeltaLimits()
    check_delta_info(
        info,
        hardware_id=hardware_id,
        result_target=result_target,
        result_length=result_length,
        result_sha256=result_sha256,
    )
    try:
        src_length, src_sha256 = _hash_source(source, limits.chunk_size)
    except OSError as e:
        raise _error(DELTA_SOURCE_MISMATCH, f"cannot read the active image: {e}") from e
    if (src_length, src_sha256) != (info.source_length, info.source_sha256):
        raise _error(
            DELTA_SOURCE_MISMATCH,
            f"the active image is not the delta's source {info.source_version}",
        )
    part = dest.with_name(dest.name + ".delta-part")
    try:
        with open(delta, "rb") as d, open(source, "rb") as src, open(part, "wb") as out:
            delta_length = os.fstat(d.fileno()).st_size
            length, sha256 = _replay(
                d, delta_length, src, src_length, out, info, result_length, limits
            )
            out.flush()
            if limits.fsync:
                os.fsync(out.fileno())
        if length != result_length:
            raise _error(DELTA_TRUNCATED, f"delta rebuilt {length} of {result_length} bytes")
        if sha256 != result_sha256:
            raise _error(
                DELTA_RESULT_MISMATCH,
                f"delta output does not hash to the signed image {result_target}",
            )
        os.replace(part, dest)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise InstallError(f"cannot apply delta: {e}", code="install_failed") from e
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return ApplyResult(dest, length, sha256, delta_length)


def _replay(
    d: IO[bytes],
    delta_length: int,
    src: IO[bytes],
    src_length: int,
    out: IO[bytes],
    info: DeltaInfo,
    result_length: int,
    limits: DeltaLimits,
) -> tuple[int, str]:
    header = d.read(DELTA_HEADER.size)
    if len(header) != DELTA_HEADER.size:
        raise _error(DELTA_TRUNCATED, "delta file is shorter than its header")
    magic, h_src_len, h_src_sha, h_res_len, h_res_sha, ops_len, diff_len, extra_len = (
        DELTA_HEADER.unpack(header)
    )
    if magic != DELTA_MAGICS[info.delta_format]:
        raise _error(DELTA_MALFORMED, f"file is not a {info.delta_format} delta")
    deflate_ok = info.delta_format == DELTA_FORMAT_2
    if (h_src_len, h_src_sha.hex()) != (info.source_length, info.source_sha256):
        raise _error(DELTA_SOURCE_MISMATCH, "delta was made from another source image")
    if (h_res_len, h_res_sha.hex()) != (result_length, info.result_sha256):
        raise _error(DELTA_RESULT_MISMATCH, "delta was made for another result image")
    body = delta_length - DELTA_HEADER.size
    if ops_len + diff_len + extra_len > body:
        raise _error(DELTA_TRUNCATED, "delta file is shorter than its sections")
    if ops_len + diff_len + extra_len < body:
        raise _error(DELTA_TOO_LONG, "delta file has data after its sections")
    base = DELTA_HEADER.size
    ops = _Stream(d, base, ops_len, "ops", limits)
    diff = _Stream(d, base + ops_len, diff_len, "diff", limits)
    extra = _Stream(d, base + ops_len + diff_len, extra_len, "extra", limits)
    add = _Adder()
    h = hashlib.sha256()
    written = cursor = parsed = 0
    chunk = limits.chunk_size
    while True:
        op = ops.byte()
        if op == OP_END:
            break
        if op in (OP_COPY, OP_ADD):
            offset = cursor + unzigzag(ops.varint())
            length = ops.varint()
            if offset < 0 or length < 1 or offset + length > src_length:
                raise _error(DELTA_MALFORMED, "delta reads outside the source image")
            cursor = offset + length
        elif op == OP_INSERT:
            length = ops.varint()
            if length < 1:
                raise _error(DELTA_MALFORMED, "delta has an empty operation")
        elif op == OP_DEFLATE and deflate_ok:
            offset = cursor + unzigzag(ops.varint())
            length, out_length, tokens = ops.varint(), ops.varint(), ops.varint()
            if offset < 0 or length < 1 or offset + length > src_length:
                raise _error(DELTA_MALFORMED, "delta reads outside the source image")
            if written + out_length > result_length:
                raise _error(DELTA_TOO_LONG, "delta writes more than the signed image length")
            cursor = offset + length
            # Each gzip file of the source is parsed once: a delta that parses more
            # than the source holds only burns the device's time.
            parsed += length
            if parsed > src_length:
                raise _error(DELTA_BAD_TOKENS, "delta parses more gzip data than the source holds")
            for piece in _deflate(
                src, offset, length, out_length, tokens, ops, diff, extra, add, chunk
            ):
                out.write(piece)
                h.update(piece)
            written += out_length
            continue
        else:
            raise _error(DELTA_MALFORMED, f"delta has unknown operation {op:#x}")
        if written + length > result_length:
            raise _error(DELTA_TOO_LONG, "delta writes more than the signed image length")
        done = 0
        while done < length:
            n = min(chunk, length - done)
            if op == OP_INSERT:
                data = extra.read(n)
            else:
                src.seek(offset + done)
                data = src.read(n)
                if len(data) != n:
                    raise _error(DELTA_SOURCE_MISMATCH, "the active image changed while read")
                if op == OP_ADD:
                    data = add(data, diff.read(n))
            out.write(data)
            h.update(data)
            done += n
        written += length
    for stream in (ops, diff, extra):
        stream.finish()
    return written, h.hexdigest()


def _deflate(
    src: IO[bytes],
    offset: int,
    length: int,
    out_length: int,
    tokens: int,
    ops: _Stream,
    diff: _Stream,
    extra: _Stream,
    add: _Adder,
    chunk: int,
) -> Iterator[bytes]:
    """Replay one DEFLATE operation's nested operations; yield the encoded gzip file."""
    if max(length, tokens) > MAX_TOKEN_STRING or out_length < 1:
        raise _error(DELTA_BAD_TOKENS, "delta token string is larger than this device allows")
    src.seek(offset)
    data = src.read(length)
    if len(data) != length:
        raise _error(DELTA_SOURCE_MISMATCH, "the active image changed while read")
    try:
        old = tokens_of(data, MAX_TOKEN_STRING)
    except TokenError as e:
        raise _error(DELTA_BAD_TOKENS, f"delta names a source file that is not gzip: {e}") from e
    del data
    new = bytearray()
    cursor = 0
    while (op := ops.byte()) != OP_END:
        if op in (OP_COPY, OP_ADD):
            at = cursor + unzigzag(ops.varint())
            n = ops.varint()
            if at < 0 or n < 1 or at + n > len(old):
                raise _error(DELTA_BAD_TOKENS, "delta reads outside the source token string")
            cursor = at + n
        elif op == OP_INSERT:
            n = ops.varint()
        else:
            raise _error(DELTA_BAD_TOKENS, f"delta has operation {op:#x} inside DEFLATE")
        if n < 1 or len(new) + n > tokens:
            raise _error(DELTA_BAD_TOKENS, "delta token string is longer than declared")
        if op == OP_COPY:
            new += old[at : at + n]
            continue
        for done in range(0, n, chunk):
            m = min(chunk, n - done)
            if op == OP_ADD:
                new += add(old[at + done : at + done + m], diff.read(m))
            else:
                new += extra.read(m)
    if len(new) != tokens:
        raise _error(DELTA_BAD_TOKENS, "delta token string is shorter than declared")
    del old
    produced = 0
    try:
        for piece in encode_tokens(new, chunk):
            produced += len(piece)
            if produced > out_length:
                break
            yield piece
    except TokenError as e:
        raise _error(DELTA_BAD_TOKENS, f"delta token string is malformed: {e}") from e
    if produced != out_length:
        raise _error(DELTA_BAD_TOKENS, "delta token string encodes to another length")


# -- choosing and fetching a delta (the orchestrator's side) -----------------------------


@dataclass(frozen=True)
class DeltaOutcome:
    """How the new image was obtained.

    Attributes:
        used: True when the image was rebuilt from a delta.
        source_version: The installed version the delta started from.
        fetched: Bytes received for the delta (0 when reused).
        delta_length: Size of the delta target.
        fallback_code: Why a delta that was tried was not used (None: not tried or used).
    """

    used: bool
    source_version: str | None = None
    fetched: int = 0
    delta_length: int = 0
    fallback_code: str | None = None


NOT_TRIED = DeltaOutcome(used=False)


def _marker(download_dir: Path, result_sha256: str) -> Path:
    # A delta for this image failed once: later cycles fetch the full image.
    return download_dir / f"{result_sha256}.no-delta"


def fetch_via_delta(
    client: TufClient,
    downloader: Downloader,
    *,
    hardware_id: str,
    installed_version: str | None,
    active_image: Path | None,
    result: TargetFile,
    dest: Path,
    limits: DeltaLimits | None = None,
) -> tuple[DownloadResult | None, DeltaOutcome]:
    """Try to obtain ``result`` at ``dest`` through a signed delta from the installed image.

    Returns ``(None, outcome)`` when the caller must download the full image:
    no delta is signed for this pair, the slot holds no readable image, or a
    delta was tried and refused (``outcome.fallback_code`` says why; the
    refusal is remembered so the next cycle goes straight to the full image).

    Raises:
        TransportError: the delta download was cut; its partial is kept and
            the next cycle resumes it, as for full images.
        InstallError: the image could not be written (e.g. disk full).
    """
    sha256 = result.hashes.get("sha256")
    if installed_version is None or active_image is None or sha256 is None:
        return None, NOT_TRIED
    if _marker(client.download_dir, sha256).exists() or not active_image.is_file():
        return None, NOT_TRIED
    if dest.is_file() and file_matches(dest, Expected.from_target(result)) is not None:
        return None, NOT_TRIED  # already rebuilt or downloaded: the full path reuses it
    file_name = result.path.rsplit("/", 1)[-1]
    try:
        version = result.path.split("/")[2]
        path = delta_target_path(hardware_id, version, file_name, installed_version)
    except (IndexError, InputError):
        return None, NOT_TRIED
    try:
        target = client.targetinfo(path)
    except VerificationError as e:
        logger.warning("delta %s is not trusted (%s): fetching the full image", path, e.code)
        return None, DeltaOutcome(used=False, fallback_code=e.code)
    if target is None:
        return None, NOT_TRIED
    received = 0
    try:
        try:
            info = DeltaInfo.from_custom(target.custom)
        except InputError as e:
            code = DELTA_UNSUPPORTED if e.code == DELTA_UNSUPPORTED else DELTA_MALFORMED
            raise _error(code, f"delta {path}: {e}") from e
        check_delta_info(
            info,
            hardware_id=hardware_id,
            result_target=result.path,
            result_length=result.length,
            result_sha256=sha256,
        )
        if info.source_version != installed_version:
            raise _error(DELTA_SOURCE_MISMATCH, f"delta {path} starts from {info.source_version}")
        if target.length >= result.length:
            return None, NOT_TRIED
        staged = client.download_dir / f"{target.hashes.get('sha256', 'delta')}.tfdelta"
        fetched = client.download(target, staged, downloader)
        received = fetched.fetched
        applied = apply_delta(
            info,
            active_image,
            staged,
            dest,
            hardware_id=hardware_id,
            result_target=result.path,
            result_length=result.length,
            result_sha256=sha256,
            limits=limits,
        )
        staged.unlink(missing_ok=True)
    except VerificationError as e:
        logger.warning("delta %s refused (%s): %s; fetching the full image", path, e.code, e)
        with contextlib.suppress(OSError):
            _marker(client.download_dir, sha256).touch()
        return None, DeltaOutcome(
            used=False,
            source_version=installed_version,
            delta_length=target.length,
            fetched=received,
            fallback_code=e.code,
        )
    logger.info(
        "rebuilt %s from a %d-byte delta (%d fetched) of the installed %s",
        result.path,
        target.length,
        fetched.fetched,
        installed_version,
    )
    done = DownloadResult(dest, applied.sha256, fetched.fetched, fetched.resumed_from)
    return done, DeltaOutcome(
        used=True,
        source_version=installed_version,
        fetched=fetched.fetched,
        delta_length=target.length,
    )


def delta_message(outcome: DeltaOutcome, fetched: int, length: int) -> str:
    """The "downloaded" report's message: how the image came, and what it cost."""
    if outcome.used:
        return (
            f"delta from {outcome.source_version}: fetched {fetched} of {length} bytes "
            f"({length - fetched} saved)"
        )
    if outcome.fallback_code is not None:
        return f"delta refused ({outcome.fallback_code}); full image: fetched {fetched} bytes"
    return f"full image: fetched {fetched} bytes"
