"""Security rules of the offline keys, each through the real device agent and a real server.

Every case starts from the same world: an embedded repository (root v1),
product lines ``gw-100`` (release keys A and B, threshold 1) and ``cam-200``
(key C), release 1.0.0 of gw-100 installed on a provisioned device, and the
repository served on loopback. A case then makes version 1.1.0 of gw-100
*appear* available, either legitimately (through the signing commands and the
verifying publisher) or as an attacker would (metadata written straight into
storage, with snapshot and timestamp re-signed by the server's online key,
i.e. a compromised server), and starts a rollout to it with the online key.
The device must install exactly the legitimate cases.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from device_agent import Agent, AgentConfig
from repo_server import Blob, Repository, ServerContext, ServerThread, create_app, load_state
from repo_server._publisher import metadata_key, target_storage_key
from signing import (
    Expiry,
    add_release,
    empty_delegated,
    generate_key,
    load_public_key,
    load_signer,
    propose_rotation,
    read_bundle,
    sign_proposal,
)
from staging import RolloutController, SqliteTrackerStore
from tests.conftest import PASSPHRASE, ask
from tufota_cli.device_cmds import provision_device
from tufota_cli.main import main as tufota
from tufota_core import FirmwareInfo, RolloutDoc, VerificationError, Wave, utcnow

HW, OTHER = "gw-100", "cam-200"
NEW = "1.1.0"


@dataclass
class World:
    tmp: Path
    repo: Repository
    keys: Path
    ctx: ServerContext
    server: ServerThread
    agent: Agent

    def signer(self, name: str) -> Signer:
        return load_signer(load_public_key(self.keys / f"{name}.pub"), ask)

    def repo_signer(self, name: str) -> Signer:
        return load_signer(self.repo.key(name), ask)

    def image(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def cli(self, *argv: str) -> int:
        return tufota([*argv])

    def publish_bundle(self, bundle: Path) -> None:
        with read_bundle(bundle) as b:
            blobs = [Blob(t, path=p) for t, p in b.blobs]
            self.ctx.publisher.publish(b.roles, blobs, b.targets)

    def sign_release(self, key: str, version: str = NEW) -> Path:
        image = self.image(f"fw-{version}.img", f"firmware {version}\n".encode() * 500)
        out = self.tmp / f"release-{version}.tar.gz"
        assert (
            self.cli(
                "release", "sign", str(image), "--hardware", HW, "--version", version,
                "--key", str(self.keys / f"{key}.key"), "--repo", str(self.repo.path),
                "--out", str(out), "--yes",
            )
            == 0
        )  # fmt: skip
        return out

    def forged_release(
        self, role_name: str, signer: Signer, path_hw: str = HW
    ) -> tuple[Metadata[Targets], TargetFile, bytes]:
        """The next version of ``role_name`` listing a 1.1.0 image, signed by ``signer``."""
        state = load_state(self.repo.storage)
        role = state.roles.get(role_name)
        if role is None:
            role = empty_delegated(utcnow(), Expiry().product)
            role.signed.version = 0
        data = b"evil firmware\n" * 500
        image = self.image("evil.img", data)
        role, target = add_release(role, image, FirmwareInfo(path_hw, NEW), utcnow(), Expiry())
        role.sign(signer)
        return role, target, data

    def forge(
        self,
        roles: dict[str, Metadata[Targets]] | None = None,
        blobs: list[tuple[TargetFile, bytes]] = (),  # type: ignore[assignment]
        root: Metadata[Root] | None = None,
    ) -> None:
        """Write metadata straight into storage, as a compromised server could."""
        storage = self.repo.storage
        state = load_state(storage)
        online = self.repo_signer(self.repo.config.online_key)
        for target, data in blobs:
            storage.put(target_storage_key(target), data)
        if root is not None:
            storage.put(metadata_key(Root.type, root.signed.version), root.to_bytes())
        snapshot = state.snapshot
        for name, md in (roles or {}).items():
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
        storage.put(metadata_key(Timestamp.type), timestamp.to_bytes())

    def start_rollout(self, target_path: str) -> None:
        doc = RolloutDoc(
            rollout_id="r-1",
            hardware_id=HW,
            version=NEW,
            target_path=target_path,
            waves=(Wave("all", 100.0),),
            current_wave=0,
            state="active",
        )
        try:
            self.ctx.publisher.publish_rollout(doc)
        except VerificationError:
            # The server refuses to re-sign a rollouts role that lists firmware;
            # an attacker holding the online keys signs the document directly.
            rollouts = load_state(self.repo.storage).roles["rollouts"]
            data = doc.to_bytes()
            target = TargetFile.from_data(f"rollouts/{HW}.json", io.BytesIO(data), ["sha256"])
            rollouts.signed.targets[target.path] = target
            rollouts.signed.version += 1
            rollouts.signatures.clear()
            rollouts.sign(self.repo_signer(self.repo.config.rollouts_key))
            self.forge({"rollouts": rollouts}, [(target, data)])

    def installs(self) -> bool:
        self.agent.run_once()
        return self.agent.status()["pending_version"] == NEW


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("TUFOTA_PASSPHRASE", PASSPHRASE)
    repo = Repository.create(tmp_path / "repo", PASSPHRASE)
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("A", "B", "C"):
        generate_key(keys / name, PASSPHRASE)
    r = str(repo.path)
    assert tufota(["product", "add", HW, "--key", f"{keys}/A.pub", "--key", f"{keys}/B.pub",
                   "--repo", r, "--yes"]) == 0  # fmt: skip
    assert tufota(["product", "add", OTHER, "--key", f"{keys}/C.pub", "--repo", r, "--yes"]) == 0
    publisher = repo.publisher(ask)
    store = SqliteTrackerStore(repo.tracker_path)
    ctx = ServerContext(publisher, store, RolloutController(store, publisher))
    with ServerThread(create_app(ctx, background=False)) as server:
        world = World(tmp_path, repo, keys, ctx, server, agent=None)  # type: ignore[arg-type]
        world.publish_bundle(world.sign_release("A", "1.0.0"))
        config = provision_device(
            repo, "dev-1", HW, tmp_path / "dev-1", [], server_url=server.url,
            factory_version="1.0.0",
        )  # fmt: skip
        world.agent = Agent(AgentConfig.load(config))
        yield world
    store.close()


# -- scenarios: each makes 1.1.0 look available and returns its target path -------------


def legit_release(w: World) -> str:
    w.publish_bundle(w.sign_release("A"))
    return f"firmware/{HW}/{NEW}/fw-{NEW}.img"


def _rotation(w: World, signer_names: list[str]) -> Metadata[Root]:
    for name in ("R1", "R2", "R3"):
        generate_key(w.keys / name, PASSPHRASE)
    new_keys = [load_public_key(w.keys / f"{n}.pub").key for n in ("R1", "R2", "R3")]
    proposal = propose_rotation(
        w.repo.state().root, utcnow(), Expiry(), root_keys=new_keys, threshold=2
    )
    for name in signer_names:
        sign_proposal(proposal, w.repo_signer("root") if name == "old" else w.signer(name))
    return proposal.root


def rotated_root(w: World) -> str:
    path = w.tmp / "proposal.json"
    for name in ("R1", "R2", "R3"):
        generate_key(w.keys / name, PASSPHRASE)
    r = str(w.repo.path)
    rotate = ["root", "rotate", "--repo", r, "--threshold", "2", "--out", str(path)]
    for name in ("R1", "R2", "R3"):
        rotate += ["--key", str(w.keys / f"{name}.pub")]
    assert w.cli(*rotate) == 0
    copy = w.tmp / "copy.json"
    copy.write_bytes(path.read_bytes())
    # Old root key and R1 sign one copy, R3 another; the copies merge.
    old_root = str(w.repo.key("root").path.with_suffix(".key"))
    assert w.cli("root", "sign", str(path), "--key", old_root, "--key", f"{w.keys}/R1.key",
                 "--yes") == 0  # fmt: skip
    assert w.cli("root", "sign", str(copy), "--key", f"{w.keys}/R3.key", "--yes") == 0
    merged = w.tmp / "merged.json"
    assert w.cli("root", "merge", str(path), str(copy), "--out", str(merged)) == 0
    assert w.cli("root", "status", str(merged), "--check") == 0
    assert w.cli("root", "publish", str(merged), "--repo", r) == 0
    return legit_release(w)


def _signing_refuses_on_top(w: World) -> None:
    """Offline keys never sign on top of a repository that does not verify."""
    image = w.image("fw-1.2.0.img", b"firmware 1.2.0\n" * 500)
    argv = ["release", "sign", str(image), "--hardware", HW, "--version", "1.2.0"]
    argv += ["--key", str(w.keys / "A.key"), "--repo", str(w.repo.path)]
    assert w.cli(*argv, "--out", str(w.tmp / "on-top.tar.gz"), "--yes") == 1
    assert not (w.tmp / "on-top.tar.gz").exists()


def root_below_new_threshold(w: World) -> str:
    root = _rotation(w, ["old", "R1"])  # only 1 of the 2 new signatures
    assert w.cli("root", "publish", _save(w, root), "--repo", str(w.repo.path)) == 1
    target = legit_release(w)
    w.forge(root=root)
    _signing_refuses_on_top(w)
    return target


def root_without_old_threshold(w: World) -> str:
    root = _rotation(w, ["R1", "R2"])  # the old root key did not sign
    assert w.cli("root", "publish", _save(w, root), "--repo", str(w.repo.path)) == 1
    target = legit_release(w)
    w.forge(root=root)
    _signing_refuses_on_top(w)
    return target


def _save(w: World, root: Metadata[Root]) -> str:
    path = w.tmp / "forged-root.json"
    path.write_bytes(root.to_bytes())
    return str(path)


def revoked_key_signs(w: World) -> str:
    assert w.cli("product", "revoke", HW, "--remove-key", f"{w.keys}/A.pub",
                 "--key", f"{w.keys}/B.key", "--repo", str(w.repo.path), "--yes") == 0  # fmt: skip
    role, target, data = w.forged_release(f"firmware-{HW}", w.signer("A"))
    with pytest.raises(VerificationError):  # the verifying publisher refuses it ...
        w.ctx.publisher.publish({f"firmware-{HW}": role}, [Blob(target, data=data)])
    w.forge({f"firmware-{HW}": role}, [(target, data)])  # ... so the attacker bypasses it
    return target.path


def other_line_key_signs_role(w: World) -> str:
    role, target, data = w.forged_release(f"firmware-{HW}", w.signer("C"))
    w.forge({f"firmware-{HW}": role}, [(target, data)])
    return target.path


def other_line_role_lists_path(w: World) -> str:
    role, target, data = w.forged_release(f"firmware-{OTHER}", w.signer("C"))
    w.forge({f"firmware-{OTHER}": role}, [(target, data)])
    return target.path


def online_key_lists_firmware_in_rollouts(w: World) -> str:
    state = load_state(w.repo.storage)
    rollouts = state.roles["rollouts"]
    data = b"unsigned firmware\n" * 500
    path = f"firmware/{HW}/{NEW}/evil.img"
    target = TargetFile.from_data(path, io.BytesIO(data), ["sha256"])
    target.unrecognized_fields["custom"] = FirmwareInfo(HW, NEW).to_custom()
    rollouts.signed.targets[path] = target
    rollouts.signed.version += 1
    rollouts.signatures.clear()
    rollouts.sign(w.repo_signer(w.repo.config.rollouts_key))
    w.forge({"rollouts": rollouts}, [(target, data)])
    return path


def online_key_signs_product_role(w: World) -> str:
    role, target, data = w.forged_release(f"firmware-{HW}", w.repo_signer("rollouts"))
    role.sign(w.repo_signer("online"), append=True)
    w.forge({f"firmware-{HW}": role}, [(target, data)])
    return target.path


CASES: list[tuple[str, Callable[[World], str], bool]] = [
    ("legit_release_is_installed", legit_release, True),
    ("rotated_root_is_followed", rotated_root, True),
    ("root_signed_below_new_threshold_is_refused", root_below_new_threshold, False),
    ("root_without_old_threshold_is_refused", root_without_old_threshold, False),
    ("revoked_product_key_no_longer_counts", revoked_key_signs, False),
    ("key_of_line_a_cannot_sign_line_b_role", other_line_key_signs_role, False),
    ("role_of_line_a_cannot_list_line_b_firmware", other_line_role_lists_path, False),
    ("online_rollouts_key_cannot_add_firmware", online_key_lists_firmware_in_rollouts, False),
    ("online_keys_cannot_sign_product_role", online_key_signs_product_role, False),
]


@pytest.mark.parametrize(("name", "scenario", "installs"), CASES, ids=[c[0] for c in CASES])
def test_device_installs_only_what_the_right_offline_keys_signed(
    world: World, name: str, scenario: Callable[[World], str], installs: bool
) -> None:
    target_path = scenario(world)
    world.start_rollout(target_path)
    assert world.installs() is installs
    if not installs:
        assert world.agent.status()["installed_version"] == "1.0.0"
    if name == "rotated_root_is_followed":
        cached = world.agent.config.state_dir / "metadata" / "root.json"
        assert Metadata[Root].from_bytes(cached.read_bytes()).signed.version == 2
