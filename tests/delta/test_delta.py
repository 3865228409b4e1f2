"""Deltas: generation rebuilds the result exactly; the device applier refuses every hostile delta.

Real files throughout: tar images built with ``tarfile``, deltas made by
``signing._delta.make_delta`` and replayed by ``device_agent._delta.apply_delta``.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import random
import tarfile
from pathlib import Path

import pytest

from device_agent._delta import (
    DELTA_MALFORMED,
    DELTA_RESULT_MISMATCH,
    DELTA_SOURCE_MISMATCH,
    DELTA_TOO_LONG,
    DELTA_TRUNCATED,
    DELTA_WRONG_HARDWARE,
    DeltaLimits,
    _Adder,
    apply_delta,
)
from signing._delta import DeltaConfig, make_delta, worth_publishing
from tufota_core import InputError, VerificationError
from tufota_core._delta import (
    DELTA_HEADER,
    DELTA_MAGIC,
    OP_COPY,
    OP_END,
    OP_INSERT,
    DeltaInfo,
    delta_target_path,
    encode_varint,
    unzigzag,
    zigzag,
)

HW = "gw-100"
RESULT = "firmware/gw-100/2.0.0/image.tar"


def _binary(seed: int, size: int) -> bytes:
    """Code-like bytes: repeated instruction patterns with varying operands."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data
    ops = [b"\x48\x89\xdf\xe8", b"\x0f\x84", b"\x41\x89\xc7", b"\x48\x8b\x44\x24", b"\xc3"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(ops) + rng.randbytes(rng.choice((0, 1, 4)))
    return bytes(out[:size])


def _shift(data: bytes, seed: int) -> bytes:
    """A recompiled copy: an insertion, a patched region, operands bumped."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data
    out = bytearray(data)
    at = len(out) // 3
    out[at:at] = rng.randbytes(300)
    for _ in range(40):
        i = rng.randrange(len(out) - 4)
        out[i] = (out[i] + 8) & 0xFF
    return bytes(out)


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _info(source: Path, result: Path, hardware: str = HW) -> DeltaInfo:
    return DeltaInfo(
        hardware_id=hardware,
        source_version="1.0.0",
        source_length=source.stat().st_size,
        source_sha256=_sha(source),
        result_target=f"firmware/{hardware}/2.0.0/image.tar",
        result_version="2.0.0",
        result_length=result.stat().st_size,
        result_sha256=_sha(result),
    )


def _apply(info: DeltaInfo, source: Path, delta: Path, dest: Path, **kw: object) -> object:
    return apply_delta(
        info,
        source,
        delta,
        dest,
        hardware_id=kw.pop("hardware_id", HW),  # type: ignore[arg-type]
        result_target=kw.pop("result_target", info.result_target),  # type: ignore[arg-type]
        result_length=kw.pop("result_length", info.result_length),  # type: ignore[arg-type]
        result_sha256=kw.pop("result_sha256", info.result_sha256),  # type: ignore[arg-type]
        limits=DeltaLimits(chunk_size=4096, fsync=False),
    )


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    lib = _binary(1, 200_000)
    old = {
        "usr/lib/6.1.0-53/libfoo.so": lib,
        "usr/lib/6.1.0-53/same.ko": _binary(2, 50_000),
        "usr/share/removed.txt": b"gone\n" * 100,
        "etc/conf": b"a = 1\n",
    }
    new = {
        "usr/lib/6.1.0-54/libfoo.so": _shift(lib, 3),
        "usr/lib/6.1.0-54/same.ko": old["usr/lib/6.1.0-53/same.ko"],
        "usr/share/new.txt": b"brand new\n" * 50,
        "etc/conf": b"a = 2\nb = 3\n",
    }
    return _tar(tmp_path / "old.tar", old), _tar(tmp_path / "new.tar", new)


@pytest.fixture
def delta(images: tuple[Path, Path], tmp_path: Path) -> Path:
    out = tmp_path / "d.tfdelta"
    make_delta(*images, out)
    return out


def test_delta_rebuilds_the_new_tar_image_exactly_and_is_small(
    images: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = images
    out = tmp_path / "d.tfdelta"
    stats = make_delta(old, new, out)
    assert (stats.members, stats.copied, stats.diffed, stats.stored) == (4, 1, 2, 1)
    assert stats.ratio < 0.05
    assert worth_publishing(stats, DeltaConfig())
    dest = tmp_path / "slot-b.img"
    _apply(_info(old, new), old, out, dest)
    assert dest.read_bytes() == new.read_bytes()


def test_raw_images_and_windows_rebuild_exactly(tmp_path: Path) -> None:
    old, new = tmp_path / "old.img", tmp_path / "new.img"
    data = _binary(7, 300_000)
    old.write_bytes(data)
    new.write_bytes(_shift(data, 8) + b"tail")
    out = tmp_path / "d.tfdelta"
    stats = make_delta(old, new, out, DeltaConfig(window=64_000, window_margin=8_000))
    assert stats.members == 1
    assert stats.ratio < 0.2
    dest = tmp_path / "slot-b.img"
    _apply(_info(old, new), old, out, dest)
    assert dest.read_bytes() == new.read_bytes()


def test_a_delta_that_saves_too_little_is_not_worth_publishing(tmp_path: Path) -> None:
    old, new = tmp_path / "old.img", tmp_path / "new.img"
    old.write_bytes(random.Random(1).randbytes(50_000))  # noqa: S311
    new.write_bytes(random.Random(2).randbytes(50_000))  # noqa: S311
    stats = make_delta(old, new, tmp_path / "d.tfdelta")
    assert not worth_publishing(stats, DeltaConfig())


def test_adder_matches_bytewise_addition_mod_256() -> None:
    rng = random.Random(5)  # noqa: S311
    a, b = rng.randbytes(10_001), rng.randbytes(10_001)
    assert _Adder()(a, b) == bytes((x + y) & 0xFF for x, y in zip(a, b, strict=True))


def test_zigzag_and_varint_round_trip() -> None:
    for value in (0, 1, -1, 63, -64, 1 << 40, -(1 << 40)):
        assert unzigzag(zigzag(value)) == value
    assert encode_varint(300) == b"\xac\x02"


def _craft(
    path: Path,
    info: DeltaInfo,
    ops: bytes,
    extra: bytes = b"",
    diff: bytes = b"",
    tail: bytes = b"",
) -> Path:
    """A hand-made delta file whose header repeats ``info`` faithfully."""
    small = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}]
    sections = [lzma.compress(s, format=lzma.FORMAT_XZ, filters=small) for s in (ops, diff, extra)]
    header = DELTA_HEADER.pack(
        DELTA_MAGIC,
        info.source_length,
        bytes.fromhex(info.source_sha256),
        info.result_length,
        bytes.fromhex(info.result_sha256),
        *(len(s) for s in sections),
    )
    path.write_bytes(header + b"".join(sections) + tail)
    return path


def _refused(code: str, call: object) -> None:
    with pytest.raises(VerificationError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.code == code


def test_result_that_does_not_hash_to_the_signed_image_is_refused(
    images: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = images
    forged = tmp_path / "forged.tar"
    forged.write_bytes(new.read_bytes()[:-1] + b"\x01")  # same length, other bytes
    info = _info(old, forged)
    # A delta that is well formed, names the signed image, and writes other bytes.
    d = _craft(tmp_path / "x.tfdelta", info, bytes([OP_COPY, 0, *encode_varint(100), OP_END]))
    d2 = _craft(
        tmp_path / "y.tfdelta",
        info,
        bytes([OP_INSERT, *encode_varint(info.result_length), OP_END]),
        extra=new.read_bytes(),
    )
    dest = tmp_path / "slot-b.img"
    _refused(DELTA_TRUNCATED, lambda: _apply(info, old, d, dest))
    _refused(DELTA_RESULT_MISMATCH, lambda: _apply(info, old, d2, dest))
    assert not dest.exists()
    assert list(tmp_path.glob("*.delta-part")) == []


def test_signed_delta_for_another_full_image_is_refused(
    images: tuple[Path, Path], delta: Path, tmp_path: Path
) -> None:
    old, new = images
    info = _info(old, new)
    _refused(
        DELTA_RESULT_MISMATCH,
        lambda: _apply(info, old, delta, tmp_path / "o", result_sha256="0" * 64),
    )


def test_delta_for_another_source_image_is_refused(
    images: tuple[Path, Path], delta: Path, tmp_path: Path
) -> None:
    old, new = images
    info = _info(old, new)
    other = tmp_path / "other-active.img"
    other.write_bytes(old.read_bytes()[:-1] + b"\x07")
    dest = tmp_path / "slot-b.img"
    # The active slot does not hold the signed source.
    _refused(DELTA_SOURCE_MISMATCH, lambda: _apply(info, other, delta, dest))
    # The signed info names the active image, but the delta was made from another one.
    _refused(DELTA_SOURCE_MISMATCH, lambda: _apply(_info(other, new), other, delta, dest))
    assert not dest.exists()


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9, 0.999])
def test_truncated_delta_is_refused(
    images: tuple[Path, Path], delta: Path, tmp_path: Path, keep: float
) -> None:
    old, new = images
    cut = tmp_path / "cut.tfdelta"
    data = delta.read_bytes()
    cut.write_bytes(data[: int(len(data) * keep)])
    _refused(DELTA_TRUNCATED, lambda: _apply(_info(old, new), old, cut, tmp_path / "o"))


def test_endless_delta_is_refused_at_the_signed_length(
    images: tuple[Path, Path], delta: Path, tmp_path: Path
) -> None:
    old, new = images
    info = _info(old, new)
    big = info.result_length * 50
    endless = _craft(
        tmp_path / "e.tfdelta",
        info,
        bytes([OP_INSERT, *encode_varint(big), OP_END]),
        extra=b"\0" * big,
    )
    _refused(DELTA_TOO_LONG, lambda: _apply(info, old, endless, tmp_path / "o"))
    many = _craft(
        tmp_path / "m.tfdelta",
        info,
        # Copy the first source byte again and again: -1 steps back over it.
        bytes([OP_COPY, 0, 1])
        + bytes([OP_COPY, zigzag(-1), 1]) * info.result_length
        + bytes([OP_END]),
    )
    _refused(DELTA_TOO_LONG, lambda: _apply(info, old, many, tmp_path / "o"))
    trailing = tmp_path / "t.tfdelta"
    trailing.write_bytes(delta.read_bytes() + b"more")
    _refused(DELTA_TOO_LONG, lambda: _apply(info, old, trailing, tmp_path / "o"))


def test_delta_for_another_hardware_line_is_refused(
    images: tuple[Path, Path], delta: Path, tmp_path: Path
) -> None:
    old, new = images
    info = _info(old, new, hardware="gw-200")
    _refused(
        DELTA_WRONG_HARDWARE,
        lambda: _apply(info, old, delta, tmp_path / "o", result_target=RESULT),
    )


@pytest.mark.parametrize(
    "ops",
    [
        bytes([0x09, OP_END]),  # unknown operation
        bytes([OP_COPY, *encode_varint(zigzag(10**9)), 5, OP_END]),  # outside the source
        bytes([OP_COPY, *encode_varint(zigzag(-1)), 5, OP_END]),  # before the source
        bytes([OP_INSERT, 0, OP_END]),  # empty operation
        bytes([OP_INSERT, *([0xFF] * 12)]),  # over-long number
    ],
)
def test_malformed_delta_is_refused(images: tuple[Path, Path], tmp_path: Path, ops: bytes) -> None:
    old, new = images
    info = _info(old, new)
    bad = _craft(tmp_path / "bad.tfdelta", info, ops)
    _refused(DELTA_MALFORMED, lambda: _apply(info, old, bad, tmp_path / "o"))


def test_corrupt_stream_and_bad_magic_are_malformed(
    images: tuple[Path, Path], delta: Path, tmp_path: Path
) -> None:
    old, new = images
    info = _info(old, new)
    data = bytearray(delta.read_bytes())
    data[DELTA_HEADER.size + 20] ^= 0xFF
    corrupt = tmp_path / "c.tfdelta"
    corrupt.write_bytes(bytes(data))
    _refused(DELTA_MALFORMED, lambda: _apply(info, old, corrupt, tmp_path / "o"))
    magic = tmp_path / "m.tfdelta"
    magic.write_bytes(b"NOTADELT" + delta.read_bytes()[8:])
    _refused(DELTA_MALFORMED, lambda: _apply(info, old, magic, tmp_path / "o"))


def test_xz_stream_needing_more_memory_than_the_limit_is_refused(
    images: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = images
    info = _info(old, new)
    filters = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 30}]
    ops = lzma.compress(bytes([OP_END]), format=lzma.FORMAT_XZ, filters=filters)
    empty = lzma.compress(b"", format=lzma.FORMAT_XZ, filters=[{"id": lzma.FILTER_LZMA2}])
    header = DELTA_HEADER.pack(
        DELTA_MAGIC,
        info.source_length,
        bytes.fromhex(info.source_sha256),
        info.result_length,
        bytes.fromhex(info.result_sha256),
        len(ops),
        len(empty),
        len(empty),
    )
    hungry = tmp_path / "h.tfdelta"
    hungry.write_bytes(header + ops + empty + empty)
    _refused(DELTA_MALFORMED, lambda: _apply(info, old, hungry, tmp_path / "o"))


def test_delta_info_round_trips_and_rejects_bad_fields(images: tuple[Path, Path]) -> None:
    info = _info(*images)
    assert DeltaInfo.from_custom(info.to_custom()) == info
    custom = info.to_custom()
    custom["result"]["target"] = "firmware/gw-200/2.0.0/image.tar"
    with pytest.raises(InputError, match="not a firmware image of gw-100"):
        DeltaInfo.from_custom(custom)
    custom = info.to_custom()
    custom["source"]["sha256"] = "XYZ"
    with pytest.raises(InputError, match="source hash"):
        DeltaInfo.from_custom(custom)
    with pytest.raises(InputError, match="not a tufota delta"):
        DeltaInfo.from_custom({"hardware_id": HW})
    assert delta_target_path(HW, "2.0.0", "image.tar", "1.0.0") == (
        "firmware/gw-100/2.0.0/image.tar.from-1.0.0.tfdelta"
    )


def test_renamed_members_pair_with_the_closest_name_not_a_sibling(tmp_path: Path) -> None:
    v4, v6 = _binary(11, 40_000), _binary(12, 40_000)
    old = _tar(tmp_path / "old.tar", {"m/6.1.0-53/ipv4/x.ko": v4, "m/6.1.0-53/ipv6/x.ko": v6})
    new = _tar(
        tmp_path / "new.tar",
        {"m/6.1.0-54/ipv4/x.ko": _shift(v4, 13), "m/6.1.0-54/ipv6/x.ko": _shift(v6, 14)},
    )
    stats = make_delta(old, new, tmp_path / "d.tfdelta")
    assert (stats.diffed, stats.stored) == (2, 0)
    assert stats.ratio < 0.1
    dest = tmp_path / "slot-b.img"
    _apply(_info(old, new), old, tmp_path / "d.tfdelta", dest)
    assert dest.read_bytes() == new.read_bytes()
