"""Device identity: registering device keys and moving devices between statuses.

A device is known by one public key, unique across the fleet (seed rule 3:
unique device credentials). Registration status follows::

    pending --accept--> accepted --revoke--> revoked
       └─────────────revoke─────────────────────┘

Invariants:

* A registered key parses as a securesystemslib key of an accepted type
  (ed25519, ecdsa P-256/P-384, RSA >= 2048 bits) and its key id is the
  default key id of its value, so the id the device signs with is the id the
  server checks.
* No two devices share a key.
* ``revoked`` is final: a revoked device cannot be accepted again (its key
  may have leaked); re-register the hardware under a new id and key.
* Every change is one tracker transaction (``TrackerStore``), so a refused
  request changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.signer import SSlibKey
from securesystemslib.signer._utils import compute_default_keyid

from repo_server._publisher import load_state
from repo_server._storage import Storage
from signing import find_product
from staging import DeviceRecord, TrackerStore
from tufota_core import (
    ConflictError,
    InputError,
    check_device_id,
    check_hardware_id,
    check_tag,
)

MAX_KEY_TEXT = 16 * 1024
_KEY_TYPES = {"ed25519", "ecdsa", "rsa"}


def parse_public_key(data: Mapping[str, Any] | str | bytes) -> dict[str, Any]:
    """A device public key as stored: ``SSlibKey.to_dict()`` plus ``keyid``.

    Args:
        data: a ``device.pub`` JSON object (``keyid``, ``keytype``, ``scheme``,
            ``keyval``), its text, or a PEM ``PUBLIC KEY`` block.

    Raises:
        InputError: not a public key, an unsupported type or size, or a key id that
            is not the key's own.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("the public key is not text (PEM or JSON)") from None
    if isinstance(data, str):
        if len(data) > MAX_KEY_TEXT:
            raise InputError(f"the public key is larger than {MAX_KEY_TEXT} bytes")
        text = data.strip()
        if text.startswith("-----BEGIN"):
            return _from_pem(text)
        try:
            data = json.loads(text)
        except ValueError:
            raise InputError("the public key is neither a PEM block nor JSON") from None
    if not isinstance(data, Mapping):
        raise InputError("the public key must be a JSON object or a PEM block")
    fields = dict(data)
    keyid = fields.pop("keyid", None)
    fields.pop("uri", None)
    try:
        key = SSlibKey.from_dict(str(keyid or ""), fields)
        expected = compute_default_keyid(key.keytype, key.scheme, key.keyval)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(f"the public key is malformed: {e}") from e
    if keyid is not None and keyid != expected:
        raise InputError("the public key's keyid is not the key id of its value")
    if key.keytype not in _KEY_TYPES:
        raise InputError(f"key type {key.keytype!r} is not one of {', '.join(sorted(_KEY_TYPES))}")
    key = SSlibKey(expected, key.keytype, key.scheme, key.keyval)
    try:
        _check_strength(key)
    except (ValueError, TypeError) as e:
        raise InputError(f"the public key does not load: {e}") from e
    return {"keyid": expected, **key.to_dict()}


def _from_pem(text: str) -> dict[str, Any]:
    try:
        public = load_pem_public_key(text.encode())
        key = SSlibKey.from_crypto(public)
    except (ValueError, TypeError) as e:
        raise InputError(f"the PEM public key does not load: {e}") from e
    _check_strength(key)
    return {"keyid": key.keyid, **key.to_dict()}


def _check_strength(key: SSlibKey) -> None:
    public = key._crypto_key()  # securesystemslib parses the key value
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < 2048:
            raise InputError(f"an RSA device key needs at least 2048 bits, not {public.key_size}")
    elif isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name not in ("secp256r1", "secp384r1"):
            raise InputError(f"curve {public.curve.name} is not P-256 or P-384")
    elif not isinstance(public, ed25519.Ed25519PublicKey):
        raise InputError("the key is not ed25519, ecdsa or RSA")


def register(
    store: TrackerStore,
    storage: Storage,
    device_id: str,
    hardware_id: str,
    public_key: Mapping[str, Any] | str | bytes,
    tags: Iterable[str] = (),
    status: str = "pending",
) -> DeviceRecord:
    """Register a device whose key was generated on the device.

    Raises:
        InputError: a bad id, tag or key.
        NotFoundError: the hardware id has no product line.
        ConflictError: the device id exists, or another device has this key.
        RepositoryError: the published repository cannot be read.
    """
    check_device_id(device_id)
    check_hardware_id(hardware_id)
    tags = [check_tag(t) for t in tags]
    key = parse_public_key(public_key)
    find_product(load_state(storage).targets, hardware_id)
    for other in store.list_devices():
        if other.public_key.get("keyid") == key["keyid"]:
            raise ConflictError(
                f"this public key is already registered to device {other.device_id}"
            )
    return store.register_device(device_id, hardware_id, public_key=key, tags=tags, status=status)


def set_status(store: TrackerStore, device_id: str, status: str, reason: str = "") -> bool:
    """Accept or revoke a device.

    Returns:
        False when the device already had ``status`` (nothing recorded).

    Raises:
        InputError: ``status`` is not ``accepted`` or ``revoked``.
        NotFoundError: no such device.
        ConflictError: accepting a revoked device.
    """
    if status not in ("accepted", "revoked"):
        raise InputError(f"status {status!r} is not 'accepted' or 'revoked'")
    device = store.get_device(check_device_id(device_id))
    if device.status == status:
        return False
    if device.status == "revoked":
        raise ConflictError(
            f"device {device_id} is revoked for good; register the device again under a new id "
            "and a new key"
        )
    store.set_device_status(device_id, status, reason=reason or f"{status} by operator")
    return True


def device_json(device: DeviceRecord) -> dict[str, Any]:
    """A device for operators: the key's id and type, not the whole key."""
    data = device.to_json()
    key = data.pop("public_key", {}) or {}
    data["key"] = {"keyid": key.get("keyid"), "keytype": key.get("keytype")}
    return data
