"""Publishing an uploaded release bundle (``POST /api/v1/releases``).

Invariants:

* The bundle is parsed by ``signing.read_bundle`` (safe against hostile
  archives, blobs checked against the lengths and hashes the bundle's own
  metadata claims) and then verified by ``Publisher.publish`` against the
  *published* trust chain: root, targets, delegations, thresholds, paths,
  version increase, release immutability. Nothing is written before every
  check passed, so a refused bundle leaves storage byte for byte unchanged.
* A new root, new targets and new delegated roles in one bundle publish as
  one unit: one snapshot, one timestamp.
* The online ``rollouts`` role is the server's own: a bundle may not carry it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repo_server._config import ServerLimits
from repo_server._publisher import Blob, Publisher
from signing import read_bundle
from tufota_core import ROLLOUTS_ROLE, InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadResult:
    """What an upload published (or would have, when ``published`` is False)."""

    published: bool
    root_version: int | None = None
    targets_version: int | None = None
    roles: dict[str, int] = field(default_factory=dict)
    targets: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "root_version": self.root_version,
            "targets_version": self.targets_version,
            "roles": dict(sorted(self.roles.items())),
            "targets": list(self.targets),
        }


def publish_bundle(
    publisher: Publisher, bundle_path: Path, limits: ServerLimits | None = None
) -> UploadResult:
    """Verify the bundle at ``bundle_path`` and publish it.

    Returns:
        The result; ``published`` is False when the bundle was already published.

    Raises:
        InputError: a malformed or hostile bundle, one carrying the ``rollouts`` role,
            or firmware whose ``custom`` field does not describe it.
        VerificationError: a signature, threshold, path, length, hash or expiry check failed.
        ConflictError: a version replay, or a published release would change.
    """
    limits = limits or ServerLimits()
    with read_bundle(bundle_path, limits.bundle) as bundle:
        if ROLLOUTS_ROLE in bundle.roles:
            raise InputError(
                f"the {ROLLOUTS_ROLE} role is signed online by the server; "
                "a bundle may not carry it"
            )
        blobs = [Blob(target, path=path) for target, path in bundle.blobs]
        published = publisher.publish(bundle.roles, blobs, bundle.targets, bundle.root)
        return UploadResult(
            published=published,
            root_version=bundle.root.signed.version if bundle.root else None,
            targets_version=bundle.targets.signed.version if bundle.targets else None,
            roles={name: md.signed.version for name, md in bundle.roles.items()},
            targets=tuple(sorted(t.path for t, _ in bundle.blobs)),
        )
