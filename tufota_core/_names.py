"""Names on the wire: hardware ids, device ids, target paths and role names.

Invariants: every name accepted here is safe as a single path segment (no
``/``, no ``..``, no leading dot), so a target path built from accepted names
can never escape its directory on a server, a bucket or a device.
"""

from __future__ import annotations

import re

from tufota_core._errors import InputError
from tufota_core._semver import Version

_HARDWARE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TAG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

FIRMWARE_PREFIX = "firmware"
ROLLOUTS_ROLE = "rollouts"
ROLLOUTS_PREFIX = "rollouts"


def check_hardware_id(value: str) -> str:
    """Return ``value`` when it is a valid hardware id, else raise InputError."""
    if not _HARDWARE_ID.match(value):
        raise InputError(
            f"hardware id {value!r} is invalid: use 1-63 lowercase letters, digits, '-' or '_'"
        )
    return value


def check_device_id(value: str) -> str:
    """Return ``value`` when it is a valid device id, else raise InputError."""
    if not _DEVICE_ID.match(value) or ".." in value:
        raise InputError(
            f"device id {value!r} is invalid: use 1-128 letters, digits, '.', '-' or '_'"
        )
    return value


def check_tag(value: str) -> str:
    """Return ``value`` when it is a valid device tag, else raise InputError."""
    if not _TAG.match(value):
        raise InputError(f"tag {value!r} is invalid: use lowercase letters, digits, '-' or '_'")
    return value


def check_file_name(value: str) -> str:
    """Return ``value`` when it is a safe firmware file name, else raise InputError."""
    if not _FILE_NAME.match(value) or ".." in value:
        raise InputError(
            f"file name {value!r} is invalid: use letters, digits, '.', '_', '+' or '-'"
        )
    return value


def product_role(hardware_id: str) -> str:
    """Name of the delegated targets role that signs firmware for ``hardware_id``."""
    return f"{FIRMWARE_PREFIX}-{check_hardware_id(hardware_id)}"


def product_paths(hardware_id: str) -> list[str]:
    """Path patterns delegated to a product line's role.

    TUF's ``*`` does not cross ``/``, so the pattern names both the version
    and the file segment: ``firmware/<hw>/*/*``.
    """
    return [f"{FIRMWARE_PREFIX}/{check_hardware_id(hardware_id)}/*/*"]


def firmware_target_path(hardware_id: str, version: str, file_name: str) -> str:
    """``firmware/<hardware_id>/<version>/<file>``, each part validated."""
    Version.parse(version)
    if "/" in version or version.startswith("."):
        raise InputError(f"version {version!r} cannot be used in a path")
    return (
        f"{FIRMWARE_PREFIX}/{check_hardware_id(hardware_id)}/{version}/{check_file_name(file_name)}"
    )


def rollout_target_path(hardware_id: str) -> str:
    """``rollouts/<hardware_id>.json``: the signed rollout document of a product line."""
    return f"{ROLLOUTS_PREFIX}/{check_hardware_id(hardware_id)}.json"
