"""The agent's report codes and the server's gate agree on what counts as an install failure."""

from __future__ import annotations

from device_agent import _errors
from staging._model import NOT_COUNTED_CODES, POLICY_CODES, SECURITY_CODES, TRANSPORT_CODES

# Codes that mean the device itself could not install: these, and only these
# among the agent's failure codes, count toward a wave's failure threshold.
COUNTED = {
    _errors.INSTALL_FAILED,
    _errors.HEALTH_CHECK_FAILED,
    _errors.BOOT_ATTEMPTS_EXHAUSTED,
    # Repository faults: a release signed wrongly fails everywhere and should pause.
    _errors.ROLLOUT_DOC_INVALID,
    _errors.TARGET_NOT_FOUND,
    _errors.FIRMWARE_INFO_INVALID,
    _errors.VERSION_MISMATCH,
    _errors.BUNDLE_INVALID,
}


def test_policy_refusals_are_neither_failures_nor_attacks_and_a_full_disk_is_transient() -> None:
    assert _errors.BELOW_MINIMUM_VERSION in POLICY_CODES
    assert _errors.BELOW_MINIMUM_VERSION not in SECURITY_CODES
    assert _errors.DISK_FULL in TRANSPORT_CODES


def test_every_agent_code_is_either_counted_or_explicitly_not() -> None:
    codes = {
        value
        for name, value in vars(_errors).items()
        if name.isupper() and isinstance(value, str) and name != "OUTSIDE_DEVICE_WINDOW"
    }
    uncounted = codes - COUNTED
    # outside_device_window only ever rides on idle heartbeats.
    assert uncounted <= NOT_COUNTED_CODES, sorted(uncounted - NOT_COUNTED_CODES)
