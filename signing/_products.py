"""Product-line delegations: change a product line's keys, re-sign its role.

Invariants: every function returns a new metadata version (version + 1, fresh
expiry, no signatures) and leaves its input untouched; a delegation always
keeps at least ``threshold`` keys, so a product line can never be left
unsignable by mistake; a key no delegation uses any more is dropped from
``delegations.keys``, so its signatures stop counting everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from securesystemslib.signer import Key
from tuf.api.metadata import Metadata, Targets

from signing._metadata import Expiry, _expires, find_product
from tufota_core import InputError, NotFoundError, product_role


def _copy(md: Metadata[Targets]) -> Metadata[Targets]:
    return Metadata.from_bytes(md.to_bytes())


def change_product_keys(
    targets: Metadata[Targets],
    hardware_id: str,
    now: datetime,
    expiry: Expiry,
    *,
    add: Sequence[Key] | None = None,
    remove: Sequence[str] | None = None,
    threshold: int | None = None,
) -> Metadata[Targets]:
    """New top-level targets whose delegation for ``hardware_id`` adds and removes keys.

    ``remove`` holds key ids (a unique prefix of at least 8 characters is enough).

    Raises:
        NotFoundError: no such product line, or a key to remove is not delegated to it.
        InputError: nothing changes, or fewer keys than the threshold would remain.
    """
    new = _copy(targets)
    role = find_product(new, hardware_id)
    name = product_role(hardware_id)
    current = list(role.keyids)
    removing: list[str] = []
    for prefix in remove or []:
        matches = [k for k in current if k.startswith(prefix)]
        if len(prefix) < 8 or len(matches) != 1:
            raise NotFoundError(f"key {prefix[:16]} is not a key of product line {hardware_id}")
        removing.append(matches[0])
    adding = [k for k in add or [] if k.keyid not in current]
    if not removing and not adding and threshold in (None, role.threshold):
        raise InputError(f"product line {hardware_id}: nothing to change")
    for keyid in removing:
        new.signed.revoke_key(keyid, name)
    for key in adding:
        new.signed.add_key(key, name)
    role = find_product(new, hardware_id)
    if threshold is not None:
        role.threshold = threshold
    if not 1 <= role.threshold <= len(role.keyids):
        raise InputError(
            f"product line {hardware_id} would keep {len(role.keyids)} key(s) for threshold "
            f"{role.threshold}"
        )
    new.signed.version += 1
    new.signed.expires = _expires(now, expiry.targets)
    new.signatures.clear()
    return new


def resign_role(md: Metadata[Targets], now: datetime, expiry: Expiry) -> Metadata[Targets]:
    """The next version of a delegated role with the same targets and a fresh expiry."""
    new = _copy(md)
    new.signed.version += 1
    new.signed.expires = _expires(now, expiry.product)
    new.signatures.clear()
    return new


def resign_targets(targets: Metadata[Targets], now: datetime, expiry: Expiry) -> Metadata[Targets]:
    """The next version of top-level targets, unchanged but for a fresh expiry."""
    new = _copy(targets)
    new.signed.version += 1
    new.signed.expires = _expires(now, expiry.targets)
    new.signatures.clear()
    return new
