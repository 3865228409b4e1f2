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
 6. A version that already rolled back in this rollout       -> idle (never retried).
 7. Outside the document's maintenance window (UTC)          -> idle (waits for it);
    a window that does not parse                              -> ``rollout_doc_invalid``.
 8. Otherwise                                                 -> install.

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
    DOWNGRADE_REFUSED,
    FIRMWARE_INFO_INVALID,
    FIRMWARE_TOO_LARGE,
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
    """``action`` is ``install`` or ``idle``; ``reason`` says why, for logs and heartbeats."""

    action: str
    reason: str
    wave: int | None = None


def decide(
    doc: RolloutDoc,
    *,
    device_id: str,
    hardware_id: str,
    tags: Iterable[str],
    installed_version: str | None,
    abandoned_version: str | None,
    now: datetime | None = None,
) -> Decision:
    """Apply the rules in the module docstring (``now`` defaults to the current time).

    Raises:
        VerificationError: code ``wrong_hardware``, ``downgrade_refused`` or
            ``rollout_doc_invalid`` (malformed maintenance window).
    """
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
        return Decision(IDLE, f"not in a wave of rollout {doc.rollout_id} up to {doc.current_wave}")
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
    if abandoned_version == doc.version:
        return Decision(
            IDLE, f"{doc.version} failed on this device in rollout {doc.rollout_id}", wave
        )
    if doc.maintenance_window:
        try:
            window = MaintenanceWindow.parse(doc.maintenance_window)
        except InputError as e:
            raise coded(VerificationError(str(e)), ROLLOUT_DOC_INVALID) from e
        if not window.contains(now or datetime.now(UTC)):
            return Decision(
                IDLE, f"waiting for the maintenance window {doc.maintenance_window}", wave
            )
    return Decision(INSTALL, f"wave {wave} of rollout {doc.rollout_id} offers {doc.version}", wave)


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
