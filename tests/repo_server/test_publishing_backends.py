"""Publishing on both backends: verified, idempotent, and atomic under a crash at every step.

"Clients keep seeing the previous valid repository" is checked with a real
``tuf.ngclient`` Updater reading straight from the storage, plus the offline
verifier.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root

from repo_server import Blob, Repository, load_state, verify_repository
from signing import load_signer
from tests.conftest import ask
from tests.repo_server.conftest import ROLE, client_sees, signed_release, snapshot_storage
from tufota_core import ConflictError, VerificationError

OLD_PATH = "firmware/gw-100/1.1.0/gw-1.1.0.img"


def test_release_publishes_and_reupload_is_idempotent(repo_on: Repository, tmp_path: Path) -> None:
    product, target, image = signed_release(repo_on, tmp_path, "2.0.0")
    publisher = repo_on.publisher(ask)
    assert publisher.publish({ROLE: product}, [Blob(target, path=image)]) is True
    after = snapshot_storage(repo_on.storage)
    assert publisher.publish({ROLE: product}, [Blob(target, path=image)]) is False
    assert snapshot_storage(repo_on.storage) == after
    root = repo_on.trusted_root()
    assert client_sees(repo_on.storage, root, tmp_path / "client", target.path) is not None
    assert verify_repository(repo_on.storage).ok


def test_refused_release_changes_no_byte(repo_on: Repository, tmp_path: Path) -> None:
    product, target, image = signed_release(repo_on, tmp_path, "2.0.0")
    product.sign(CryptoSigner.generate_ed25519(), append=False)
    before = snapshot_storage(repo_on.storage)
    with pytest.raises(VerificationError, match=ROLE):
        repo_on.publisher(ask).publish({ROLE: product}, [Blob(target, path=image)])
    assert snapshot_storage(repo_on.storage) == before


STEPS = ["blobs", "roles", "snapshot", "timestamp"]


@pytest.mark.parametrize("crash_at", STEPS)
def test_crash_before_each_step_leaves_clients_on_the_previous_repository(
    repo_on: Repository, tmp_path: Path, crash_at: str
) -> None:
    root = repo_on.trusted_root()
    before = load_state(repo_on.storage)
    product, target, image = signed_release(repo_on, tmp_path, "2.0.0")

    def crash(step: str) -> None:
        if step == crash_at:
            raise KeyboardInterrupt(f"power cut before {step}")

    publisher = repo_on.publisher(ask)
    publisher._step_hook = crash
    with pytest.raises(KeyboardInterrupt):
        publisher.publish({ROLE: product}, [Blob(target, path=image)])
    assert load_state(repo_on.storage).timestamp.signed.version == before.timestamp.signed.version
    assert client_sees(repo_on.storage, root, tmp_path / "c1", OLD_PATH) is not None
    assert client_sees(repo_on.storage, root, tmp_path / "c2", target.path) is None
    assert verify_repository(repo_on.storage).ok
    # The lock was released and re-running the same publish completes it.
    publisher._step_hook = None
    assert publisher.publish({ROLE: product}, [Blob(target, path=image)])
    assert client_sees(repo_on.storage, root, tmp_path / "c3", target.path) is not None
    assert verify_repository(repo_on.storage).ok


def _rotated_root(repo: Repository) -> tuple[Metadata[Root], CryptoSigner]:
    current = repo.state().root
    new_key = CryptoSigner.generate_ed25519()
    root = Metadata[Root].from_bytes(current.to_bytes())
    root.signed.version += 1
    root.signed.revoke_key(repo.key("root").keyid, Root.type)
    root.signed.add_key(new_key.public_key, Root.type)
    root.signatures.clear()
    root.sign(load_signer(repo.key("root"), ask))
    root.sign(new_key, append=True)
    return root, new_key


@pytest.mark.parametrize("crash_at", ["root", "blobs", "roles", "snapshot", "timestamp"])
def test_crash_during_root_rotation_with_a_release_keeps_clients_working(
    repo_on: Repository, tmp_path: Path, crash_at: str
) -> None:
    trusted = repo_on.trusted_root()
    root, _key = _rotated_root(repo_on)
    product, target, image = signed_release(repo_on, tmp_path, "2.0.0")

    def crash(step: str) -> None:
        if step == crash_at:
            raise KeyboardInterrupt(step)

    publisher = repo_on.publisher(ask)
    publisher._step_hook = crash
    with pytest.raises(KeyboardInterrupt):
        publisher.publish({ROLE: product}, [Blob(target, path=image)], None, root)
    assert client_sees(repo_on.storage, trusted, tmp_path / "c1", OLD_PATH) is not None
    publisher._step_hook = None
    assert publisher.publish({ROLE: product}, [Blob(target, path=image)], None, root)
    assert repo_on.state().root.signed.version == 2
    assert client_sees(repo_on.storage, trusted, tmp_path / "c2", target.path) is not None


def test_version_replay_is_refused(repo_on: Repository) -> None:
    older = Metadata.from_bytes(repo_on.storage.get(f"metadata/1.{ROLE}.json"))
    with pytest.raises(ConflictError, match="older"):
        repo_on.publisher(ask).publish({ROLE: older}, [])  # type: ignore[dict-item]


def test_online_roles_are_refreshed_on_both_backends(repo_on: Repository) -> None:
    publisher = repo_on.publisher(ask)
    assert publisher.refresh_online() == []
    before = snapshot_storage(repo_on.storage)
    assert publisher.refresh_online(margin=timedelta(days=30)) == [
        "rollouts",
        "snapshot",
        "timestamp",
    ]
    assert snapshot_storage(repo_on.storage) != before
    assert verify_repository(repo_on.storage).ok
