"""Offline bundle archives (``tufota release export``): installed like a public/ copy, read safely.

The archives are built here with ``tarfile`` from the fixture's real TUF
repository, laid out as the format says: ``tufota-offline-bundle.json`` first,
then ``metadata/...`` and ``targets/...`` exactly as the repository serves them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from device_agent import ACTION_REBOOTING, ACTION_SUCCEEDED, AgentLimits
from device_agent.cli import main
from tests.device_agent.conftest import HW, Env
from tufota_core import InputError

Extra = Callable[[tarfile.TarFile], None]


def _release(env: Env) -> str:
    path = env.repo.add_firmware("1.1.0", b"offline image" * 300)
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes, **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def _manifest(target: str) -> bytes:
    parts = target.split("/")
    return json.dumps(
        {"format": 1, "hardware_id": parts[1], "version": parts[2], "target": target}
    ).encode()


def _archive(
    env: Env,
    out: Path,
    target: str,
    *,
    before: Extra | None = None,
    after: Extra | None = None,
    manifest: bool = True,
    fmt: int = tarfile.PAX_FORMAT,
) -> Path:
    mode = "w:gz" if out.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(out, mode, format=fmt) as tar:  # type: ignore[call-overload]
        if before is not None:
            before(tar)
        if manifest:
            _add(tar, "tufota-offline-bundle.json", _manifest(target))
        for tree in (env.repo.metadata_dir, env.repo.targets_dir):
            for file in sorted(tree.rglob("*")):
                if file.is_file():
                    name = file.relative_to(env.repo.dir).as_posix()
                    _add(tar, name, file.read_bytes())
        if after is not None:
            after(tar)
    return out


def _config_path(env: Env) -> str:
    return str(env.device_dir / "agent.toml")


@pytest.mark.parametrize("name", ["fw.tar.gz", "fw.tgz", "fw.tar"])
def test_offline_archive_installs_and_is_reported_when_online(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    target = _release(env)
    archive = _archive(env, tmp_path / name, target)
    env.write_config(server_url="http://127.0.0.1:9")  # offline

    assert main(["install-bundle", str(archive), "--config", _config_path(env)]) == 0
    assert "reboot pending: 1.1.0" in capsys.readouterr().out
    assert env.boot_control()["pending"] == "b"
    assert list((env.config.state_dir / "bundles").iterdir()) == []  # unpacked copy removed

    env.write_config()
    assert env.agent().run_once().action == ACTION_SUCCEEDED
    assert env.server.reports[-1].installed_version == "1.1.0"


def test_an_upload_bundle_is_refused_in_one_line_and_changes_nothing(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = _release(env)
    upload = tmp_path / "release-1.1.0.tar.gz"
    with tarfile.open(upload, "w:gz") as tar:
        _add(tar, "bundle.json", json.dumps({"format": "tufota.bundle/1"}).encode())
        role = env.repo.metadata_dir / f"1.{env.repo.firmware_role}.json"
        _add(tar, f"metadata/{env.repo.firmware_role}.json", role.read_bytes())
        _add(tar, f"targets/{target}", env.repo.blobs[target].read_bytes())
    before = env.boot_control()

    assert main(["install-bundle", str(upload), "--config", _config_path(env)]) == 1

    err = capsys.readouterr().err
    assert err == (
        f"tufota-agent: error: {upload} is an upload bundle for the server (bundle.json); "
        "export an offline bundle with 'tufota release export'\n"
    )
    assert env.boot_control() == before
    assert not (env.config.state_dir / "agent.json").exists()


def _long_name(tar: tarfile.TarFile) -> None:
    _add(tar, "metadata/" + "a" * (2 * 1024 * 1024) + ".json", b"{}")


def _pax_record(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("metadata/x.json")
    info.pax_headers = {"comment": "x" * (2 * 1024 * 1024)}
    tar.addfile(info, io.BytesIO(b""))


def _symlink(tar: tarfile.TarFile) -> None:
    _add(tar, "targets/link", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")


def _hardlink(tar: tarfile.TarFile) -> None:
    _add(tar, "targets/hard", b"", type=tarfile.LNKTYPE, linkname="metadata/timestamp.json")


def _device(tar: tarfile.TarFile) -> None:
    _add(tar, "targets/dev", b"", type=tarfile.CHRTYPE, devmajor=1, devminor=3)


def _traversal(tar: tarfile.TarFile) -> None:
    _add(tar, "targets/../../escape.json", b"{}")


def _absolute(tar: tarfile.TarFile) -> None:
    _add(tar, "/tmp/escape.json", b"{}")


def _stray(tar: tarfile.TarFile) -> None:
    _add(tar, "etc/cron.d/x", b"")


def _duplicate(tar: tarfile.TarFile) -> None:
    _add(tar, "metadata/timestamp.json", b"{}")


def _many(tar: tarfile.TarFile) -> None:
    for i in range(50):
        _add(tar, f"targets/pad/{i}", b"")


def _huge_claim(tar: tarfile.TarFile) -> None:
    # A header that claims 64 GiB; refused from the header, never read.
    info = tarfile.TarInfo("targets/firmware/big.bin")
    info.size = 64 * 1024**3
    tar.addfile(info)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (_long_name, "over the 1048576-byte cap"),
        (_pax_record, "over the 1048576-byte cap"),
        (_symlink, "is not a regular file"),
        (_hardlink, "is not a regular file"),
        (_device, "is not a regular file"),
        (_traversal, "has an unsafe name"),
        (_absolute, "has an unsafe name"),
        (_stray, "is not expected"),
        (_duplicate, "appears twice"),
        (_many, "has more than 40 members"),
        (_huge_claim, "is 68719476736 bytes, over"),
    ],
    ids=lambda v: getattr(v, "__name__", "")[1:] if callable(v) else "",
)
def test_hostile_archives_are_refused_before_their_members_are_read(
    env: Env, tmp_path: Path, extra: Extra, words: str
) -> None:
    target = _release(env)
    archive = tmp_path / "bundle.tar.gz"
    fmt = tarfile.GNU_FORMAT if extra is _long_name else tarfile.PAX_FORMAT
    if extra is _huge_claim:
        # tarfile cannot write a member whose data is not there: hand-make the header.
        _archive(env, tmp_path / "plain.tar", target)
        data = (tmp_path / "plain.tar").read_bytes().rstrip(b"\0")
        data = data + b"\0" * (-len(data) % 512)
        info = tarfile.TarInfo("targets/firmware/big.bin")
        info.size = 64 * 1024**3
        archive = tmp_path / "bundle.tar"
        archive.write_bytes(data + info.tobuf(tarfile.PAX_FORMAT) + b"\0" * 1024)
    else:
        _archive(env, archive, target, after=extra, fmt=fmt)
    env.config = dataclasses.replace(env.config, limits=AgentLimits(max_bundle_members=40))
    before = env.boot_control()
    agent = env.agent()

    tracemalloc.start()
    with pytest.raises(InputError) as refused:
        agent.install_bundle(archive)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    message = str(refused.value)
    assert words in message
    assert len(message) < 400
    assert refused.value.code == "bundle_invalid"
    assert peak < 8 * 1024 * 1024
    assert env.boot_control() == before
    assert not (tmp_path / "escape.json").exists()
    assert list((env.config.state_dir / "bundles").iterdir()) == []


def test_an_archive_that_does_not_start_with_the_manifest_is_refused(
    env: Env, tmp_path: Path
) -> None:
    target = _release(env)
    archive = _archive(env, tmp_path / "b.tar", target, manifest=False)

    with pytest.raises(InputError, match=r"does not start with tufota-offline-bundle\.json"):
        env.agent().install_bundle(archive)


def test_a_manifest_for_other_hardware_installs_nothing(env: Env, tmp_path: Path) -> None:
    _release(env)
    other = "firmware/gw-200/1.1.0/fw.bin"
    archive = _archive(env, tmp_path / "b.tgz", other)

    result = env.agent().install_bundle(archive)

    assert result.error_code == "wrong_hardware"
    assert env.boot_control()["pending"] is None
    assert HW in result.message


def test_an_unpacked_offline_bundle_directory_installs(env: Env, tmp_path: Path) -> None:
    target = _release(env)
    archive = _archive(env, tmp_path / "b.tar", target)
    unpacked = tmp_path / "usb"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")

    assert env.agent().install_bundle(unpacked).action == ACTION_REBOOTING
