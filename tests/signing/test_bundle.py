"""Release bundles: the writer's round trip and the reader's refusal of hostile archives."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, TargetFile, Targets

from signing import BUNDLE_FORMAT, BundleLimits, Expiry, add_release, read_bundle, write_bundle
from signing._metadata import empty_delegated
from tufota_core import FirmwareInfo, InputError, NotFoundError, VerificationError, utcnow

ROLE = "firmware-gw-100"
PATH = "firmware/gw-100/1.1.0/fw.img"


def _release(tmp_path: Path, data: bytes = b"firmware " * 100) -> tuple[Metadata[Targets], Path]:
    image = tmp_path / "fw.img"
    image.write_bytes(data)
    md = empty_delegated(utcnow(), timedelta(days=1))
    md.signed.version = 0
    md, _target = add_release(md, image, FirmwareInfo("gw-100", "1.1.0"), utcnow(), Expiry())
    md.sign(CryptoSigner.generate_ed25519())
    return md, image


def test_bundle_round_trip_keeps_metadata_and_blobs(tmp_path: Path) -> None:
    md, image = _release(tmp_path)
    out = tmp_path / "release.tar.gz"
    write_bundle(out, roles={ROLE: md}, blobs=[(md.signed.targets[PATH], image)])
    with read_bundle(out) as bundle:
        assert bundle.roles[ROLE].to_bytes() == md.to_bytes()
        assert bundle.targets is None
        assert bundle.root is None
        [(target, blob)] = bundle.blobs
        assert target.path == PATH
        assert blob.read_bytes() == image.read_bytes()
        workdir = blob.parent
    assert not workdir.exists(), "the private extraction directory outlives the context"


def test_writing_the_same_release_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    md, image = _release(tmp_path)
    blobs = [(md.signed.targets[PATH], image)]
    for compress in (True, False):
        write_bundle(tmp_path / "a", roles={ROLE: md}, blobs=blobs, compress=compress)
        write_bundle(tmp_path / "b", roles={ROLE: md}, blobs=blobs, compress=compress)
        assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
        (tmp_path / "a").unlink()
        (tmp_path / "b").unlink()


def test_writer_refuses_to_overwrite_or_to_carry_a_file_no_role_lists(tmp_path: Path) -> None:
    md, image = _release(tmp_path)
    out = tmp_path / "release.tar.gz"
    out.write_bytes(b"precious")
    with pytest.raises(InputError, match="already exists"):
        write_bundle(out, roles={ROLE: md}, blobs=[(md.signed.targets[PATH], image)])
    assert out.read_bytes() == b"precious"
    stray = TargetFile.from_data("firmware/gw-100/9.9.9/x.img", b"x")
    with pytest.raises(InputError, match="no role"):
        write_bundle(tmp_path / "new.tar", roles={ROLE: md}, blobs=[(stray, image)])
    image.write_bytes(b"changed after signing")
    with pytest.raises(VerificationError):
        write_bundle(
            tmp_path / "new.tar", roles={ROLE: md}, blobs=[(md.signed.targets[PATH], image)]
        )
    assert not (tmp_path / "new.tar").exists()


# -- hostile archives ---------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes | None]


def _file(name: str, data: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, link: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info, None


def _manifest(blobs: list[str], roles: list[str] | None = None) -> Member:
    body = {
        "format": BUNDLE_FORMAT,
        "root": False,
        "targets": False,
        "roles": [ROLE] if roles is None else roles,
        "blobs": blobs,
    }
    return _file("bundle.json", json.dumps(body).encode())


def _tar(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


Case = Callable[[Metadata[Targets], bytes], list[Member]]


def _good(md: Metadata[Targets], blob: bytes) -> list[Member]:
    return [
        _manifest([PATH]),
        _file(f"metadata/{ROLE}.json", md.to_bytes()),
        _file(f"targets/{PATH}", blob),
    ]


HOSTILE: list[tuple[str, Case, type[Exception], str]] = [
    ("traversal", lambda md, b: [*_good(md, b), _file("../evil", b"x")], InputError, "safe"),
    ("absolute", lambda md, b: [*_good(md, b), _file("/etc/evil", b"x")], InputError, "safe"),
    (
        "dotdot_in_target",
        lambda md, b: [*_good(md, b), _file("targets/firmware/../../x", b"x")],
        InputError,
        "safe",
    ),
    (
        "symlink",
        lambda md, b: [
            *_good(md, b)[:2],
            _special(f"targets/{PATH}", tarfile.SYMTYPE, "/etc/passwd"),
        ],
        InputError,
        "regular file",
    ),
    (
        "hardlink",
        lambda md, b: [
            *_good(md, b)[:2],
            _special(f"targets/{PATH}", tarfile.LNKTYPE, "bundle.json"),
        ],
        InputError,
        "regular file",
    ),
    (
        "device",
        lambda md, b: [*_good(md, b), _special("targets/firmware/dev", tarfile.CHRTYPE)],
        InputError,
        "regular file",
    ),
    (
        "fifo",
        lambda md, b: [*_good(md, b), _special("targets/firmware/fifo", tarfile.FIFOTYPE)],
        InputError,
        "regular file",
    ),
    (
        "duplicate",
        lambda md, b: [*_good(md, b), _file(f"targets/{PATH}", b)],
        InputError,
        "twice",
    ),
    ("missing_file", lambda md, b: _good(md, b)[:2], InputError, "missing firmware"),
    (
        "missing_metadata",
        lambda md, b: [_good(md, b)[0], _good(md, b)[2]],
        InputError,
        "missing metadata",
    ),
    ("no_manifest", lambda md, b: _good(md, b)[1:], InputError, "no bundle.json"),
    (
        "undeclared_file",
        lambda md, b: [*_good(md, b), _file("targets/firmware/gw-100/1.1.0/extra.img", b"x")],
        InputError,
        "undeclared",
    ),
    (
        "unexpected_member",
        lambda md, b: [*_good(md, b), _file("keys/root.key", b"x")],
        InputError,
        "unexpected",
    ),
    (
        "bad_manifest",
        lambda md, b: [_file("bundle.json", b"{not json"), *_good(md, b)[1:]],
        InputError,
        "not JSON",
    ),
    (
        "not_metadata",
        lambda md, b: [_good(md, b)[0], _file(f"metadata/{ROLE}.json", b"{}"), _good(md, b)[2]],
        InputError,
        "not TUF metadata",
    ),
    (
        "top_level_role_name",
        lambda md, b: [
            _manifest([], roles=["snapshot"]),
            _file("metadata/snapshot.json", md.to_bytes()),
        ],
        InputError,
        "not a delegated role",
    ),
    (
        "oversize_member",
        lambda md, b: [*_good(md, b)[:2], _file(f"targets/{PATH}", b * 3)],
        InputError,
        "larger than",
    ),
    (
        "too_many_members",
        lambda md, b: [*_good(md, b), *(_file(f"targets/x{i}", b"") for i in range(20))],
        InputError,
        "more than",
    ),
    (
        "tampered_blob",
        lambda md, b: [*_good(md, b)[:2], _file(f"targets/{PATH}", b[:-1] + b"!")],
        VerificationError,
        "sha256|hashes",
    ),
    (
        "truncated_blob",
        lambda md, b: [*_good(md, b)[:2], _file(f"targets/{PATH}", b[:-1])],
        VerificationError,
        "bytes",
    ),
]


@pytest.mark.parametrize(
    ("case", "members", "error", "match"), HOSTILE, ids=[c[0] for c in HOSTILE]
)
def test_hostile_bundle_is_refused_and_leaves_nothing_behind(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    members: Case,
    error: type[Exception],
    match: str,
) -> None:
    md, image = _release(tmp_path)
    blob = image.read_bytes()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)
    path = _tar(tmp_path / f"{case}.tar", members(md, blob))
    limits = BundleLimits(max_members=12, max_blob_bytes=2 * len(blob))
    with pytest.raises(error, match=match), read_bundle(path, limits):
        pass
    assert list(scratch.iterdir()) == [], "extracted files survive a refused bundle"
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "not a readable"), (b"hello, not a tar" * 64, "not a readable")],
)
def test_a_file_that_is_no_tar_is_refused(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.tar.gz"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match), read_bundle(path):
        pass


def test_a_truncated_gzip_bundle_is_refused(tmp_path: Path) -> None:
    md, image = _release(tmp_path, data=bytes(range(256)) * 4000)
    out = tmp_path / "release.tar.gz"
    write_bundle(out, roles={ROLE: md}, blobs=[(md.signed.targets[PATH], image)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(InputError), read_bundle(cut):
        pass


def test_a_missing_bundle_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError), read_bundle(tmp_path / "nope.tar"):
        pass


def test_total_size_cap_counts_every_member(tmp_path: Path) -> None:
    md, image = _release(tmp_path)
    out = tmp_path / "release.tar"
    write_bundle(out, roles={ROLE: md}, blobs=[(md.signed.targets[PATH], image)], compress=False)
    with (
        pytest.raises(InputError, match="larger than"),
        read_bundle(out, BundleLimits(max_total_bytes=len(md.to_bytes()))),
    ):
        pass
