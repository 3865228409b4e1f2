"""Offline keys never sign on top of metadata a server compromise could have planted.

The server's directory is writable by whoever holds the server. Commands
that sign with offline keys from ``--repo REPO`` (``release add``, ``release
sign``, ``product add``, ``root rotate``...) first verify every signature from
the signing directory's trusted ``root.json``; ``device provision`` verifies
the root chain it hands to devices. Each attack below is what a holder of the
server's files and online keys can write; each command refuses in one line
and changes nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from repo_server import Repository, load_state
from repo_server._publisher import metadata_key, target_storage_key
from signing import generate_key, load_public_key, load_signer
from tests.conftest import PASSPHRASE, ask
from tufota_cli.main import main
from tufota_core import product_role


def _resign_online(repo: Repository, roles: dict[str, Metadata[Targets]]) -> None:
    """Write ``roles`` as they are and re-sign snapshot and timestamp, as the server can."""
    storage = repo.storage
    state = load_state(storage)
    online = load_signer(repo.key(repo.config.online_key), ask)
    snapshot: Metadata[Snapshot] = state.snapshot
    for name, md in roles.items():
        storage.put(metadata_key(name, md.signed.version), md.to_bytes())
        snapshot.signed.meta[f"{name}.json"] = MetaFile(md.signed.version)
    snapshot.signed.version += 1
    snapshot.signatures.clear()
    snapshot.sign(online)
    storage.put(metadata_key(Snapshot.type, snapshot.signed.version), snapshot.to_bytes())
    timestamp: Metadata[Timestamp] = state.timestamp
    timestamp.signed.version += 1
    timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
    timestamp.signatures.clear()
    timestamp.sign(online)
    storage.put("metadata/timestamp.json", timestamp.to_bytes())


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _add_attacker_key_to_line(repo: Repository, tmp_path: Path) -> None:
    """targets lists an attacker's key for gw-100; the targets signature is now stale."""
    attacker = generate_key(tmp_path / "evil", PASSPHRASE)
    targets = load_state(repo.storage).targets
    targets.signed.add_key(attacker.key, product_role("gw-100"))
    targets.signed.version += 1
    _resign_online(repo, {Targets.type: targets})


def _list_unsigned_firmware(repo: Repository, tmp_path: Path) -> None:
    """The gw-100 role lists an extra image; its product-line signature is now stale."""
    role = load_state(repo.storage).roles[product_role("gw-100")]
    data = b"evil firmware\n" * 100
    path = "firmware/gw-100/9.9.9/evil.img"
    image = tmp_path / "evil.img"
    image.write_bytes(data)
    target = TargetFile.from_file(path, str(image), ["sha256"])
    target.unrecognized_fields["custom"] = {"hardware_id": "gw-100", "version": "9.9.9"}
    role.signed.targets[path] = target
    role.signed.version += 1
    repo.storage.put(target_storage_key(target), data)
    _resign_online(repo, {product_role("gw-100"): role})


def _plant_root(repo: Repository, tmp_path: Path) -> None:
    """A 2.root.json that names (and is signed by) only the attacker's root key."""
    attacker = generate_key(tmp_path / "evil-root", PASSPHRASE)
    root: Metadata[Root] = load_state(repo.storage).root
    for keyid in list(root.signed.roles[Root.type].keyids):
        root.signed.revoke_key(keyid, Root.type)
    root.signed.add_key(attacker.key, Root.type)
    root.signed.version += 1
    root.signatures.clear()
    root.sign(load_signer(load_public_key(tmp_path / "evil-root.pub"), ask))
    repo.storage.put(metadata_key(Root.type, root.signed.version), root.to_bytes())


ATTACKS = {
    "attacker-key-in-targets": _add_attacker_key_to_line,
    "unsigned-firmware-in-line": _list_unsigned_firmware,
    "planted-root": _plant_root,
}


def _commands(repo: Path, work: Path) -> dict[str, list[str]]:
    image = work / "fw-2.0.0.img"
    image.write_bytes(b"firmware 2.0.0\n" * 100)
    r = str(repo)
    return {
        "release-add": ["release", "add", str(image), "--repo", r, "--hardware", "gw-100",
                        "--version", "2.0.0"],
        "release-sign": ["release", "sign", str(image), "--repo", r, "--hardware", "gw-100",
                         "--version", "2.0.0", "--key", f"{r}-signing/release-gw-100.key",
                         "--out", str(work / "out.tar.gz"), "--yes"],
        "product-add": ["product", "add", "gw-800", "--repo", r, "--yes"],
        "root-rotate": ["root", "rotate", "--repo", r, "--out", str(work / "p.json")],
        "device-provision": ["device", "provision", "dev-9", "--repo", r, "--hardware", "gw-100",
                             "--out", str(work / "dev-9")],
    }  # fmt: skip


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize(
    "command",
    ["release-add", "release-sign", "product-add", "root-rotate", "device-provision"],
)
def test_signing_and_provisioning_refuse_a_tampered_repository(
    attack: str,
    command: str,
    released_repo: Repository,
    tmp_path: Path,
    passphrase_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if command == "device-provision" and attack != "planted-root":
        pytest.skip("provisioning hands devices the root only; the roles are the device's to check")
    ATTACKS[attack](released_repo, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    argv = _commands(released_repo.path, work)[command]
    before = (_tree(released_repo.path), _tree(released_repo.signing_dir))
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "does not verify" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert (_tree(released_repo.path), _tree(released_repo.signing_dir)) == before
    assert not (work / "out.tar.gz").exists()
    assert not (work / "dev-9").exists()
