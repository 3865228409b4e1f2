"""The ``custom`` field of a firmware target: what devices and operators read.

Invariant: ``FirmwareInfo.from_custom(info.to_custom()) == info``, and
``from_custom`` accepts only values that ``__post_init__`` validates, so
anything read back from signed metadata is as well formed as what was signed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tufota_core._errors import InputError
from tufota_core._names import check_hardware_id
from tufota_core._semver import Version

SEVERITIES = ("none", "low", "medium", "high", "critical")
_CVE = re.compile(r"^CVE-\d{4}-\d{4,}$")


@dataclass(frozen=True)
class FirmwareInfo:
    """Release facts signed into a firmware target's ``custom`` field."""

    hardware_id: str
    version: str
    severity: str = "none"
    cvss: float | None = None
    fixes: tuple[str, ...] = ()
    notes: str = ""
    released: str = ""  # RFC 3339 UTC time of signing
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        check_hardware_id(self.hardware_id)
        Version.parse(self.version)
        if self.severity not in SEVERITIES:
            raise InputError(f"severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")
        if self.cvss is not None and not 0.0 <= self.cvss <= 10.0:
            raise InputError(f"CVSS score {self.cvss} is outside 0.0-10.0")
        for cve in self.fixes:
            if not _CVE.match(cve):
                raise InputError(f"{cve!r} is not a CVE id such as CVE-2026-1234")
        if len(self.notes) > 4096:
            raise InputError("release notes are longer than 4096 characters")

    def to_custom(self) -> dict[str, Any]:
        """The JSON object stored as the target's ``custom`` field."""
        custom: dict[str, Any] = dict(self.extra)
        custom.update(
            {
                "hardware_id": self.hardware_id,
                "version": self.version,
                "severity": self.severity,
                # TUF's canonical JSON has no floats: the score travels as "9.8".
                "cvss": None if self.cvss is None else f"{self.cvss:.1f}",
                "fixes": list(self.fixes),
                "notes": self.notes,
                "released": self.released,
            }
        )
        return custom

    @classmethod
    def from_custom(cls, custom: dict[str, Any] | None) -> FirmwareInfo:
        """Read a target's ``custom`` field.

        Raises:
            InputError: a field is missing or malformed.
        """
        if not isinstance(custom, dict):
            raise InputError("firmware target has no custom field")
        known = {"hardware_id", "version", "severity", "cvss", "fixes", "notes", "released"}
        try:
            cvss = custom.get("cvss")
            fixes = custom.get("fixes", [])
            if not isinstance(fixes, list):
                raise TypeError("fixes")
            return cls(
                hardware_id=str(custom["hardware_id"]),
                version=str(custom["version"]),
                severity=str(custom.get("severity", "none")),
                cvss=None if cvss is None else float(cvss),
                fixes=tuple(str(f) for f in fixes),
                notes=str(custom.get("notes", "")),
                released=str(custom.get("released", "")),
                extra={k: v for k, v in custom.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"firmware custom field is malformed: {e}") from e
