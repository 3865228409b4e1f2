"""Gzip members travel as token diffs: bit-exact round trips, small deltas, hostile ones refused.

Real gzip files: made by GNU gzip when the machine has it (as Debian packages
make their changelogs), by zlib at every kind of block, and the machine's own
``/usr/share/doc/*/changelog.Debian.gz`` files, which no one here wrote.
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import random
import shutil
import subprocess
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from device_agent._delta import (
    DELTA_BAD_TOKENS,
    DELTA_MALFORMED,
    DELTA_UNSUPPORTED,
    DeltaLimits,
    apply_delta,
)
from signing._delta import DeltaConfig, make_delta
from tufota_core import InputError, VerificationError
from tufota_core._deflate import TokenError, encode_tokens, reproducible_tokens, tokens_of
from tufota_core._delta import (
    DELTA_FORMAT,
    DELTA_FORMAT_2,
    DELTA_HEADER,
    DELTA_MAGIC,
    DELTA_MAGIC_2,
    MAX_TOKEN_STRING,
    OP_COPY,
    OP_DEFLATE,
    OP_END,
    OP_INSERT,
    DeltaInfo,
    encode_varint,
    zigzag,
)

from .test_delta import _binary, _info, _sha, _tar

HW = "gw-100"
LIMIT = MAX_TOKEN_STRING
WORDS = (
    b"fix crash in the TLS 1.3 handshake when the peer sends an empty certificate list "
    b"CVE-2025 bump abi openssl debian security update release notes added removed "
    b"deprecated x509 verify buffer overread timing side channel provider legacy"
).split()


def _changelog(seed: int, entries: int) -> bytes:
    """Changelog-like text: dated entries of words, newest first."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data
    out = []
    for n in range(entries, 0, -1):
        lines = [b" * " + b" ".join(rng.choices(WORDS, k=rng.randint(6, 14))) for _ in range(4)]
        out.append(b"Changes between 3.0.%d and 3.0.%d [%d Jan 2026]\n\n" % (n, n + 1, n % 28 + 1))
        out.append(b"\n".join(lines) + b"\n\n")
    return b"".join(out)


def _gnu_gzip(data: bytes, level: int = 9) -> bytes:
    tool = shutil.which("gzip")
    if tool is None:
        pytest.skip("GNU gzip is not installed")
    return subprocess.run(
        [tool, f"-{level}", "-n"], input=data, capture_output=True, check=True
    ).stdout


def _zlib_gzip(data: bytes, level: int) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def _system_gz() -> list[Path]:
    return sorted(Path("/usr/share/doc").glob("*/changelog.Debian.gz"))[:25]


@pytest.mark.parametrize("level", [1, 6, 9])
def test_gnu_gzip_members_round_trip_bit_for_bit(level: int) -> None:
    data = _gnu_gzip(_changelog(1, 400), level)
    tokens = tokens_of(data, LIMIT)
    assert b"".join(encode_tokens(tokens, chunk=4096)) == data


@pytest.mark.parametrize("level", [0, 1, 6, 9])
@pytest.mark.parametrize(
    "payload",
    [b"", b"x", bytes(range(256)) * 300, b"\xff" * 70_000, random.Random(5).randbytes(90_000)],  # noqa: S311
    ids=["empty", "one", "all-bytes", "ff-run", "random"],
)
def test_zlib_members_of_every_block_type_round_trip(level: int, payload: bytes) -> None:
    data = _zlib_gzip(payload, level)
    assert reproducible_tokens(data, LIMIT) is not None


def test_the_machines_own_gzip_files_round_trip() -> None:
    found = _system_gz()
    if not found:
        pytest.skip("no changelog.Debian.gz under /usr/share/doc")
    for path in found:
        data = path.read_bytes()
        assert b"".join(encode_tokens(tokens_of(data, LIMIT))) == data, path


def test_not_gzip_trailing_data_and_oversized_streams_are_token_errors() -> None:
    data = _zlib_gzip(_changelog(2, 50), 9)
    for bad in (b"plain text", data + data, data[:-9], data[:40]):
        with pytest.raises(TokenError):
            tokens_of(bad, LIMIT)
    with pytest.raises(TokenError, match="exceeds"):
        tokens_of(data, 100)


def test_mutated_inputs_raise_only_token_errors() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    data = _zlib_gzip(_changelog(3, 30), 9)
    tokens = tokens_of(data, LIMIT)
    for _ in range(400):
        for source, parse in ((data, lambda b: tokens_of(b, LIMIT)), (tokens, _encode)):
            bad = bytearray(source)
            for _ in range(rng.randint(1, 4)):
                bad[rng.randrange(len(bad))] = rng.randrange(256)
            if rng.random() < 0.3:
                del bad[rng.randrange(len(bad)) :]
            with contextlib.suppress(TokenError):
                parse(bytes(bad))


def _encode(tokens: bytes) -> bytes:
    return b"".join(encode_tokens(tokens))


# -- deltas ------------------------------------------------------------------------------


def _images(tmp: Path, gz_old: bytes, gz_new: bytes) -> tuple[Path, Path]:
    lib = _binary(31, 60_000)
    old = _tar(tmp / "old.tar", {"usr/lib/a.so": lib, "usr/share/doc/p/changelog.gz": gz_old})
    new = _tar(tmp / "new.tar", {"usr/lib/a.so": lib, "usr/share/doc/p/changelog.gz": gz_new})
    return old, new


def _apply(info: DeltaInfo, source: Path, delta: Path, dest: Path) -> object:
    return apply_delta(
        info,
        source,
        delta,
        dest,
        hardware_id=HW,
        result_target=info.result_target,
        result_length=info.result_length,
        result_sha256=info.result_sha256,
        limits=DeltaLimits(chunk_size=4096, fsync=False),
    )


def _v2(info: DeltaInfo) -> DeltaInfo:
    return DeltaInfo(**{**info.__dict__, "delta_format": DELTA_FORMAT_2})


def test_a_recompressed_changelog_costs_its_new_entries_not_the_whole_file(
    tmp_path: Path,
) -> None:
    text = _changelog(4, 600)
    old, new = _images(
        tmp_path, _gnu_gzip(text), _gnu_gzip(_changelog(9, 3).replace(b"3.0.", b"3.1.") + text)
    )
    tokens = make_delta(old, new, tmp_path / "t.tfdelta")
    raw = make_delta(old, new, tmp_path / "r.tfdelta", DeltaConfig(deflate=False))

    assert (tokens.tokenized, tokens.format) == (1, DELTA_FORMAT_2)
    assert (raw.tokenized, raw.format) == (0, DELTA_FORMAT)
    assert tokens.delta_length * 5 < raw.delta_length
    dest = tmp_path / "slot-b.img"
    _apply(_v2(_info(old, new)), old, tmp_path / "t.tfdelta", dest)
    assert dest.read_bytes() == new.read_bytes()


def test_gzip_members_over_the_token_limit_stay_raw(tmp_path: Path) -> None:
    text = _changelog(5, 200)
    old, new = _images(tmp_path, _zlib_gzip(text, 9), _zlib_gzip(b"new entry\n" + text, 9))
    stats = make_delta(old, new, tmp_path / "d.tfdelta", DeltaConfig(max_tokens=1000))
    assert (stats.tokenized, stats.format) == (0, DELTA_FORMAT)
    dest = tmp_path / "slot-b.img"
    _apply(_info(old, new), old, tmp_path / "d.tfdelta", dest)
    assert dest.read_bytes() == new.read_bytes()


def _peak_applying(info: DeltaInfo, source: Path, delta: Path, dest: Path) -> int:
    tracemalloc.start()
    try:
        apply_delta(
            info,
            source,
            delta,
            dest,
            hardware_id=HW,
            result_target=info.result_target,
            result_length=info.result_length,
            result_sha256=info.result_sha256,
            limits=DeltaLimits(fsync=False),
        )
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_applying_a_token_delta_holds_memory_bounded_by_the_token_strings(
    tmp_path: Path,
) -> None:
    text = _changelog(6, 6000)  # about 1.5 MB of text
    gz_old, gz_new = _zlib_gzip(text, 9), _zlib_gzip(_changelog(8, 5) + text, 9)
    filler = _binary(33, 1 << 20) * 24  # copied whole: must not be held in memory
    old = _tar(tmp_path / "old.tar", {"a.bin": filler, "changelog.gz": gz_old})
    new = _tar(tmp_path / "new.tar", {"a.bin": filler, "changelog.gz": gz_new})
    assert make_delta(old, new, tmp_path / "t.tfdelta").tokenized == 1
    make_delta(old, new, tmp_path / "r.tfdelta", DeltaConfig(deflate=False))
    token_bytes = len(tokens_of(gz_new, LIMIT))
    info = _info(old, new)

    raw_peak = _peak_applying(info, old, tmp_path / "r.tfdelta", tmp_path / "r.img")
    token_peak = _peak_applying(_v2(info), old, tmp_path / "t.tfdelta", tmp_path / "t.img")

    assert (tmp_path / "t.img").read_bytes() == new.read_bytes()
    # On top of a raw delta's applier: the compressed old file and two token strings at most.
    assert token_peak - raw_peak < 3 * token_bytes + len(gz_old)
    assert token_peak < info.result_length // 3  # never the image


# -- hostile token deltas ----------------------------------------------------------------


@pytest.fixture
def raw(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """Raw images that are gzip files themselves; the new one's token string."""
    text = _changelog(10, 60)
    old, new = tmp_path / "old.gz", tmp_path / "new.gz"
    old.write_bytes(_zlib_gzip(text, 9))
    new.write_bytes(_zlib_gzip(b"one more entry\n" + text, 9))
    return old, new, tokens_of(new.read_bytes(), LIMIT)


def _craft(path: Path, info: DeltaInfo, ops: bytes, extra: bytes = b"", magic: bytes = b"") -> Path:
    small = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}]
    sections = [lzma.compress(s, format=lzma.FORMAT_XZ, filters=small) for s in (ops, b"", extra)]
    header = DELTA_HEADER.pack(
        magic or (DELTA_MAGIC_2 if info.delta_format == DELTA_FORMAT_2 else DELTA_MAGIC),
        info.source_length,
        bytes.fromhex(info.source_sha256),
        info.result_length,
        bytes.fromhex(info.result_sha256),
        *(len(s) for s in sections),
    )
    path.write_bytes(header + b"".join(sections))
    return path


def _deflate_op(offset: int, length: int, out: int, tokens: int, nested: bytes) -> bytes:
    head = [zigzag(offset), length, out, tokens]
    return bytes([OP_DEFLATE]) + b"".join(map(encode_varint, head)) + nested + bytes([OP_END])


def _insert(n: int) -> bytes:
    return bytes([OP_INSERT]) + encode_varint(n)


def test_a_hand_made_token_delta_rebuilds_the_file(
    raw: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    old, new, tokens = raw
    info = _v2(_info(old, new))
    n_old, n_new = old.stat().st_size, new.stat().st_size
    ops = _deflate_op(0, n_old, n_new, len(tokens), _insert(len(tokens))) + bytes([OP_END])
    good = _craft(tmp_path / "g.tfdelta", info, ops, extra=tokens)
    _apply(info, old, good, tmp_path / "slot-b.img")
    assert (tmp_path / "slot-b.img").read_bytes() == new.read_bytes()


def _bad_token_cases(n_old: int, n_new: int, tokens: bytes) -> dict[str, tuple[bytes, bytes]]:
    t = len(tokens)
    broken = bytes([0, 7]) + tokens[2:]  # block header byte 7: no such block type
    return {
        # The named source bytes are not a gzip file (they start 1 byte in).
        "source-not-gzip": (_deflate_op(1, n_old - 1, n_new, t, _insert(t)), tokens),
        "malformed-token-string": (_deflate_op(0, n_old, n_new, t, _insert(t)), broken),
        "over-the-token-limit": (
            _deflate_op(0, n_old, n_new, MAX_TOKEN_STRING + 1, _insert(t)),
            tokens,
        ),
        "reads-outside-old-tokens": (
            _deflate_op(0, n_old, n_new, t, bytes([OP_COPY, *encode_varint(zigzag(10**7)), 5])),
            b"",
        ),
        "longer-than-declared": (_deflate_op(0, n_old, n_new, t - 1, _insert(t)), tokens),
        "shorter-than-declared": (_deflate_op(0, n_old, n_new, t + 1, _insert(t)), tokens),
        "encodes-to-another-length": (_deflate_op(0, n_old, n_new - 1, t, _insert(t)), tokens),
        "nested-deflate": (_deflate_op(0, n_old, n_new, t, bytes([OP_DEFLATE])), b""),
    }


@pytest.mark.parametrize(
    "case", sorted(_bad_token_cases(1, 1, b"xx")), ids=sorted(_bad_token_cases(1, 1, b"xx"))
)
def test_a_hostile_token_delta_is_refused_as_bad_tokens(
    raw: tuple[Path, Path, bytes], tmp_path: Path, case: str
) -> None:
    old, new, tokens = raw
    info = _v2(_info(old, new))
    ops, extra = _bad_token_cases(old.stat().st_size, new.stat().st_size, tokens)[case]
    bad = _craft(tmp_path / "b.tfdelta", info, ops + bytes([OP_END]), extra=extra)
    dest = tmp_path / "slot-b.img"
    with pytest.raises(VerificationError) as caught:
        _apply(info, old, bad, dest)
    assert caught.value.code == DELTA_BAD_TOKENS
    assert not dest.exists()
    assert list(tmp_path.glob("*.delta-part")) == []


def test_a_delta_that_parses_the_same_source_file_twice_is_refused(
    raw: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    old, new, tokens = raw
    twice = tmp_path / "twice.gz"
    twice.write_bytes(new.read_bytes() * 2)  # a result that would need the parse twice
    info = _v2(_info(old, twice))
    n_old, n_new, t = old.stat().st_size, new.stat().st_size, len(tokens)
    once = _deflate_op(0, n_old, n_new, t, _insert(t))
    again = _deflate_op(-n_old, n_old, n_new, t, _insert(t))
    ops = once + again + bytes([OP_END])
    bad = _craft(tmp_path / "b.tfdelta", info, ops, extra=tokens * 2)
    with pytest.raises(VerificationError, match="parses more gzip data") as caught:
        _apply(info, old, bad, tmp_path / "slot-b.img")
    assert caught.value.code == DELTA_BAD_TOKENS


def test_a_token_operation_in_a_format_1_delta_or_a_header_of_another_format_is_malformed(
    raw: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    old, new, tokens = raw
    n_old, n_new = old.stat().st_size, new.stat().st_size
    ops = _deflate_op(0, n_old, n_new, len(tokens), _insert(len(tokens))) + bytes([OP_END])
    v1 = _info(old, new)
    for info, magic in ((v1, DELTA_MAGIC), (v1, DELTA_MAGIC_2), (_v2(v1), DELTA_MAGIC)):
        bad = _craft(tmp_path / "b.tfdelta", info, ops, extra=tokens, magic=magic)
        with pytest.raises(VerificationError) as caught:
            _apply(info, old, bad, tmp_path / "slot-b.img")
        assert caught.value.code == DELTA_MALFORMED


def test_an_unknown_delta_format_is_refused_with_its_own_code(
    raw: tuple[Path, Path, bytes],
) -> None:
    custom = _info(*raw[:2]).to_custom()
    for fmt in ("tufota-delta/9", 2, ["tufota-delta/2"]):
        custom["delta_format"] = fmt
        with pytest.raises(InputError) as caught:
            DeltaInfo.from_custom(custom)
        assert caught.value.code == DELTA_UNSUPPORTED
    custom["delta_format"] = DELTA_FORMAT_2
    assert DeltaInfo.from_custom(custom).delta_format == DELTA_FORMAT_2


def test_tar_image_with_gzip_member_round_trips_through_tarfile(tmp_path: Path) -> None:
    """The rebuilt image is a valid tar whose changelog decompresses to the new text."""
    text = _changelog(12, 100)
    new_text = b"latest\n" + text
    old, new = _images(tmp_path, _zlib_gzip(text, 6), _zlib_gzip(new_text, 6))
    assert make_delta(old, new, tmp_path / "d.tfdelta").tokenized == 1
    dest = tmp_path / "slot-b.img"
    _apply(_v2(_info(old, new)), old, tmp_path / "d.tfdelta", dest)
    assert _sha(dest) == _sha(new)
    with tarfile.open(dest) as tar:
        member = tar.extractfile("usr/share/doc/p/changelog.gz")
        assert member is not None
        assert gzip.decompress(member.read()) == new_text
