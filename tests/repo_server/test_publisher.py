"""Publishing accepts only what offline keys signed and is atomic at every step."""

from __future__ import annotations

from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Targets

from repo_server import Blob, Repository, add_release_locally, load_state
from signing import add_release, load_signer, sign_all
from tests.conftest import ask
from tufota_core import (
    ConflictError,
    FirmwareInfo,
    NotFoundError,
    RepositoryError,
    RolloutDoc,
    VerificationError,
    Wave,
    utcnow,
)


def _product(repo: Repository) -> Metadata[Targets]:
    return repo.state().roles["firmware-gw-100"]


def _signed_release(repo: Repository, tmp_path: Path, version: str, data: bytes = b"new image"):
    image = tmp_path / f"fw-{version}.img"
    image.write_bytes(data)
    product, target = add_release(
        _product(repo), image, FirmwareInfo("gw-100", version), utcnow(), repo.expiry
    )
    return product, target, image


def test_release_is_published_and_reachable_through_timestamp(released_repo: Repository) -> None:
    state = released_repo.state()
    targets = state.roles["firmware-gw-100"].signed.targets
    assert sorted(targets) == [
        "firmware/gw-100/1.0.0/gw-1.0.0.img",
        "firmware/gw-100/1.1.0/gw-1.1.0.img",
    ]
    assert state.snapshot.signed.meta["firmware-gw-100.json"].version == 2


def test_release_signed_by_a_foreign_key_is_refused(
    released_repo: Repository, tmp_path: Path
) -> None:
    product, target, image = _signed_release(released_repo, tmp_path, "2.0.0")
    product.sign(CryptoSigner.generate_ed25519())
    before = released_repo.storage.list("")
    with pytest.raises(VerificationError):
        released_repo.publisher(ask).publish(
            {"firmware-gw-100": product}, [Blob(target, path=image)]
        )
    assert released_repo.storage.list("") == before


def test_blob_that_does_not_match_its_hash_is_refused(
    released_repo: Repository, tmp_path: Path
) -> None:
    product, target, image = _signed_release(released_repo, tmp_path, "2.0.0")
    sign_all(product, [load_signer(released_repo.key("release-gw-100"), ask)])
    image.write_bytes(b"tampered after signing")
    before = released_repo.storage.list("")
    with pytest.raises(VerificationError, match="does not match"):
        released_repo.publisher(ask).publish(
            {"firmware-gw-100": product}, [Blob(target, path=image)]
        )
    assert released_repo.storage.list("") == before


def test_product_line_cannot_sign_for_another_hardware(
    released_repo: Repository, tmp_path: Path
) -> None:
    product, target, image = _signed_release(released_repo, tmp_path, "2.0.0")
    foreign = target.path.replace("gw-100", "other")
    target.path = foreign
    product.signed.targets = {foreign: target}
    sign_all(product, [load_signer(released_repo.key("release-gw-100"), ask)])
    with pytest.raises(VerificationError, match="may not sign"):
        released_repo.publisher(ask).publish(
            {"firmware-gw-100": product}, [Blob(target, path=image)]
        )


def test_reupload_is_idempotent_and_old_versions_are_refused(
    released_repo: Repository, tmp_path: Path
) -> None:
    publisher = released_repo.publisher(ask)
    current = _product(released_repo)
    assert publisher.publish({"firmware-gw-100": current}, []) is False
    older = Metadata.from_bytes(released_repo.storage.get("metadata/1.firmware-gw-100.json"))
    with pytest.raises(ConflictError, match="older"):
        publisher.publish({"firmware-gw-100": older}, [])


def test_version_not_newer_than_last_release_is_refused(
    released_repo: Repository, tmp_path: Path
) -> None:
    image = tmp_path / "x.img"
    image.write_bytes(b"x")
    with pytest.raises(ConflictError, match="not newer"):
        add_release_locally(released_repo, image, FirmwareInfo("gw-100", "1.0.5"), ask)


STEPS = ["blobs", "roles", "snapshot", "timestamp"]


@pytest.mark.parametrize("crash_at", STEPS)
def test_crash_between_steps_keeps_the_previous_repository(
    released_repo: Repository, tmp_path: Path, crash_at: str
) -> None:
    before = load_state(released_repo.storage)
    product, target, image = _signed_release(released_repo, tmp_path, "2.0.0")
    sign_all(product, [load_signer(released_repo.key("release-gw-100"), ask)])

    def crash(step: str) -> None:
        if step == crash_at:
            raise KeyboardInterrupt(f"power cut before {step}")

    publisher = released_repo.publisher(ask)
    publisher._step_hook = crash
    with pytest.raises(KeyboardInterrupt):
        publisher.publish({"firmware-gw-100": product}, [Blob(target, path=image)])
    after = load_state(released_repo.storage)
    assert after.timestamp.signed.version == before.timestamp.signed.version
    assert (
        after.roles["firmware-gw-100"].signed.targets.keys()
        == before.roles["firmware-gw-100"].signed.targets.keys()
    )
    # Running the same publish again completes it.
    publisher._step_hook = None
    assert publisher.publish({"firmware-gw-100": product}, [Blob(target, path=image)])
    assert target.path in load_state(released_repo.storage).roles["firmware-gw-100"].signed.targets


def test_rollout_document_is_signed_by_the_online_rollouts_role(released_repo: Repository) -> None:
    doc = RolloutDoc(
        "r1",
        "gw-100",
        "1.1.0",
        "firmware/gw-100/1.1.0/gw-1.1.0.img",
        (Wave("all", 100.0),),
        0,
        "active",
    )
    released_repo.publisher(ask).publish_rollout(doc)
    state = released_repo.state()
    rollouts = state.roles["rollouts"]
    state.targets.verify_delegate("rollouts", rollouts)
    assert "rollouts/gw-100.json" in rollouts.signed.targets


def test_online_roles_are_resigned_before_expiry(released_repo: Repository) -> None:
    from datetime import timedelta

    publisher = released_repo.publisher(ask)
    assert publisher.refresh_online() == []
    renewed = publisher.refresh_online(margin=timedelta(days=30))
    assert renewed == ["rollouts", "snapshot", "timestamp"]


def test_uninitialised_storage_is_a_repository_error(tmp_path: Path) -> None:
    from repo_server import LocalStorage

    with pytest.raises(RepositoryError, match="not been initialised"):
        load_state(LocalStorage(tmp_path / "empty", tmp_path / "lock"))


def test_opening_a_missing_repository_names_it(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not a tufota repository"):
        Repository.open(tmp_path / "nope")


def test_root_rotation_needs_old_and_new_thresholds(released_repo: Repository) -> None:
    from tuf.api.metadata import Root

    from signing import load_signer

    publisher = released_repo.publisher(ask)
    current = released_repo.state().root
    new_key = CryptoSigner.generate_ed25519()
    old_signer = load_signer(released_repo.key("root"), ask)

    def next_root() -> Metadata[Root]:
        root = Metadata.from_bytes(current.to_bytes())
        root.signed.version += 1
        root.signed.revoke_key(released_repo.key("root").keyid, Root.type)
        root.signed.add_key(new_key.public_key, Root.type)
        root.signatures.clear()
        return root

    only_new = next_root()
    only_new.sign(new_key)
    with pytest.raises(VerificationError, match="current root"):
        publisher.publish_root(only_new)
    only_old = next_root()
    only_old.sign(old_signer)
    with pytest.raises(VerificationError, match="own threshold"):
        publisher.publish_root(only_old)
    both = next_root()
    both.sign(old_signer)
    both.sign(new_key, append=True)
    assert publisher.publish_root(both)
    assert released_repo.state().root.signed.version == 2
    assert publisher.publish_root(both) is False
