"""Key custody: three homes for keys, a passphrase per key, a key per product line.

Every repository here is made by ``tufota init`` with a passphrase per key
file (``TUFOTA_PASSPHRASE_<STEM>``) and no shared ``TUFOTA_PASSPHRASE``; the
server side gets only the online keys' passphrases, as ``tufota serve`` would
from its environment.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from device_agent import Agent, AgentConfig
from repo_server import (
    OFFLINE_MANIFEST,
    Blob,
    Repository,
    ServerContext,
    ServerThread,
    create_app,
    load_state,
)
from repo_server._publisher import metadata_key, target_storage_key
from signing import (
    Expiry,
    KeyPassphrases,
    add_product_line,
    add_release,
    empty_delegated,
    find_product,
    generate_key,
    load_public_key,
    load_signer,
    private_key_files,
    sign_all,
)
from tufota_cli.device_cmds import provision_device
from tufota_cli.main import main as tufota
from tufota_cli.repo_cmds import build_context, check_custody
from tufota_core import FirmwareInfo, RolloutDoc, TufotaError, Wave, product_role, utcnow

HW = "gw-100"
ONLINE_ENV = {
    "TUFOTA_PASSPHRASE_ONLINE": "online passphrase 1",
    "TUFOTA_PASSPHRASE_ROLLOUTS": "rollouts passphrase 1",
}
OFFLINE_ENV = {
    "TUFOTA_PASSPHRASE_ROOT": "root passphrase 1",
    "TUFOTA_PASSPHRASE_TARGETS": "targets passphrase 1",
    "TUFOTA_PASSPHRASE_RELEASE_GW_100": "gw-100 passphrase 1",
    "TUFOTA_PASSPHRASE_RELEASE_GW_200": "gw-200 passphrase 1",
    "TUFOTA_PASSPHRASE_RELEASE_CAM_300": "cam-300 passphrase 1",
}


def set_env(mp: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    """Exactly these passphrase variables, no other TUFOTA_PASSPHRASE*."""
    for name in list(os.environ):
        if name.startswith("TUFOTA_PASSPHRASE"):
            mp.delenv(name)
    for name, value in values.items():
        mp.setenv(name, value)


def tree(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def image(path: Path, version: str) -> Path:
    path.write_bytes(f"firmware {version}\n".encode() * 400)
    return path


@dataclass
class Site:
    tmp: Path
    repo: Repository

    @property
    def r(self) -> str:
        return str(self.repo.path)

    @property
    def signing(self) -> Path:
        return self.repo.signing_dir


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    """``tufota init`` + ``release add gw-100 1.0.0`` on the one-machine layout."""
    set_env(monkeypatch, {**ONLINE_ENV, **OFFLINE_ENV})
    assert tufota(["init", str(tmp_path / "repo")]) == 0
    fw = image(tmp_path / "fw-1.0.0.img", "1.0.0")
    assert tufota(["release", "add", str(fw), "--repo", str(tmp_path / "repo"),
                   "--hardware", HW, "--version", "1.0.0"]) == 0  # fmt: skip
    return Site(tmp_path, Repository.open(tmp_path / "repo"))


def server_context(repo: Repository) -> ServerContext:
    """The server as ``serve`` builds it: online passphrases only."""
    return build_context(repo, KeyPassphrases(env=dict(ONLINE_ENV)), tick_interval=3600)


# -- the three homes -----------------------------------------------------------------------


def test_init_keeps_offline_keys_out_of_the_server_directory(site: Site) -> None:
    keys = {p.relative_to(site.repo.path).as_posix() for p in private_key_files(site.repo.path)}
    assert keys == {"keys/online.key", "keys/rollouts.key"}
    assert site.signing == site.tmp / "repo-signing"
    assert {p.name for p in private_key_files(site.signing)} == {
        "root.key",
        "targets.key",
        "release-gw-100.key",
    }
    assert oct(site.signing.stat().st_mode & 0o777) == "0o700"
    trusted = Metadata[Root].from_bytes((site.signing / "root.json").read_bytes())
    assert trusted.signed.version == 1
    # The server starts from its own directory and the online passphrases alone.
    check_custody(site.repo, None, lab_override=False)
    site.repo.online_signers(KeyPassphrases(env=dict(ONLINE_ENV)))


def test_init_refuses_a_signing_directory_inside_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_env(monkeypatch, {**ONLINE_ENV, **OFFLINE_ENV})
    repo = tmp_path / "repo"
    assert tufota(["init", str(repo), "--signing-dir", str(repo / "signing")]) == 1
    err = capsys.readouterr().err
    assert "must be outside the repository" in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_init_warns_when_offline_keys_share_the_server_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_env(monkeypatch, {"TUFOTA_PASSPHRASE": "one passphrase for all"})
    assert tufota(["init", str(tmp_path / "repo"), "--signing-dir", str(tmp_path / "s")]) == 0
    captured = capsys.readouterr()
    assert "root.key and targets.key share a passphrase" in captured.err
    assert f"signing directory {tmp_path / 's'}" in captured.out


# -- serve refuses beside an offline key ------------------------------------------------------


def _plant_root(s: Site) -> Path:
    return s.signing / "root.key"


def _plant_targets(s: Site) -> Path:
    return s.signing / "targets.key"


def _plant_product(s: Site) -> Path:
    return s.signing / "release-gw-100.key"


@pytest.mark.parametrize(
    ("plant", "role", "where"),
    [
        (_plant_root, "offline role root", "keys"),
        (_plant_targets, "offline role targets", "keys"),
        (_plant_product, "offline role firmware-gw-100", "public/metadata"),
        (_plant_root, "not one of this server's online keys", "backup"),  # without its .pub
    ],
    ids=["root", "targets", "product-line", "unnamed"],
)
def test_serve_refuses_to_start_beside_an_offline_private_key(
    site: Site,
    plant: object,
    role: str,
    where: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    set_env(monkeypatch, dict(ONLINE_ENV))  # what a server's environment holds
    private = plant(site)  # type: ignore[operator]
    dest = site.repo.path / where
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(private, dest / private.name)
    if where != "backup":
        shutil.copy(private.with_suffix(".pub"), dest / private.with_suffix(".pub").name)
    with socket.socket() as busy:  # the old code would fail here only, on the busy port
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        capsys.readouterr()
        assert tufota(["serve", "--repo", site.r, "--port", port]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("tufota: error: refusing to serve: ")
    assert len(err.strip().splitlines()) == 1
    assert str(dest / private.name) in err
    assert role in err
    assert "signing directory" in err
    assert "serving" not in out


def test_lab_override_warns_at_every_start_and_busy_port_prints_no_serving_line(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(site.signing / "root.key", site.repo.path / "keys" / "root.key")
    shutil.copy(site.signing / "root.pub", site.repo.path / "keys" / "root.pub")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        capsys.readouterr()
        for _ in range(2):
            argv = ["serve", "--repo", site.r, "--port", port, "--lab-allow-offline-keys"]
            assert tufota(argv) == 1
            out, err = capsys.readouterr()
            assert "WARNING: --lab-allow-offline-keys" in err
            assert "offline role root" in err
            assert "cannot listen" in err
            assert "serving" not in out


# -- passphrases per key -------------------------------------------------------------------------


def test_a_key_passphrase_comes_from_its_own_variable_then_the_shared_one_then_a_prompt(
    tmp_path: Path,
) -> None:
    asked: list[str] = []
    source = KeyPassphrases(
        env={"TUFOTA_PASSPHRASE_RELEASE_GW_100": "own", "TUFOTA_PASSPHRASE": "shared"},
        prompt=lambda q: asked.append(q) or "typed",  # type: ignore[func-returns-value]
    )
    assert source.for_key(tmp_path / "release-gw-100.key") == "own"
    assert source.for_key(tmp_path / "other.key") == "shared"
    prompted = KeyPassphrases(env={}, prompt=lambda q: asked.append(q) or "typed")  # type: ignore[func-returns-value]
    assert prompted.for_key(tmp_path / "alice.root.key") == "typed"
    assert prompted.for_key(tmp_path / "alice.root.key") == "typed"  # asked once
    assert asked == [f"Passphrase for {tmp_path / 'alice.root.key'}: "]
    with pytest.raises(TufotaError, match="TUFOTA_PASSPHRASE_ALICE_ROOT"):
        KeyPassphrases(env={}).for_key(tmp_path / "alice.root.key")  # no terminal under pytest


def test_threshold_two_line_and_rotation_with_a_passphrase_per_key(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = site.tmp / "keys"
    keys.mkdir()
    own = {name: f"passphrase of {name} key" for name in ("a", "b", "c")}
    for name, secret in own.items():
        generate_key(keys / name, secret)
    set_env(
        monkeypatch,
        {
            **ONLINE_ENV,
            "TUFOTA_PASSPHRASE_TARGETS": OFFLINE_ENV["TUFOTA_PASSPHRASE_TARGETS"],
            **{f"TUFOTA_PASSPHRASE_{n.upper()}": s for n, s in own.items()},
        },
    )
    k = str(keys)
    assert tufota(["product", "add", "gw-500", "--key", f"{k}/a.key", "--key", f"{k}/b.key",
                   "--threshold", "2", "--repo", site.r, "--yes"]) == 0  # fmt: skip
    bundle = site.tmp / "gw-500.tar.gz"
    fw = image(site.tmp / "gw-500.img", "1.0.0")
    assert tufota(["release", "sign", str(fw), "--hardware", "gw-500", "--version", "1.0.0",
                   "--key", f"{k}/a.key", "--key", f"{k}/b.key", "--repo", site.r,
                   "--out", str(bundle), "--yes"]) == 0  # fmt: skip
    assert "2 of 2 signature(s)" in capsys.readouterr().out
    assert tufota(["product", "rotate", "gw-500", "--add-key", f"{k}/c.pub", "--remove-key",
                   f"{k}/a.pub", "--key", f"{k}/b.key", "--key", f"{k}/c.key",
                   "--repo", site.r, "--yes"]) == 0  # fmt: skip
    state = site.repo.state()
    delegation = find_product(state.targets, "gw-500")
    expected = {load_public_key(keys / f"{n}.pub").keyid for n in ("b", "c")}
    assert set(delegation.keyids) == expected
    assert delegation.threshold == 2
    role = state.roles[product_role("gw-500")]
    state.targets.verify_delegate(product_role("gw-500"), role)  # 2 of {b, c} signed it


def test_product_lines_get_their_own_keys_unless_one_is_shared_on_purpose(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    fw = image(site.tmp / "fw.img", "1.0.0")
    assert tufota(["release", "add", str(fw), "--repo", site.r, "--hardware", "gw-200",
                   "--version", "1.0.0"]) == 0  # fmt: skip
    assert tufota(["product", "add", "cam-300", "--repo", site.r, "--yes"]) == 0
    assert "new key for product line cam-300" in capsys.readouterr().out
    targets = site.repo.state().targets
    key_sets = [set(find_product(targets, hw).keyids) for hw in (HW, "gw-200", "cam-300")]
    assert all(len(s) == 1 for s in key_sets)
    assert len(set.union(*key_sets)) == 3, "two lines made without --key share a key"
    assert (site.signing / "release-cam-300.key").is_file()
    # The same key for a new line only on purpose, and the command says so.
    shared = str(site.signing / "release-gw-100.key")
    assert tufota(["product", "add", "gw-101", "--key", shared, "--repo", site.r, "--yes"]) == 0
    assert "release-gw-100.pub is shared with product line(s) gw-100" in capsys.readouterr().out


# -- a new product line, signed from the published metadata -------------------------------------


@pytest.fixture
def served(site: Site) -> Iterator[tuple[Site, ServerContext, str, str]]:
    ctx = server_context(site.repo)
    token = site.repo.token_store().create("ci", "uploader")
    try:
        with ServerThread(create_app(ctx, background=False)) as server:
            yield site, ctx, server.url, token
    finally:
        ctx.store.close()


def _device(site: Site, url: str, hw: str, version: str) -> Agent:
    config = provision_device(
        site.repo, f"dev-{hw}", hw, site.tmp / f"dev-{hw}", [], server_url=url,
        factory_version=version,
    )  # fmt: skip
    return Agent(AgentConfig.load(config))


def _roll_out(ctx: ServerContext, hw: str, version: str, target: str) -> None:
    doc = RolloutDoc(
        rollout_id=f"r-{hw}-{version}",
        hardware_id=hw,
        version=version,
        target_path=target,
        waves=(Wave("all", 100.0),),
        current_wave=0,
        state="active",
    )
    ctx.publisher.publish_rollout(doc)


def test_new_product_line_is_signed_offline_uploaded_and_installed(
    served: tuple[Site, ServerContext, str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    site, ctx, url, token = served
    workstation = site.tmp / "workstation"
    workstation.mkdir()
    monkeypatch.setenv("TUFOTA_PASSPHRASE_RELEASE_GW_300", "gw-300 passphrase 1")
    root = str(site.signing / "root.json")
    add = workstation / "gw-300-line.tar.gz"
    assert tufota(["product", "add", "gw-300", "--metadata", url, "--root", root,
                   "--targets-key", str(site.signing / "targets.key"),
                   "--key-dir", str(workstation), "--out", str(add), "--yes"]) == 0  # fmt: skip
    assert tufota(["release", "upload", str(add), "--server", url, "--token", token]) == 0
    # What the line's first release needs is published: its role is in snapshot.
    assert "firmware-gw-300.json" in site.repo.state().snapshot.signed.meta
    assert tufota(["repo", "verify", "--repo", site.r]) == 0
    releases = []
    for version in ("1.0.0", "1.1.0"):
        fw = image(workstation / f"gw-300-{version}.img", version)
        out = workstation / f"gw-300-{version}.tar.gz"
        assert tufota(["release", "sign", str(fw), "--hardware", "gw-300", "--version", version,
                       "--key", str(workstation / "release-gw-300.key"), "--metadata", url,
                       "--root", root, "--out", str(out), "--yes"]) == 0  # fmt: skip
        assert tufota(["release", "upload", str(out), "--server", url, "--token", token]) == 0
        releases.append(f"firmware/gw-300/{version}/{fw.name}")
    capsys.readouterr()
    agent = _device(site, url, "gw-300", "1.0.0")
    _roll_out(ctx, "gw-300", "1.1.0", releases[1])
    agent.run_once()
    assert agent.status()["pending_version"] == "1.1.0"


def test_repo_verify_fails_on_a_delegation_devices_cannot_find(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # How the old 'product add' published: the delegation without the role.
    passphrases = KeyPassphrases()
    state = site.repo.state()
    new = add_product_line(
        state.targets,
        "gw-400",
        [generate_key(site.tmp / "k", "some passphrase").key],
        1,
        utcnow(),
        Expiry(),
    )
    sign_all(new, [load_signer(site.repo.key("targets"), passphrases)])
    site.repo.publisher(passphrases).publish({}, [], new)
    capsys.readouterr()
    assert tufota(["repo", "verify", "--repo", site.r]) == 1
    assert "does not list firmware-gw-400.json" in capsys.readouterr().out


# -- the attacker holds everything the server process can read ----------------------------------


def test_an_attacker_with_the_servers_files_and_environment_cannot_publish_firmware(
    served: tuple[Site, ServerContext, str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    site, ctx, url, _token = served
    agent = _device(site, url, HW, "1.0.0")
    agent.run_once()
    # The attacker: the server's environment and files. On the one-machine layout
    # the signing directory's encrypted files sit on the same disk; they get those too.
    set_env(monkeypatch, dict(ONLINE_ENV))
    loot = site.tmp / "loot"
    shutil.copytree(site.repo.path, loot / "repo")
    shutil.copytree(site.signing, loot / "repo-signing")
    stolen = Repository.open(loot / "repo")
    online = KeyPassphrases(env=dict(ONLINE_ENV))
    before = tree(site.repo.path / "public")
    evil = image(site.tmp / "evil.img", "9.9.9")
    served_repo = site.r

    # 1. Through the CLI, on the live repository and on the stolen copy.
    for r in (served_repo, str(stolen.path)):
        for hw in (HW, "evil-1"):
            argv = ["release", "add", str(evil), "--repo", r, "--hardware", hw,
                    "--version", "9.9.9", "--signing-dir", str(loot / "repo-signing")]  # fmt: skip
            assert tufota(argv) == 1
            assert "passphrase" in capsys.readouterr().err
    proposal = site.tmp / "evil-root.json"
    # A root naming the server's online key as root key is not even proposed.
    assert tufota(["root", "rotate", "--repo", served_repo, "--key",
                   str(loot / "repo/keys/online.pub"), "--out", str(proposal)]) == 1  # fmt: skip
    assert "is the server's online" in capsys.readouterr().err
    assert not proposal.exists()

    # 2. Through the server's own publisher, signing with every key it can open.
    snap_signer = load_signer(stolen.key("online"), online)
    rollouts_signer = load_signer(stolen.key("rollouts"), online)
    state = load_state(site.repo.storage)
    role = Metadata[Targets].from_bytes(state.roles[product_role(HW)].to_bytes())
    role, target = add_release(role, evil, FirmwareInfo(HW, "9.9.9"), utcnow(), Expiry())
    new_line = add_product_line(
        state.targets, "evil-1", [snap_signer.public_key], 1, utcnow(), Expiry()
    )
    new_root = Metadata[Root].from_bytes(state.root.to_bytes())
    new_root.signed.version += 1
    new_root.signed.add_key(snap_signer.public_key, Root.type)
    for md in (role, new_line, new_root):
        for signer in (snap_signer, rollouts_signer):
            md.sign(signer, append=True)
    evil_line = empty_delegated(utcnow(), Expiry().product)
    evil_line.sign(snap_signer)
    for attempt in (
        lambda: ctx.publisher.publish({product_role(HW): role}, [Blob(target, path=evil)], None),
        lambda: ctx.publisher.publish({product_role("evil-1"): evil_line}, [], new_line),
        lambda: ctx.publisher.publish_root(new_root),
    ):
        with pytest.raises(TufotaError):
            attempt()
    assert tree(site.repo.path / "public") == before, "a refused attempt published something"

    # 3. Bypassing the server: write the forged release straight into storage,
    #    re-sign snapshot and timestamp, and roll it out with the rollouts key.
    storage = site.repo.storage
    storage.put(target_storage_key(target), evil.read_bytes())
    doc = RolloutDoc("r-evil", HW, "9.9.9", target.path, (Wave("all", 100.0),), 0, "active")
    data = doc.to_bytes()
    rollout_target = TargetFile.from_data(f"rollouts/{HW}.json", io.BytesIO(data), ["sha256"])
    storage.put(target_storage_key(rollout_target), data)
    rollouts = Metadata[Targets].from_bytes(state.roles["rollouts"].to_bytes())
    rollouts.signed.targets[rollout_target.path] = rollout_target
    rollouts.signed.version += 1
    rollouts.signatures.clear()
    rollouts.sign(rollouts_signer)
    snapshot = Metadata[Snapshot].from_bytes(state.snapshot.to_bytes())
    for name, md in ((product_role(HW), role), ("rollouts", rollouts)):
        storage.put(metadata_key(name, md.signed.version), md.to_bytes())
        snapshot.signed.meta[f"{name}.json"] = MetaFile(md.signed.version)
    snapshot.signed.version += 1
    snapshot.signatures.clear()
    snapshot.sign(snap_signer)
    storage.put(metadata_key(Snapshot.type, snapshot.signed.version), snapshot.to_bytes())
    timestamp = Metadata[Timestamp].from_bytes(state.timestamp.to_bytes())
    timestamp.signed.version += 1
    timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
    timestamp.signatures.clear()
    timestamp.sign(snap_signer)
    storage.put(metadata_key(Timestamp.type), timestamp.to_bytes())

    agent.run_once()
    status = agent.status()
    assert status["installed_version"] == "1.0.0"
    assert status["pending_version"] is None


# -- issue 14 points in the release commands ------------------------------------------------------


def _signed_bundle(site: Site) -> Path:
    out = site.tmp / "gw-1.1.0.tar.gz"
    fw = image(site.tmp / "fw-1.1.0.img", "1.1.0")
    assert tufota(["release", "sign", str(fw), "--hardware", HW, "--version", "1.1.0",
                   "--key", str(site.signing / "release-gw-100.key"), "--repo", site.r,
                   "--out", str(out), "--yes"]) == 0  # fmt: skip
    return out


def test_release_verify_takes_root_or_repo_and_says_so_otherwise(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = str(_signed_bundle(site))
    capsys.readouterr()
    assert tufota(["release", "verify", bundle]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tufota: error: release verify needs the root you trust: --root")
    assert len(err.strip().splitlines()) == 1
    assert tufota(["release", "verify", bundle, "--repo", site.r]) == 0
    assert tufota(["release", "verify", bundle, "--root", str(site.signing / "root.json")]) == 0
    assert "OK" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tufota(["release", "verify", bundle, "--repo", site.r, "--yes"])
    with pytest.raises(SystemExit):
        tufota(["product", "list", "--repo", site.r, "--yes"])


def test_release_sign_reads_a_copy_of_public_or_of_public_metadata(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    fw = image(site.tmp / "fw-1.2.0.img", "1.2.0")
    root = str(site.signing / "root.json")
    for n, source in enumerate(("public", "public/metadata")):
        out = site.tmp / f"b{n}.tar.gz"
        assert tufota(["release", "sign", str(fw), "--hardware", HW, "--version", "1.2.0",
                       "--key", str(site.signing / "release-gw-100.key"),
                       "--metadata", str(site.repo.path / source), "--root", root,
                       "--out", str(out), "--yes"]) == 0  # fmt: skip


def test_release_sign_network_error_is_one_line_naming_url_and_cause(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens
    fw = image(site.tmp / "fw-1.2.0.img", "1.2.0")
    capsys.readouterr()
    assert tufota(["release", "sign", str(fw), "--hardware", HW, "--version", "1.2.0",
                   "--key", str(site.signing / "release-gw-100.key"), "--metadata", url,
                   "--root", str(site.signing / "root.json"), "--out",
                   str(site.tmp / "b.tar.gz"), "--yes"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert err.strip() == f"tufota: error: cannot fetch metadata from {url}: Connection refused"


def test_offline_bundle_holds_one_release_and_a_device_installs_it(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    fw = image(site.tmp / "fw-1.1.0.img", "1.1.0")
    assert tufota(["release", "add", str(fw), "--repo", site.r, "--hardware", HW,
                   "--version", "1.1.0"]) == 0  # fmt: skip
    other = image(site.tmp / "other.img", "2.0.0")
    assert tufota(["release", "add", str(other), "--repo", site.r, "--hardware", "gw-200",
                   "--version", "2.0.0"]) == 0  # fmt: skip
    out = site.tmp / "usb" / "gw-100-1.1.0.tar.gz"
    out.parent.mkdir()
    argv = ["release", "export", "--repo", site.r, "--hardware", HW, "--version", "1.1.0"]
    assert tufota([*argv, "--out", str(out)]) == 0
    assert tufota([*argv, "--out", str(out)]) == 1  # never overwrites
    state = site.repo.state()
    target = state.roles[product_role(HW)].signed.targets[f"firmware/{HW}/1.1.0/{fw.name}"]
    with tarfile.open(out) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile(OFFLINE_MANIFEST).read())  # type: ignore[union-attr]
        for name in names[1:]:
            member = tar.extractfile(name).read()  # type: ignore[union-attr]
            assert member == (site.repo.path / "public" / name).read_bytes(), name
    meta = state.snapshot.signed.meta
    assert names == [
        OFFLINE_MANIFEST,
        "metadata/1.root.json",
        "metadata/timestamp.json",
        f"metadata/{state.snapshot.signed.version}.snapshot.json",
        f"metadata/{meta['targets.json'].version}.targets.json",
        f"metadata/{meta['firmware-gw-100.json'].version}.firmware-gw-100.json",
        f"metadata/{meta['rollouts.json'].version}.rollouts.json",
        target_storage_key(target),
    ]
    assert manifest == {"format": 1, "hardware_id": HW, "version": "1.1.0", "target": target.path}
    assert tufota([*argv[:-1], "9.9.9", "--out", str(site.tmp / "x.tar.gz")]) == 1
    assert "has no release 9.9.9" in capsys.readouterr().err
    # A device without network installs it (the bundle extracted, as on a USB stick).
    agent = _device(site, "http://127.0.0.1:9", HW, "1.0.0")
    stick = site.tmp / "stick"
    with tarfile.open(out) as tar:
        tar.extractall(stick, filter="data")
    (stick / "bundle.json").write_text(
        json.dumps({"schema": "tufota.bundle/1", "target": manifest["target"]})
    )
    agent.install_bundle(stick)
    assert agent.status()["pending_version"] == "1.1.0"


# -- the command line ----------------------------------------------------------------------------


def test_version_and_a_closed_pipe_end_quietly(tmp_path: Path) -> None:
    generate_key(tmp_path / "k", "some passphrase")
    run = [sys.executable, "-m", "tufota_cli.main"]
    version = subprocess.run([*run, "--version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0
    assert version.stdout.startswith("tufota ")
    read, write = os.pipe()
    os.close(read)  # the reader went away, as 'head' does
    try:
        closed = subprocess.run(
            [*run, "key", "show", str(tmp_path / "k.pub")],
            stdout=write,
            stderr=subprocess.PIPE,
            check=False,
        )
    finally:
        os.close(write)
    assert closed.returncode == 141
    assert closed.stderr == b""


def test_release_add_of_a_new_line_without_the_targets_passphrase_writes_nothing(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TUFOTA_PASSPHRASE_TARGETS")
    before = {**tree(site.signing), **tree(site.repo.path)}
    fw = image(site.tmp / "fw.img", "1.0.0")
    capsys.readouterr()
    assert tufota(["release", "add", str(fw), "--repo", site.r, "--hardware", "gw-200",
                   "--version", "1.0.0"]) == 1  # fmt: skip
    assert "TUFOTA_PASSPHRASE_TARGETS" in capsys.readouterr().err
    assert {**tree(site.signing), **tree(site.repo.path)} == before


def test_serve_warns_when_its_environment_holds_an_offline_passphrase(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    check_custody(site.repo, None, lab_override=False)  # the site's env has them all
    err = capsys.readouterr().err
    assert "TUFOTA_PASSPHRASE_RELEASE_GW_100" in err
    assert "TUFOTA_PASSPHRASE_ROOT" in err
    set_env(monkeypatch, dict(ONLINE_ENV))
    check_custody(site.repo, None, lab_override=False)
    assert capsys.readouterr().err == ""


def test_product_add_needs_the_lines_own_key_to_sign_its_first_role(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    generate_key(site.tmp / "team", "team passphrase")
    (site.tmp / "team.key").rename(site.tmp / "elsewhere.key")  # only the .pub is here
    before = tree(site.repo.path)
    capsys.readouterr()
    argv = ["product", "add", "cam-9", "--key", str(site.tmp / "team.pub"), "--repo", site.r]
    assert tufota([*argv, "--yes"]) == 1
    err = capsys.readouterr().err
    assert "signs the line's empty first role with the line's own key(s)" in err
    assert len(err.strip().splitlines()) == 1
    assert tree(site.repo.path) == before


def test_serve_finds_offline_keys_behind_a_symbolic_link(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_env(monkeypatch, dict(ONLINE_ENV))
    (site.repo.path / "offline").symlink_to(site.signing, target_is_directory=True)
    (site.repo.path / "loop").symlink_to(site.repo.path, target_is_directory=True)
    with pytest.raises(TufotaError, match=r"offline/release-gw-100\.key is the private key of "):
        check_custody(site.repo, None, lab_override=False)
