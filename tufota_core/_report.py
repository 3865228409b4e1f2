"""Device status reports: schema, canonical bytes, signing and verification.

A report is a JSON object signed by the device's identity key. The signed
bytes are the canonical form (sorted keys, no spaces, ASCII) of the report
object, so the server can re-serialise what it parsed and check the signature.
Only strings, integers and null appear in a report, which keeps the canonical
form unambiguous.

Invariants: ``verify_report`` either returns a validated ``Report`` whose
signature was made by the given key, or raises; ``seq`` starts at 1 and the
server accepts a report only with a sequence number above the last accepted.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from securesystemslib.exceptions import (
    UnverifiedSignatureError,
)
from securesystemslib.exceptions import (
    VerificationError as _SslibVerifyError,
)
from securesystemslib.signer import Key, Signature, Signer

from tufota_core._errors import InputError, VerificationError
from tufota_core._names import check_device_id, check_hardware_id
from tufota_core._semver import Version

# What a device can say about itself. "idle" doubles as the heartbeat.
DEVICE_STATES = (
    "idle",
    "downloading",
    "downloaded",
    "installing",
    "rebooting",
    "verifying",
    "succeeded",
    "failed",
    "rolled_back",
)
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_MESSAGE = 1024
MAX_REPORT_MESSAGE = MAX_MESSAGE
MAX_REPORT_BYTES = 16 * 1024
MAX_REPORT_SEQ = 2**62  # also the cap on byte counts: integers SQLite stores


def _check_storable(name: str, value: Any) -> None:
    """Text every tracker database stores as sent: no NUL, no lone surrogate (not UTF-8)."""
    if not isinstance(value, str):
        return
    if "\x00" in value:
        raise InputError(f"report field {name!r} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"report field {name!r} is not valid Unicode (a lone surrogate)") from e


@dataclass(frozen=True)
class Report:
    """One status report from a device."""

    device_id: str
    hardware_id: str
    seq: int
    state: str
    installed_version: str | None = None
    target_version: str | None = None
    rollout_id: str | None = None
    error_code: str | None = None
    message: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    time: str = ""
    # Set on "downloaded": bytes received for this image (delta or full) and,
    # when a delta was applied, the installed version it started from.
    bytes_fetched: int = 0
    delta_from: str | None = None

    def __post_init__(self) -> None:
        for name in ("rollout_id", "message", "time"):
            _check_storable(name, getattr(self, name))
        check_device_id(self.device_id)
        check_hardware_id(self.hardware_id)
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 1:
            raise InputError("report seq must be an integer >= 1")
        # Far below SQLite's 2**63 - 1, so an accepted seq always leaves room for the next.
        if self.seq > MAX_REPORT_SEQ:
            raise InputError(f"report seq must be at most {MAX_REPORT_SEQ}")
        if self.state not in DEVICE_STATES:
            raise InputError(
                f"report state {self.state!r} is not one of {', '.join(DEVICE_STATES)}"
            )
        for version in (self.installed_version, self.target_version, self.delta_from):
            if version is not None:
                Version.parse(version)
        if self.error_code is not None and not _CODE.match(self.error_code):
            raise InputError(f"error code {self.error_code!r} is invalid")
        if len(self.message) > MAX_MESSAGE:
            raise InputError(f"report message is longer than {MAX_MESSAGE} characters")
        for number in (self.bytes_done, self.bytes_total, self.bytes_fetched):
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise InputError("report byte counts must be integers >= 0")
            if number > MAX_REPORT_SEQ:
                raise InputError(f"report byte counts must be at most {MAX_REPORT_SEQ}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Report:
        """Build a report from parsed JSON.

        Raises:
            InputError: unknown or missing fields, or invalid values.
        """
        if not isinstance(data, dict):
            raise InputError("report must be a JSON object")
        fields = set(cls.__dataclass_fields__)
        unknown = set(data) - fields
        if unknown:
            raise InputError(f"report has unknown fields: {', '.join(sorted(unknown))}")
        for name, value in data.items():
            if value is not None and not isinstance(value, str | int):
                raise InputError(f"report field {name!r} must be a string, integer or null")
        try:
            return cls(**data)
        except TypeError as e:
            raise InputError(f"report is incomplete: {e}") from e


def canonical_bytes(obj: dict[str, Any]) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_report(report: Report, signer: Signer) -> dict[str, Any]:
    """Return the signed envelope ``{"report": {...}, "signature": {...}}``."""
    signature = signer.sign(canonical_bytes(report.to_json()))
    return {"report": report.to_json(), "signature": signature.to_dict()}


def parse_envelope(envelope: Any) -> tuple[Report, Signature]:
    """Split an envelope into its report and signature without checking the signature.

    Raises:
        InputError: the envelope or the report is malformed.
    """
    if not isinstance(envelope, dict) or set(envelope) != {"report", "signature"}:
        raise InputError("a signed report is an object with exactly 'report' and 'signature'")
    report = Report.from_json(envelope["report"])
    try:
        signature = Signature.from_dict(dict(envelope["signature"]))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"report signature is malformed: {e}") from e
    return report, signature


def verify_report(envelope: Any, key: Key) -> Report:
    """Check an envelope's signature with the device's registered key.

    Raises:
        InputError: the envelope is malformed.
        VerificationError: the signature is not by ``key`` or does not match.
    """
    report, signature = parse_envelope(envelope)
    if signature.keyid != key.keyid:
        raise VerificationError(
            f"report is signed by key {signature.keyid[:12]}, not the device key"
        )
    try:
        key.verify_signature(signature, canonical_bytes(envelope["report"]))
    except (UnverifiedSignatureError, _SslibVerifyError) as e:
        raise VerificationError("report signature does not verify") from e
    return report
