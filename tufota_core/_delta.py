"""Delta updates on the wire: the delta file format and the delta target's ``custom`` field.

A delta turns one signed full image (the *source*, already in a device's
active slot) into the next signed full image of the same product line (the
*result*). It is published as its own TUF target, signed by the product-line
key, beside the result's full image.

Delta file (``tufota-delta/1`` and ``/2``), all integers little-endian::

    header   magic "TUFOTAD1" (or "TUFOTAD2") | source length u64 | source sha256 (32)
             | result length u64 | result sha256 (32)
             | ops length u64 | diff length u64 | extra length u64
    ops      xz stream of operations (below), ending with END
    diff     xz stream of bytes added (mod 256) to source bytes by ADD
    extra    xz stream of literal bytes for INSERT

    operation  COPY   0x01 varint(zigzag(source offset - cursor)) varint(length)
               ADD    0x02 varint(zigzag(source offset - cursor)) varint(length)
               INSERT 0x03 varint(length)
               END    0x00
    /2 only:   DEFLATE 0x04 varint(zigzag(source offset - cursor)) varint(source length)
                      varint(result length) varint(token string length)
                      nested COPY / ADD / INSERT operations, END

``cursor`` is the end of the previous source read (0 at start). Every length
is >= 1, so an operation always writes at least one byte.

DEFLATE rebuilds a gzip file that the image carries recompressed (a
changelog rewritten each release): the source bytes it names are a gzip
file whose token string (:mod:`tufota_core._deflate`) the nested operations
read from, with their own cursor starting at 0 and the same diff and extra
streams; they write the new file's token string (of the stated length),
which is encoded back into ``result length`` bytes of the image. The
generator uses it only after checking that both files re-encode bit for bit.
A delta is ``/2`` only when it has a DEFLATE operation, so devices that know
only ``/1`` keep using the other deltas; an unknown format is refused with
its own code (``delta_unsupported_format``) before anything is fetched.

Invariants:
* The header only repeats what the signed ``custom`` field says; an applier
  compares the two and then trusts neither for the result: the reconstructed
  image is checked against the length and hash of the signed full image.
* ``DeltaInfo.from_custom(info.to_custom()) == info``, and ``from_custom``
  accepts only what ``__post_init__`` validates.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

from tufota_core._errors import InputError
from tufota_core._names import FIRMWARE_PREFIX, check_hardware_id, firmware_target_path
from tufota_core._semver import Version

DELTA_FORMAT = "tufota-delta/1"
DELTA_FORMAT_2 = "tufota-delta/2"
DELTA_MAGIC = b"TUFOTAD1"
DELTA_MAGIC_2 = b"TUFOTAD2"
# Format -> header magic, for the formats this version reads and writes.
DELTA_MAGICS = {DELTA_FORMAT: DELTA_MAGIC, DELTA_FORMAT_2: DELTA_MAGIC_2}
DELTA_UNSUPPORTED_FORMAT = "delta_unsupported_format"
# Largest token string of one DEFLATE operation (either side): bounds a device's memory.
MAX_TOKEN_STRING = 8 * 1024 * 1024
# magic, source length, source sha256, result length, result sha256, three section lengths
DELTA_HEADER = struct.Struct("<8sQ32sQ32sQQQ")
DELTA_SUFFIX = ".tfdelta"

OP_END = 0x00
OP_COPY = 0x01
OP_ADD = 0x02
OP_INSERT = 0x03
OP_DEFLATE = 0x04

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def encode_varint(value: int) -> bytes:
    """LEB128 encoding of a non-negative integer."""
    if value < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def zigzag(value: int) -> int:
    """Map a signed integer to a non-negative one (0, -1, 1, -2 -> 0, 1, 2, 3)."""
    return value * 2 if value >= 0 else -value * 2 - 1


def unzigzag(value: int) -> int:
    """Inverse of :func:`zigzag`."""
    return value >> 1 if not value & 1 else -((value + 1) >> 1)


def delta_target_path(hardware_id: str, version: str, file_name: str, source_version: str) -> str:
    """``firmware/<hw>/<version>/<file>.from-<source version>.tfdelta``.

    The delta sits beside the full image it reconstructs, so the product
    line's delegation (``firmware/<hw>/*/*``) covers it and no other role can
    sign it.
    """
    Version.parse(source_version)
    return firmware_target_path(
        hardware_id, version, f"{file_name}.from-{source_version}{DELTA_SUFFIX}"
    )


def _check_sha256(value: str, what: str) -> None:
    if not _SHA256.match(value):
        raise InputError(f"{what} is not a lowercase hex SHA-256 digest")


@dataclass(frozen=True)
class DeltaInfo:
    """What a delta target's ``custom`` field promises.

    Attributes:
        hardware_id: Product line of both images.
        source_version, source_length, source_sha256: The image the delta
            starts from; a device applies the delta only when its active slot
            holds exactly these bytes.
        result_target: Target path of the signed full image the delta rebuilds.
        result_version, result_length, result_sha256: That full image.
        delta_format: ``tufota-delta/1`` or ``/2`` (the file's header magic must agree).
    """

    hardware_id: str
    source_version: str
    source_length: int
    source_sha256: str
    result_target: str
    result_version: str
    result_length: int
    result_sha256: str
    delta_format: str = DELTA_FORMAT

    def __post_init__(self) -> None:
        if self.delta_format not in DELTA_MAGICS:
            raise InputError(
                f"delta format {self.delta_format!r} is not supported",
                code=DELTA_UNSUPPORTED_FORMAT,
            )
        check_hardware_id(self.hardware_id)
        Version.parse(self.source_version)
        Version.parse(self.result_version)
        for length, what in ((self.source_length, "source"), (self.result_length, "result")):
            if isinstance(length, bool) or not isinstance(length, int) or length < 0:
                raise InputError(f"delta {what} length must be a non-negative integer")
        _check_sha256(self.source_sha256, "delta source hash")
        _check_sha256(self.result_sha256, "delta result hash")
        prefix = f"{FIRMWARE_PREFIX}/{self.hardware_id}/{self.result_version}/"
        if not self.result_target.startswith(prefix) or "/" in self.result_target[len(prefix) :]:
            raise InputError(
                f"delta result target {self.result_target!r} is not a firmware image of "
                f"{self.hardware_id} {self.result_version}"
            )

    def to_custom(self) -> dict[str, Any]:
        """The JSON object stored as the delta target's ``custom`` field."""
        return {
            "delta_format": self.delta_format,
            "hardware_id": self.hardware_id,
            "source": {
                "version": self.source_version,
                "length": self.source_length,
                "sha256": self.source_sha256,
            },
            "result": {
                "target": self.result_target,
                "version": self.result_version,
                "length": self.result_length,
                "sha256": self.result_sha256,
            },
        }

    @classmethod
    def from_custom(cls, custom: Any) -> DeltaInfo:
        """Read a delta target's ``custom`` field.

        Raises:
            InputError: not a delta, a field is missing or malformed, or (code
                ``delta_unsupported_format``) a delta format this version does not know.
        """
        if not is_delta_custom(custom):
            raise InputError("target is not a tufota delta")
        fmt = custom["delta_format"]
        if not isinstance(fmt, str) or fmt not in DELTA_MAGICS:
            raise InputError(
                f"delta format {custom['delta_format']!r} is not supported "
                f"(known: {', '.join(DELTA_MAGICS)})",
                code=DELTA_UNSUPPORTED_FORMAT,
            )
        try:
            source, result = custom["source"], custom["result"]
            if not isinstance(source, dict) or not isinstance(result, dict):
                raise TypeError("source and result must be objects")
            return cls(
                hardware_id=str(custom["hardware_id"]),
                source_version=str(source["version"]),
                source_length=source["length"],
                source_sha256=str(source["sha256"]),
                result_target=str(result["target"]),
                result_version=str(result["version"]),
                result_length=result["length"],
                result_sha256=str(result["sha256"]),
                delta_format=str(custom["delta_format"]),
            )
        except (KeyError, TypeError) as e:
            raise InputError(f"delta custom field is malformed: {e}") from e


def is_delta_custom(custom: Any) -> bool:
    """True when a target's ``custom`` field declares a delta (of any format version).

    Readers that list firmware releases skip these targets; only the delta
    reader parses them.
    """
    return isinstance(custom, dict) and "delta_format" in custom
