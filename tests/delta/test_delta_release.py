"""Deltas as signed targets: ``release add/sign --delta-from``, upload, publish checks.

A real embedded repository, the real CLI, a real server on loopback for the
upload, and the device's applier rebuilding the image from the stored delta.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Targets

from device_agent._delta import DeltaLimits, apply_delta
from repo_server import Repository, ServerThread, create_app
from repo_server._publisher import Blob, target_storage_key
from signing import add_deltas, add_release, load_signer, sign_all
from tests.conftest import ask
from tests.delta.test_delta import _binary, _shift, _tar
from tufota_cli.main import main
from tufota_cli.repo_cmds import build_context
from tufota_core import DeltaInfo, FirmwareInfo, InputError, is_delta_custom, utcnow

HW = "gw-100"
ROLE = "firmware-gw-100"


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    lib, mod = _binary(1, 150_000), _binary(2, 60_000)
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
    old = _tar(tmp_path / "v1" / "fw.tar", {"lib/6.1.0-53/a.so": lib, "lib/6.1.0-53/m.ko": mod})
    new = _tar(
        tmp_path / "v2" / "fw.tar",
        {"lib/6.1.0-54/a.so": _shift(lib, 3), "lib/6.1.0-54/m.ko": mod, "etc/new": b"x" * 99},
    )
    return old, new


def _deltas(repo: Repository) -> dict[str, DeltaInfo]:
    targets = repo.state().roles[ROLE].signed.targets
    return {
        p: DeltaInfo.from_custom(t.custom) for p, t in targets.items() if is_delta_custom(t.custom)
    }


def _rebuild(repo: Repository, delta_path: str, old: Path, dest: Path) -> bytes:
    target = repo.state().roles[ROLE].signed.targets[delta_path]
    info = DeltaInfo.from_custom(target.custom)
    delta = dest.with_name("d.tfdelta")
    delta.write_bytes(repo.storage.get(target_storage_key(target)))
    apply_delta(
        info,
        old,
        delta,
        dest,
        hardware_id=HW,
        result_target=info.result_target,
        result_length=info.result_length,
        result_sha256=info.result_sha256,
        limits=DeltaLimits(fsync=False),
    )
    return dest.read_bytes()


def test_release_add_publishes_a_signed_delta_that_rebuilds_the_image(
    repo: Repository,
    images: tuple[Path, Path],
    tmp_path: Path,
    passphrase_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = images
    base = ["release", "add", "--repo", str(repo.path), "--hardware", HW]
    assert main([*base, str(old), "--version", "1.0.0"]) == 0
    assert main([*base, str(new), "--version", "2.0.0", "--delta-from", "1.0.0"]) == 0
    out = capsys.readouterr().out
    assert "delta from 1.0.0: firmware/gw-100/2.0.0/fw.tar.from-1.0.0.tfdelta" in out
    assert "process peak memory" in out  # generation reports its cost
    [(path, info)] = _deltas(repo).items()
    assert path == "firmware/gw-100/2.0.0/fw.tar.from-1.0.0.tfdelta"
    assert (info.source_version, info.result_target) == ("1.0.0", "firmware/gw-100/2.0.0/fw.tar")
    assert _rebuild(repo, path, old, tmp_path / "slot-b.img") == new.read_bytes()
    # The delta is not a release: catalogs, verification and offline export ignore it.
    assert main(["repo", "verify", "--repo", str(repo.path)]) == 0
    bundle = tmp_path / "offline.tar.gz"
    export = ["release", "export", "--repo", str(repo.path), "--hardware", HW]
    assert main([*export, "--version", "2.0.0", "--out", str(bundle)]) == 0


def test_release_add_refuses_a_delta_from_an_unknown_version(
    repo: Repository,
    images: tuple[Path, Path],
    passphrase_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = images
    base = ["release", "add", "--repo", str(repo.path), "--hardware", HW]
    assert main([*base, str(old), "--version", "1.0.0"]) == 0
    before = repo.state().roles[ROLE].signed.version
    assert main([*base, str(new), "--version", "2.0.0", "--delta-from", "0.9.0"]) == 1
    assert "no published release 0.9.0" in capsys.readouterr().err
    assert repo.state().roles[ROLE].signed.version == before


def test_signed_bundle_with_a_delta_is_uploaded_and_published(
    repo: Repository,
    images: tuple[Path, Path],
    tmp_path: Path,
    passphrase_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = images
    assert main(["release", "add", str(old), "--repo", str(repo.path), "--hardware", HW,
                 "--version", "1.0.0"]) == 0  # fmt: skip
    bundle = tmp_path / "rel.tar.gz"
    sign = ["release", "sign", str(new), "--hardware", HW, "--version", "2.0.0", "--key",
            str(repo.signing_dir / "release-gw-100.key"), "--repo", str(repo.path),
            "--out", str(bundle), "--yes"]  # fmt: skip
    # The offline machine names the old image: it must be the signed 1.0.0.
    assert main([*sign, "--delta-from", "1.0.0"]) == 1
    assert "VERSION=FILE" in capsys.readouterr().err
    assert main([*sign, "--delta-from", f"1.0.0={new}"]) == 1
    assert "is not the signed image of gw-100 1.0.0" in capsys.readouterr().err
    assert main([*sign, "--delta-from", f"1.0.0={old}"]) == 0
    assert "firmware/gw-100/2.0.0/fw.tar and 1 delta(s)," in capsys.readouterr().out
    # Whoever checks the bundle before uploading sees the delta it carries.
    assert main(["release", "verify", str(bundle), "--repo", str(repo.path)]) == 0
    verified = capsys.readouterr().out
    assert "fw.tar.from-1.0.0.tfdelta: " in verified
    assert "delta from 1.0.0 to 2.0.0 (tufota-delta/1)" in verified
    tokens = repo.token_store()
    uploader = tokens.create("ci", "uploader")
    ctx = build_context(repo, ask)
    try:
        with ServerThread(create_app(ctx, background=False)) as server:
            upload = ["release", "upload", str(bundle), "--server", server.url, "--token"]
            assert main([*upload, uploader]) == 0
    finally:
        ctx.store.close()
    [path] = _deltas(repo)
    assert _rebuild(repo, path, old, tmp_path / "slot-b.img") == new.read_bytes()


def test_publisher_refuses_a_delta_from_bytes_never_published(
    repo: Repository, images: tuple[Path, Path], tmp_path: Path, passphrase_env: str
) -> None:
    old, new = images
    assert main(["release", "add", str(old), "--repo", str(repo.path), "--hardware", HW,
                 "--version", "1.0.0"]) == 0  # fmt: skip
    state = repo.state()
    product = Metadata[Targets].from_bytes(state.roles[ROLE].to_bytes())
    product, target = add_release(product, new, FirmwareInfo(HW, "2.0.0"), utcnow(), repo.expiry)
    [made] = add_deltas(product, target, new, [("1.0.0", old)], tmp_path)
    assert made.target is not None
    custom = copy.deepcopy(made.target.custom)
    custom["source"]["sha256"] = "0" * 64  # a source no device was given
    made.target.unrecognized_fields["custom"] = custom
    keys = repo.product_key_files(state.targets, HW)
    sign_all(product, [load_signer(k, ask) for k in keys])
    blobs = [Blob(target, path=new), Blob(made.target, path=made.path)]
    with pytest.raises(InputError, match=r"source 1\.0\.0 is not a published release"):
        repo.publisher(ask).publish({ROLE: product}, blobs)
    assert not _deltas(repo)


def test_release_add_makes_deltas_from_the_latest_releases(
    repo: Repository,
    images: tuple[Path, Path],
    tmp_path: Path,
    passphrase_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = images
    middle = tmp_path / "v15" / "fw.tar"
    middle.parent.mkdir()
    middle.write_bytes(old.read_bytes()[:-512] + new.read_bytes()[-512:])
    base = ["release", "add", "--repo", str(repo.path), "--hardware", HW]
    assert main([*base, str(old), "--version", "1.0.0"]) == 0
    assert main([*base, str(middle), "--version", "1.5.0"]) == 0
    assert main([*base, str(new), "--version", "2.0.0", "--delta-latest", "3",
                 "--delta-from", "1.5.0"]) == 0  # fmt: skip
    assert {i.source_version for i in _deltas(repo).values()} == {"1.0.0", "1.5.0"}
    for path, info in _deltas(repo).items():
        source = old if info.source_version == "1.0.0" else middle
        assert _rebuild(repo, path, source, tmp_path / "slot-b.img") == new.read_bytes()
    assert main([*base, str(new), "--version", "3.0.0", "--delta-latest", "-1"]) == 1
    assert "--delta-latest -1" in capsys.readouterr().err
