"""Pure update decisions: should this device install what a verified rollout names?

No I/O here. The inputs are already TUF-verified (the rollout document and the
firmware target's ``custom`` field); these functions apply tufota's own rules
on top and either decide or raise ``VerificationError`` with a specific code.

Rules, in order (``decide``):
 1. The document must be for this device's hardware id      -> ``wrong_hardware``.
 2. The rollout must be ``active``                           -> otherwise idle.
 3. The device must be in a wave up to ``current_wave``      -> otherwise idle.
 4. The rollout's version equal to the installed one (precedence, so build
    metadata aside)                                          -> idle (already done).
 5. The rollout's version older than the installed one       -> ``downgrade_refused``.
 6. The device's own policy (``[policy]`` in agent.toml, which no signed
    document can change): a version older than ``min_version``, or, while the
    installed version is unknown, older than the newest release the device has
    seen offered or installed                                -> ``below_minimum_version``.
 7. A version that already rolled back in this rollout       -> idle (not retried
    until the server raises the document's ``retry`` generation).
 8. Outside the device's own maintenance window               -> idle, code
    ``outside_device_window`` (the document can narrow the device's window,
    never widen it: both must be open).
 9. Outside the document's maintenance window (UTC)          -> idle (waits for it);
    a window that does not parse                              -> ``rollout_doc_invalid``.
10. Otherwise                                                 -> install.

Waves are zero-based in documents; reasons name them as people count them
("wave 1/2"), as the CLI does.

Then ``check_firmware`` checks the signed target itself: its ``custom`` field
parses, names the same hardware and version as the document
(``wrong_hardware`` / ``version_mismatch``), and its length is within the cap
(``firmware_too_large``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from device_agent._errors import (
    BELOW_MINIMUM_VERSION,
    DOWNGRADE_REFUSED,
    FIRMWARE_INFO_INVALID,
    FIRMWARE_TOO_LARGE,
    OUTSIDE_DEVICE_WINDOW,
    ROLLOUT_DOC_INVALID,
    VERSION_MISMATCH,
    WRONG_HARDWARE,
    coded,
)
from tufota_core import (
    OFFERING_STATES,
    FirmwareInfo,
    InputError,
    MaintenanceWindow,
    RolloutDoc,
    VerificationError,
    Version,
    is_newer,
)

INSTALL = "install"
IDLE = "idle"


@dataclass(frozen=True)
class Decision:
    """``action`` is ``install`` or ``idle``; ``reason`` says why, for logs and heartbeats.

    ``code`` is set when the device's own policy holds an offered update back.
    """

    action: str
    reason: str
    wave: int | None = None
    code: str | None = None


@dataclass(frozen=True)
class DevicePolicy:
    """Limits from the device's configuration and state that a rollout document cannot change.

    Attributes:
        maintenance_window: The device's own window (``DAYS HH:MM-HH:MM UTC``), or None.
        min_version: Never install a release older than this (provisioning floor).
        newest_seen: The newest release this device installed or was offered by a
            verified rollout; a floor while the installed version is unknown.
    """

    maintenance_window: str | None = None
    min_version: str | None = None
    newest_seen: str | None = None


def wave_name(doc: RolloutDoc, wave: int) -> str:
    """``wave 2/3``: a zero-based wave index as people (and the CLI) count it."""
    return f"wave {wave + 1}/{len(doc.waves)}"


def decide(
    doc: RolloutDoc,
    *,
    device_id: str,
    hardware_id: str,
    tags: Iterable[str],
    installed_version: str | None,
    abandoned_version: str | None,
    policy: DevicePolicy | None = None,
    now: datetime | None = None,
) -> Decision:
    """Apply the rules in the module docstring (``now`` defaults to the current time).

    Raises:
        VerificationError: code ``wrong_hardware``, ``downgrade_refused``,
            ``below_minimum_version`` or ``rollout_doc_invalid`` (malformed
            maintenance window).
    """
    policy = policy or DevicePolicy()
    now = now or datetime.now(UTC)
    if doc.hardware_id != hardware_id:
        raise coded(
            VerificationError(
                f"rollout {doc.rollout_id} is for {doc.hardware_id}, not {hardware_id}"
            ),
            WRONG_HARDWARE,
        )
    if doc.state not in OFFERING_STATES:
        return Decision(IDLE, f"rollout {doc.rollout_id} is {doc.state}")
    wave = doc.eligible_wave(device_id, tags)
    if wave is None:
        return Decision(
            IDLE,
            f"not in an open wave of rollout {doc.rollout_id} "
            f"(open: up to {wave_name(doc, doc.current_wave)})",
        )
    if installed_version is not None and Version.parse(doc.version) == Version.parse(
        installed_version
    ):
        return Decision(IDLE, f"{doc.version} is already installed", wave)
    if not is_newer(doc.version, installed_version):
        raise coded(
            VerificationError(
                f"rollout {doc.rollout_id} offers {doc.version}, older than installed "
                f"{installed_version}; refusing to downgrade"
            ),
            DOWNGRADE_REFUSED,
        )
    _check_floor(doc, installed_version, policy)
    if abandoned_version == doc.version:
        return Decision(
            IDLE, f"{doc.version} failed on this device in rollout {doc.rollout_id}", wave
        )
    if policy.maintenance_window and not MaintenanceWindow.parse(
        policy.maintenance_window
    ).contains(now):
        return Decision(
            IDLE,
            f"waiting for the device's own maintenance window {policy.maintenance_window} "
            f"(the rollout's: {doc.maintenance_window or 'any time'})",
            wave,
            OUTSIDE_DEVICE_WINDOW,
        )
    if doc.maintenance_window:
        try:
            window = MaintenanceWindow.parse(doc.maintenance_window)
        except InputError as e:
            raise coded(VerificationError(str(e)), ROLLOUT_DOC_INVALID) from e
        if not window.contains(now):
            return Decision(
                IDLE, f"waiting for the maintenance window {doc.maintenance_window}", wave
            )
    return Decision(
        INSTALL, f"{wave_name(doc, wave)} of rollout {doc.rollout_id} offers {doc.version}", wave
    )


def _check_floor(doc: RolloutDoc, installed_version: str | None, policy: DevicePolicy) -> None:
    """Refuse a release below the device's floor (rule 6).

    Raises:
        VerificationError: code ``below_minimum_version``.
    """
    floors = [(policy.min_version, "the device's minimum version")]
    if installed_version is None:
        floors.append((policy.newest_seen, "the newest release this device has seen"))
    for floor, what in floors:
        if floor is not None and Version.parse(doc.version) < Version.parse(floor):
            raise coded(
                VerificationError(
                    f"rollout {doc.rollout_id} offers {doc.version}, older than {floor}, "
                    f"{what}; refusing it"
                ),
                BELOW_MINIMUM_VERSION,
            )


def check_firmware(
    doc: RolloutDoc, custom: dict[str, Any] | None, length: int, max_bytes: int
) -> FirmwareInfo:
    """Check the signed firmware target the document points at.

    Raises:
        VerificationError: code ``firmware_info_invalid``, ``wrong_hardware``,
            ``version_mismatch`` or ``firmware_too_large``.
    """
    try:
        info = FirmwareInfo.from_custom(custom)
    except InputError as e:
        raise coded(
            VerificationError(f"firmware {doc.target_path}: {e}"), FIRMWARE_INFO_INVALID
        ) from e
    if info.hardware_id != doc.hardware_id:
        raise coded(
            VerificationError(
                f"firmware {doc.target_path} is signed for {info.hardware_id}, "
                f"not {doc.hardware_id}"
            ),
            WRONG_HARDWARE,
        )
    if info.version != doc.version:
        raise coded(
            VerificationError(
                f"firmware {doc.target_path} is signed as {info.version}, "
                f"the rollout says {doc.version}"
            ),
            VERSION_MISMATCH,
        )
    if length > max_bytes:
        raise coded(
            VerificationError(f"firmware {doc.target_path} is {length} bytes, over {max_bytes}"),
            FIRMWARE_TOO_LARGE,
        )
    return info
