"""Error codes a device puts in its reports, and how agent failures carry them.

The agent raises tufota_core's error classes (split by whose fault it is) and
attaches a specific, stable ``code`` to each instance with :func:`coded`. The
orchestrator copies ``error.code`` into the report it sends, so the tracker can
count failures by cause without parsing messages.

Invariant: every code below matches tufota_core's report ``error_code`` syntax
(``[a-z][a-z0-9_]*``), so a report built from an agent error always validates.
"""

from __future__ import annotations

from typing import TypeVar

from tufota_core import TufotaError

METADATA_VERIFICATION_FAILED = "metadata_verification_failed"
ROLLOUT_DOC_INVALID = "rollout_doc_invalid"
TARGET_NOT_FOUND = "target_not_found"
FIRMWARE_INFO_INVALID = "firmware_info_invalid"
WRONG_HARDWARE = "wrong_hardware"
VERSION_MISMATCH = "version_mismatch"
DOWNGRADE_REFUSED = "downgrade_refused"
FIRMWARE_TOO_LARGE = "firmware_too_large"
TARGET_HASH_MISMATCH = "target_hash_mismatch"
TARGET_LENGTH_MISMATCH = "target_length_mismatch"
DOWNLOAD_FAILED = "download_failed"
SERVER_UNREACHABLE = "server_unreachable"
SLOW_RETRIEVAL = "slow_retrieval"
DATA_BUDGET_EXHAUSTED = "data_budget_exhausted"
METADATA_EXPIRED = "metadata_expired"
METADATA_ROLLBACK = "metadata_rollback"
METADATA_VERSION_MISMATCH = "metadata_version_mismatch"
METADATA_TOO_LARGE = "metadata_too_large"
BAD_SIGNATURE = "bad_signature"
BUNDLE_INVALID = "bundle_invalid"
INSTALL_FAILED = "install_failed"
HEALTH_CHECK_FAILED = "health_check_failed"
BOOT_ATTEMPTS_EXHAUSTED = "boot_attempts_exhausted"
BELOW_MINIMUM_VERSION = "below_minimum_version"
OUTSIDE_DEVICE_WINDOW = "outside_device_window"
DISK_FULL = "disk_full"

E = TypeVar("E", bound=TufotaError)


def coded(error: E, code: str) -> E:
    """Return ``error`` with its report ``code`` set to ``code``."""
    error.code = code
    return error


# Transport failures of a firmware download that are reported (once per
# rollout) although the download resumes later: they point at an attack or at
# a device setting, not at a passing network outage.
REPORTED_TRANSPORT_CODES = frozenset({SLOW_RETRIEVAL, DATA_BUDGET_EXHAUSTED, DOWNLOAD_FAILED})
