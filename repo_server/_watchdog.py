"""What devices would read as rollout documents, for the controller's watchdog.

The controller compares these with its tracker on every tick
(``RolloutController`` rule "published documents agree with the tracker"): a
difference means someone signed a document with the online ``rollouts`` key
outside the controller, which only a stolen key (or a second, misconfigured
server) can do.

Invariant: a document is returned only after the checks a device makes: the
``rollouts`` role carries the threshold of signatures ``targets`` delegates
to it, and the document's bytes match the length and hashes the role signed.
Anything else is reported as a problem, never silently skipped.
"""

from __future__ import annotations

from tuf.api.exceptions import LengthOrHashMismatchError

from repo_server._publisher import _is_rollout_doc_path, load_state, target_storage_key
from repo_server._storage import Storage
from signing import verify_delegate
from tufota_core import ROLLOUTS_ROLE, RolloutDoc, TufotaError, safe_text

_PREFIX = "rollouts/"
_SUFFIX = ".json"


FORGED = "*"  # the key of out-of-namespace entries: never a hardware id


def published_rollouts(
    storage: Storage, dropped: tuple[str, ...] = ()
) -> dict[str, RolloutDoc | str]:
    """Every published ``rollouts/<hardware_id>.json``, verified as a device would.

    Args:
        storage: the repository.
        dropped: out-of-namespace entries the publisher already removed on
            re-signing (``Publisher.take_forged_targets``); reported with any
            still published.

    Returns:
        hardware id -> the document, or a one-line reason it does not verify;
        under ``FORGED``, the targets of the role outside ``rollouts/*.json``,
        which only a stolen online key can have signed (devices ignore them:
        the delegation is terminating and limited to ``rollouts/*``).

    Raises:
        RepositoryError: the repository cannot be read.
        VerificationError: the ``rollouts`` role is not signed by its threshold.
    """
    state = load_state(storage)
    role = state.roles.get(ROLLOUTS_ROLE)
    if role is None:
        return {}
    verify_delegate(state.targets, ROLLOUTS_ROLE, role)
    found: dict[str, RolloutDoc | str] = {}
    forged = set(dropped)
    for path, target in role.signed.targets.items():
        if not _is_rollout_doc_path(path):
            forged.add(path)
            continue
        hardware_id = path[len(_PREFIX) : -len(_SUFFIX)]
        try:
            data = storage.get(target_storage_key(target))
            target.verify_length_and_hashes(data)
            found[hardware_id] = RolloutDoc.from_bytes(data)
        except LengthOrHashMismatchError as e:
            found[hardware_id] = f"{path} does not match its signed hashes: {e}"
        except TufotaError as e:
            found[hardware_id] = f"{path} cannot be read: {e}"
    if forged:
        shown = ", ".join(repr(safe_text(p, 80)) for p in sorted(forged)[:5])
        more = f" and {len(forged) - 5} more" if len(forged) > 5 else ""
        found[FORGED] = f"the {ROLLOUTS_ROLE} role signed targets outside rollouts/: {shown}{more}"
    return found
