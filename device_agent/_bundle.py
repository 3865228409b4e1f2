"""Offline update bundles: a copy of the repository's static tree, carried by hand.

A bundle is a directory (on a USB stick, say)::

    bundle.json     optional: {"schema": "tufota.bundle/1",
                               "target": "firmware/<hw>/<version>/<file>"}
    metadata/       a copy of the server's metadata/ tree: timestamp.json, the
                    versioned snapshot, targets and delegated roles it names, and
                    every N.root.json newer than the device's root (rotation)
    targets/        the firmware blob under its served name
                    (``firmware/<hw>/<version>/<sha256>.<file>``)

``tufota-agent install-bundle DIR`` reads it through a ``file://`` fetcher
into the same ngclient client and metadata cache as online updates.

Invariants:
* Nothing in the bundle is trusted: metadata verifies from the device's trusted
  root (rotation, expiry, rollback against what the device has already seen),
  the firmware against the signed length and hashes. ``bundle.json`` only
  *selects* a target; an unsigned choice cannot widen what is accepted.
* The firmware must be for this device's hardware and newer than the installed
  version (``wrong_hardware``, ``version_mismatch``, ``downgrade_refused``),
  exactly as for an online rollout; waves do not apply (a person chose to
  install it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent._decide import check_firmware
from device_agent._errors import BUNDLE_INVALID, DOWNGRADE_REFUSED, WRONG_HARDWARE, coded
from tufota_core import (
    FirmwareInfo,
    InputError,
    RolloutDoc,
    VerificationError,
    Wave,
    is_newer,
    rollout_target_path,
)

BUNDLE_SCHEMA = "tufota.bundle/1"
BUNDLE_FILE = "bundle.json"
_MAX_BUNDLE_FILE = 64 * 1024


@dataclass(frozen=True)
class Bundle:
    """A bundle directory: where its tree is, and which target it asks to install."""

    directory: Path
    target_path: str | None

    @property
    def base_url(self) -> str:
        """``file://`` URL of the directory holding ``metadata/`` and ``targets/``."""
        return self.directory.as_uri()


def read_bundle(directory: Path) -> Bundle:
    """Check the layout of a bundle directory and read ``bundle.json`` if there is one.

    Raises:
        InputError: code ``bundle_invalid``: not a directory, no
            ``metadata/timestamp.json``, or a malformed ``bundle.json``.
    """
    directory = directory.resolve()
    if not directory.is_dir():
        raise coded(InputError(f"bundle {directory} is not a directory"), BUNDLE_INVALID)
    if not (directory / "metadata" / "timestamp.json").is_file():
        raise coded(
            InputError(f"bundle {directory} has no metadata/timestamp.json"), BUNDLE_INVALID
        )
    spec = directory / BUNDLE_FILE
    if not spec.exists():
        return Bundle(directory, None)
    try:
        if spec.stat().st_size > _MAX_BUNDLE_FILE:
            raise ValueError(f"larger than {_MAX_BUNDLE_FILE} bytes")
        data: Any = json.loads(spec.read_bytes())
        if not isinstance(data, dict) or data.get("schema") != BUNDLE_SCHEMA:
            raise ValueError(f"schema is not {BUNDLE_SCHEMA}")
        target = data["target"]
        if not isinstance(target, str) or not target:
            raise ValueError("target must be a target path")
    except (OSError, ValueError, KeyError) as e:
        raise coded(InputError(f"{spec} is not a bundle description: {e}"), BUNDLE_INVALID) from e
    return Bundle(directory, target)


def default_target(doc: RolloutDoc | None, hardware_id: str) -> str:
    """The target a bundle without ``bundle.json`` installs: its rollout document's.

    Raises:
        InputError: code ``bundle_invalid`` when the bundle has no rollout document.
    """
    if doc is None:
        raise coded(
            InputError(
                f"bundle names no target: add {BUNDLE_FILE} or the signed "
                f"{rollout_target_path(hardware_id)}"
            ),
            BUNDLE_INVALID,
        )
    return doc.target_path


def check_bundle_firmware(
    target_path: str,
    custom: dict[str, Any] | None,
    length: int,
    *,
    hardware_id: str,
    installed_version: str | None,
    max_bytes: int,
) -> FirmwareInfo:
    """Apply the online rules to a bundle's verified firmware target.

    Raises:
        VerificationError: ``wrong_hardware``, ``version_mismatch``,
            ``firmware_info_invalid``, ``firmware_too_large`` or ``downgrade_refused``.
    """
    parts = target_path.split("/")
    if len(parts) != 4 or parts[0] != "firmware":
        raise coded(
            VerificationError(f"{target_path} is not a firmware target path"), BUNDLE_INVALID
        )
    if parts[1] != hardware_id:
        raise coded(
            VerificationError(f"bundle firmware {target_path} is not for {hardware_id}"),
            WRONG_HARDWARE,
        )
    try:
        doc = RolloutDoc(
            rollout_id="offline-bundle",
            hardware_id=hardware_id,
            version=parts[2],
            target_path=target_path,
            waves=(Wave("offline", 100.0),),
            current_wave=0,
            state="active",
        )
    except InputError as e:
        raise coded(VerificationError(f"bundle target: {e}"), BUNDLE_INVALID) from e
    info = check_firmware(doc, custom, length, max_bytes)
    if not is_newer(info.version, installed_version):
        raise coded(
            VerificationError(
                f"bundle firmware {info.version} is not newer than installed "
                f"{installed_version}; refusing to downgrade"
            ),
            DOWNGRADE_REFUSED,
        )
    return info
