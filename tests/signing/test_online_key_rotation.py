"""Rotating a stolen online key end to end, with the real server and the real device agent.

Each test starts from a repository (root v1), product line ``gw-100``, release
1.0.0 installed on a provisioned device and the server on loopback. The server
is stopped, the key is rotated with the CLI (``root publish --online-key`` for
the snapshot/timestamp key, ``rollouts rotate`` for the rollouts key), and the
server restarted on the same port with the repository's new configuration.
Then the device must follow a rollout the new keys sign, and refuse one whose
metadata the OLD key signed; the same forgery signed with the NEW key is
installed, so the old key's signature is what the device refuses. Refused
rotations leave the repository and signing directory byte for byte unchanged.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Timestamp

from device_agent import Agent, AgentConfig
from repo_server import (
    Blob,
    OnlineSigners,
    Publisher,
    Repository,
    ServerContext,
    ServerThread,
    create_app,
    load_state,
)
from repo_server._publisher import metadata_key, target_storage_key
from signing import (
    KeyPassphrases,
    RootProposal,
    generate_key,
    load_public_key,
    load_signer,
    read_bundle,
)
from staging import RolloutController, SqliteTrackerStore
from tests.conftest import PASSPHRASE
from tests.signing.test_kms import _ecc_key, kms  # noqa: F401 - the fixture, by name
from tufota_cli.device_cmds import provision_device
from tufota_cli.main import main as tufota
from tufota_core import RolloutDoc, Wave

HW = "gw-100"
NEW = "1.1.0"
NEW_PASSPHRASE = "another passphrase"  # the new keys' own (TUFOTA_PASSPHRASE_<STEM>)


class Fleet:
    """A repository, its server (restartable on the same port) and one device."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.path = tmp / "repo"
        self.signing = tmp / "repo-signing"
        self.keys = tmp / "keys"
        self.port = 0
        self.server: ServerThread | None = None
        self.store: SqliteTrackerStore | None = None
        self.ctx: ServerContext | None = None
        self.agent: Agent | None = None

    def start(self) -> None:
        repo = Repository.open(self.path)
        self.store = SqliteTrackerStore(repo.tracker_path)
        publisher = repo.publisher(KeyPassphrases())
        self.ctx = ServerContext(publisher, self.store, RolloutController(self.store, publisher))
        self.server = ServerThread(create_app(self.ctx, background=False), port=self.port)
        self.server.start()
        self.port = self.server.port

    def stop(self) -> None:
        assert self.server is not None
        assert self.store is not None
        self.server.stop()
        self.store.close()
        self.server = None

    @property
    def repo(self) -> Repository:
        return Repository.open(self.path)

    def cli(self, *argv: str) -> int:
        return tufota([*argv])

    def release(self, version: str) -> str:
        image = self.tmp / f"fw-{version}.img"
        image.write_bytes(f"firmware {version}\n".encode() * 500)
        out = self.tmp / f"release-{version}.tar.gz"
        assert self.cli("release", "sign", str(image), "--hardware", HW, "--version", version,
                        "--key", str(self.keys / "A.key"), "--repo", str(self.path),
                        "--out", str(out), "--yes") == 0  # fmt: skip
        assert self.ctx is not None
        with read_bundle(out) as b:
            self.ctx.publisher.publish(b.roles, [Blob(t, path=p) for t, p in b.blobs], b.targets)
        return f"firmware/{HW}/{version}/fw-{version}.img"

    def rollout(self, target_path: str) -> RolloutDoc:
        return RolloutDoc(
            rollout_id="r-1",
            hardware_id=HW,
            version=NEW,
            target_path=target_path,
            waves=(Wave("all", 100.0),),
            current_wave=0,
            state="active",
        )

    def forge(self, doc: RolloutDoc, rollouts_signer: Signer, online_signer: Signer) -> None:
        """Publish ``doc`` as whoever holds these keys could: straight into storage."""
        storage = self.repo.storage
        state = load_state(storage)
        data = doc.to_bytes()
        target = TargetFile.from_data(f"rollouts/{HW}.json", io.BytesIO(data), ["sha256"])
        storage.put(target_storage_key(target), data)
        rollouts = state.roles["rollouts"]
        rollouts.signed.targets[target.path] = target
        rollouts.signed.version += 1
        rollouts.signatures.clear()
        rollouts.sign(rollouts_signer)
        storage.put(metadata_key("rollouts", rollouts.signed.version), rollouts.to_bytes())
        snapshot = state.snapshot
        snapshot.signed.meta["rollouts.json"] = MetaFile(rollouts.signed.version)
        snapshot.signed.version += 1
        snapshot.signatures.clear()
        snapshot.sign(online_signer)
        storage.put(metadata_key(Snapshot.type, snapshot.signed.version), snapshot.to_bytes())
        timestamp: Metadata[Timestamp] = state.timestamp
        timestamp.signed.version += 1
        timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
        timestamp.signatures.clear()
        timestamp.sign(online_signer)
        storage.put(metadata_key(Timestamp.type), timestamp.to_bytes())

    def installs(self) -> bool:
        assert self.agent is not None
        self.agent.run_once()
        return bool(self.agent.status()["pending_version"] == NEW)

    def snapshot(self) -> dict[str, bytes]:
        """Every file of the repository and signing directory, byte for byte."""
        files = {}
        for top in (self.path, self.signing):
            for path in sorted(top.rglob("*")):
                if path.is_file() and path.name != ".publish.lock":
                    files[str(path)] = path.read_bytes()
        return files

    def new_key(self, name: str) -> Path:
        generate_key(self.keys / name, NEW_PASSPHRASE)
        return self.keys / f"{name}.pub"

    def old_key(self, name: str) -> Signer:
        """A copy of the repository's current online key ``name``, as the thief kept it."""
        stolen = self.tmp / "stolen"
        stolen.mkdir(exist_ok=True)
        for suffix in (".key", ".pub"):
            shutil.copy(self.path / "keys" / f"{name}{suffix}", stolen / f"{name}{suffix}")
        return load_signer(load_public_key(stolen / f"{name}.pub"), lambda: PASSPHRASE)

    def signer(self, pub: Path) -> Signer:
        return load_signer(load_public_key(pub), lambda: NEW_PASSPHRASE)


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    monkeypatch.setenv("TUFOTA_PASSPHRASE", PASSPHRASE)
    for name in ("ONLINE_2", "ROLLOUTS_2", "OTHER"):
        monkeypatch.setenv(f"TUFOTA_PASSPHRASE_{name}", NEW_PASSPHRASE)
    f = Fleet(tmp_path)
    Repository.create(f.path, PASSPHRASE)
    f.keys.mkdir()
    generate_key(f.keys / "A", PASSPHRASE)
    assert f.cli("product", "add", HW, "--key", f"{f.keys}/A.pub", "--repo", str(f.path),
                 "--yes") == 0  # fmt: skip
    f.start()
    try:
        f.release("1.0.0")
        assert f.server is not None
        config = provision_device(
            f.repo, "dev-1", HW, tmp_path / "dev-1", [], server_url=f.server.url,
            factory_version="1.0.0",
        )  # fmt: skip
        f.agent = Agent(AgentConfig.load(config))
        f.agent.run_once()  # first poll: no rollout yet
        f.stop()
        yield f
    finally:
        if f.server is not None:
            f.stop()


def _root_proposal(f: Fleet, online: Path) -> Path:
    proposal = f.tmp / "root-v2.json"
    assert f.cli("root", "rotate", "--repo", str(f.path), "--online-key", str(online),
                 "--out", str(proposal)) == 0  # fmt: skip
    assert f.cli("root", "sign", str(proposal), "--key", str(f.signing / "root.key"),
                 "--yes") == 0  # fmt: skip
    return proposal


def test_root_rotation_moves_snapshot_and_timestamp_to_the_new_online_key(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    stolen = fleet.old_key("online")
    new = fleet.new_key("online-2")
    proposal = _root_proposal(fleet, new)
    assert fleet.cli("root", "publish", str(proposal), "--repo", str(fleet.path),
                     "--online-key", str(new)) == 0  # fmt: skip
    repo = fleet.repo
    assert repo.config.online_key == "online-2"
    assert (repo.keys_dir / "online-2.key").is_file()
    assert not (repo.keys_dir / "online.key").exists()  # serve would refuse beside it
    state = repo.state()
    assert state.root.signed.version == 2
    new_id = load_public_key(new).keyid
    for md in (state.snapshot, state.timestamp):
        assert list(md.signatures) == [new_id]
    capsys.readouterr()
    assert fleet.cli("repo", "verify", "--repo", str(fleet.path)) == 0
    assert repo.offline_keys_here() == []  # serve starts beside the new key

    fleet.start()
    target = fleet.release(NEW)
    # Whoever kept the old online key signs snapshot and timestamp with it: refused.
    rollouts_key = load_signer(repo.key(repo.config.rollouts_key), lambda: PASSPHRASE)
    fleet.forge(fleet.rollout(target), rollouts_key, stolen)
    assert fleet.installs() is False
    assert fleet.agent is not None
    assert fleet.agent.status()["installed_version"] == "1.0.0"
    # The server, now signing with the new key, publishes the rollout: followed.
    assert fleet.ctx is not None
    fleet.ctx.publisher.publish_rollout(fleet.rollout(target))
    assert fleet.installs() is True
    cached = fleet.agent.config.state_dir / "metadata" / "root.json"
    assert Metadata[Root].from_bytes(cached.read_bytes()).signed.version == 2


def test_rollouts_rotation_moves_the_delegation_to_the_new_key(fleet: Fleet) -> None:
    stolen = fleet.old_key("rollouts")
    new = fleet.new_key("rollouts-2")
    assert fleet.cli("rollouts", "rotate", "--repo", str(fleet.path), "--key", str(new),
                     "--yes") == 0  # fmt: skip
    repo = fleet.repo
    assert repo.config.rollouts_key == "rollouts-2"
    assert not (repo.keys_dir / "rollouts.key").exists()
    assert repo.offline_keys_here() == []
    state = repo.state()
    assert state.targets.signed.version == 3  # v2 added the product line
    delegation = state.targets.signed.delegations.roles["rollouts"]  # type: ignore[union-attr,index]
    assert delegation.keyids == [load_public_key(new).keyid]
    assert list(state.roles["rollouts"].signatures) == [load_public_key(new).keyid]
    assert fleet.cli("repo", "verify", "--repo", str(fleet.path)) == 0

    fleet.start()
    target = fleet.release(NEW)
    online = load_signer(repo.key(repo.config.online_key), lambda: PASSPHRASE)
    # A rollout document signed with the old rollouts key: refused.
    fleet.forge(fleet.rollout(target), stolen, online)
    assert fleet.installs() is False
    assert fleet.agent is not None
    assert fleet.agent.status()["installed_version"] == "1.0.0"
    # The same document signed with the new key is followed.
    fleet.forge(fleet.rollout(target), fleet.signer(new), online)
    assert fleet.installs() is True
    # The restarted server re-signs the role with the new key (its own passphrase).
    assert fleet.ctx is not None
    assert "rollouts" in fleet.ctx.publisher.refresh_online(margin=timedelta(days=400))
    assert list(fleet.repo.state().roles["rollouts"].signatures) == [load_public_key(new).keyid]


def test_refused_root_rotations_change_nothing(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    new = fleet.new_key("online-2")
    other = fleet.new_key("other")
    proposal = _root_proposal(fleet, new)
    lonely = fleet.tmp / "lonely"
    lonely.mkdir()
    shutil.copy(new, lonely / "online-2.pub")  # its private key file is not beside it
    before = fleet.snapshot()
    r = str(fleet.path)
    cases = [
        ([], "--online-key NEW.pub"),
        (["--online-key", str(other)], "does not list"),
        (["--online-key", str(lonely / "online-2.pub")], "does not exist"),
        (["--online-key", str(fleet.path / "keys" / "online.pub")], "does not list"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert fleet.cli("root", "publish", str(proposal), "--repo", r, *extra) == 1
        assert message in capsys.readouterr().err
        assert fleet.snapshot() == before
    monkeypatch.setenv("TUFOTA_PASSPHRASE_ONLINE_2", "wrong passphrase")
    assert fleet.cli("root", "publish", str(proposal), "--repo", r, "--online-key", str(new)) == 1
    assert "wrong passphrase" in capsys.readouterr().err
    assert fleet.snapshot() == before


def test_refused_rollouts_rotations_change_nothing(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    new = fleet.new_key("rollouts-2")
    lonely = fleet.tmp / "lonely"
    lonely.mkdir()
    shutil.copy(new, lonely / "rollouts-2.pub")
    before = fleet.snapshot()
    r = str(fleet.path)
    cases = [
        (str(lonely / "rollouts-2.pub"), "does not exist"),
        (str(fleet.path / "keys" / "rollouts.pub"), "already signs the rollouts role"),
        (str(fleet.path / "keys" / "online.pub"), "name of a key this repository uses"),
        (str(fleet.signing / "targets.pub"), "must stay offline"),
        (str(fleet.keys / "A.pub"), "must stay offline"),
    ]
    for key, message in cases:
        capsys.readouterr()
        assert fleet.cli("rollouts", "rotate", "--repo", r, "--key", key, "--yes") == 1
        assert message in capsys.readouterr().err
        assert fleet.snapshot() == before
    monkeypatch.setenv("TUFOTA_PASSPHRASE_ROLLOUTS_2", "wrong passphrase")
    assert fleet.cli("rollouts", "rotate", "--repo", r, "--key", str(new), "--yes") == 1
    assert "wrong passphrase" in capsys.readouterr().err
    assert fleet.snapshot() == before


def test_root_rotation_stopped_after_publishing_completes_when_run_again(fleet: Fleet) -> None:
    new = fleet.new_key("online-2")
    proposal = _root_proposal(fleet, new)
    root = RootProposal.load(proposal).root
    repo = fleet.repo
    # A run that published root v2 with the new key and stopped before the switch.
    signers = OnlineSigners(
        fleet.signer(new), load_signer(repo.key("rollouts"), lambda: PASSPHRASE)
    )
    Publisher(repo.storage, lambda: signers).publish_root(root)
    assert repo.config.online_key == "online"
    assert fleet.cli("root", "publish", str(proposal), "--repo", str(fleet.path),
                     "--online-key", str(new)) == 0  # fmt: skip
    assert fleet.repo.config.online_key == "online-2"
    assert fleet.cli("repo", "verify", "--repo", str(fleet.path)) == 0


@pytest.mark.usefixtures("kms")
def test_root_rotation_to_a_kms_online_key_installs_only_its_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUFOTA_PASSPHRASE", PASSPHRASE)
    repo = Repository.create(tmp_path / "repo", PASSPHRASE)
    new = tmp_path / "online-kms.pub"
    assert tufota(["key", "import-kms", _ecc_key(boto3.client("kms"), "alias/online-2"),
                   "--out", str(new.with_suffix(""))]) == 0  # fmt: skip
    proposal = tmp_path / "root-v2.json"
    assert tufota(["root", "rotate", "--repo", str(repo.path), "--online-key", str(new),
                   "--out", str(proposal)]) == 0  # fmt: skip
    assert tufota(["root", "sign", str(proposal), "--key",
                   str(repo.signing_dir / "root.key"), "--yes"]) == 0  # fmt: skip
    assert tufota(["root", "publish", str(proposal), "--repo", str(repo.path),
                   "--online-key", str(new)]) == 0  # fmt: skip
    rotated = Repository.open(repo.path)
    assert rotated.config.online_key == "online-kms"
    assert rotated.key("online-kms").uri.startswith("awskms:")
    assert sorted(p.name for p in rotated.keys_dir.glob("*.key")) == ["rollouts.key"]
    kms_id = load_public_key(new).keyid
    assert list(rotated.state().timestamp.signatures) == [kms_id]
    # The server re-signs with the KMS key from then on.
    assert rotated.publisher(KeyPassphrases()).refresh_online(margin=timedelta(days=400))
    assert list(rotated.state().snapshot.signatures) == [kms_id]
    assert tufota(["repo", "verify", "--repo", str(repo.path)]) == 0
