"""tufota's shared core: the wire contract every package agrees on.

Target path scheme, firmware and delta ``custom`` fields, the rollout document and the
cohort function, the device report schema, semantic version precedence, and the
error hierarchy. No I/O lives here; only ``tuf.api`` and ``securesystemslib``
are imported, so the device agent can carry it.
"""

from tufota_core._delta import DELTA_FORMAT, DeltaInfo, delta_target_path, is_delta_custom
from tufota_core._errors import (
    ConflictError,
    InputError,
    InstallError,
    NotFoundError,
    RepositoryError,
    TransportError,
    TufotaError,
    VerificationError,
)
from tufota_core._firmware import SEVERITIES, FirmwareInfo
from tufota_core._names import (
    ROLLOUTS_ROLE,
    check_device_id,
    check_file_name,
    check_hardware_id,
    check_tag,
    firmware_target_path,
    product_paths,
    product_role,
    rollout_target_path,
)
from tufota_core._report import (
    DEVICE_STATES,
    MAX_REPORT_BYTES,
    MAX_REPORT_MESSAGE,
    Report,
    canonical_bytes,
    parse_envelope,
    sign_report,
    verify_report,
)
from tufota_core._rollout import (
    OFFERING_STATES,
    ROLLOUT_STATES,
    RolloutDoc,
    Wave,
    cohort_bucket,
    parse_wave_spec,
    validate_waves,
    wave_index,
)
from tufota_core._semver import Version, is_newer
from tufota_core._text import safe_text
from tufota_core._time import format_time, parse_time, utcnow
from tufota_core._window import MaintenanceWindow, check_window

__all__ = [
    "DELTA_FORMAT",
    "DEVICE_STATES",
    "MAX_REPORT_BYTES",
    "MAX_REPORT_MESSAGE",
    "OFFERING_STATES",
    "ROLLOUTS_ROLE",
    "ROLLOUT_STATES",
    "SEVERITIES",
    "ConflictError",
    "DeltaInfo",
    "FirmwareInfo",
    "InputError",
    "InstallError",
    "MaintenanceWindow",
    "NotFoundError",
    "Report",
    "RepositoryError",
    "RolloutDoc",
    "TransportError",
    "TufotaError",
    "VerificationError",
    "Version",
    "Wave",
    "canonical_bytes",
    "check_device_id",
    "check_file_name",
    "check_hardware_id",
    "check_tag",
    "check_window",
    "cohort_bucket",
    "delta_target_path",
    "firmware_target_path",
    "format_time",
    "is_delta_custom",
    "is_newer",
    "parse_envelope",
    "parse_time",
    "parse_wave_spec",
    "product_paths",
    "product_role",
    "rollout_target_path",
    "safe_text",
    "sign_report",
    "utcnow",
    "validate_waves",
    "verify_report",
    "wave_index",
]
