"""Patch status: which signed fixes each device still lacks, and how bad that is.

The catalog is built from the ``custom`` fields of the firmware targets the
offline product-line keys signed (``tufota_core.FirmwareInfo``): each release
lists the CVE ids it fixes and one CVSS score.

Rules:
1. A device lacks a release's fixes when its installed version is below that
   release (semantic-version precedence). A fix is a CVE id; its CVSS is the
   score of the earliest release that lists it.
2. A device with no known installed version has *unknown* exposure: nothing
   is claimed about it.
3. Exposure buckets follow the CVSS v3 qualitative scale of the highest score
   the device lacks: ``critical`` >= 9.0, ``high`` >= 7.0, ``medium`` >= 4.0,
   ``low`` otherwise (a fix without a score is ``low``), ``none`` when it
   lacks nothing.

Pure: no I/O. The repository server and the CLI build a ``ReleaseCatalog``
from the published metadata and hand it in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from tufota_core import FirmwareInfo, InputError, Version, parse_time

EXPOSURES = ("critical", "high", "medium", "low", "none", "unknown")


@dataclass(frozen=True)
class Release:
    """A signed firmware release: its target path and its custom fields."""

    target_path: str
    info: FirmwareInfo

    @property
    def version(self) -> Version:
        return Version.parse(self.info.version)

    @property
    def released_at(self) -> datetime | None:
        """When it was signed, or None when the release does not say."""
        if not self.info.released:
            return None
        try:
            return parse_time(self.info.released)
        except InputError:
            return None


@dataclass(frozen=True)
class Fix:
    """A CVE fixed by a release (rule 1)."""

    cve: str
    cvss: float | None
    fixed_in: str
    released_at: datetime | None


def exposure_of(cvss: float | None, lacking: bool) -> str:
    """The exposure bucket of rule 3."""
    if not lacking:
        return "none"
    if cvss is None:
        return "low"
    if cvss >= 9.0:
        return "critical"
    if cvss >= 7.0:
        return "high"
    if cvss >= 4.0:
        return "medium"
    return "low"


@dataclass(frozen=True)
class ReleaseCatalog:
    """Every signed release per hardware id, oldest first."""

    releases: Mapping[str, tuple[Release, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, releases: Iterable[Release]) -> ReleaseCatalog:
        by_hw: dict[str, list[Release]] = {}
        for release in releases:
            by_hw.setdefault(release.info.hardware_id, []).append(release)
        return cls({hw: tuple(sorted(r, key=lambda x: x.version)) for hw, r in by_hw.items()})

    @classmethod
    def from_targets(
        cls, targets: Iterable[tuple[str, Mapping[str, object] | None]]
    ) -> ReleaseCatalog:
        """From (target path, custom field) pairs; targets without firmware custom are skipped."""
        found = []
        for path, custom in targets:
            try:
                found.append(Release(path, FirmwareInfo.from_custom(dict(custom or {}))))
            except InputError:
                continue
        return cls.build(found)

    def find(self, hardware_id: str, version: str) -> Release | None:
        """The release of ``version`` for ``hardware_id``, if signed."""
        wanted = Version.parse(version)
        for release in self.releases.get(hardware_id, ()):
            if release.version == wanted:
                return release
        return None

    def latest(self, hardware_id: str) -> Release | None:
        found = self.releases.get(hardware_id, ())
        return found[-1] if found else None

    def fixes(self, hardware_id: str) -> list[Fix]:
        """Every fix of the hardware id, each at its first release (rule 1)."""
        seen: dict[str, Fix] = {}
        for release in self.releases.get(hardware_id, ()):
            for cve in release.info.fixes:
                if cve not in seen:
                    seen[cve] = Fix(
                        cve, release.info.cvss, release.info.version, release.released_at
                    )
        return list(seen.values())

    def missing(self, hardware_id: str, installed: str | None) -> list[Fix] | None:
        """Fixes a device on ``installed`` lacks, worst first; None when unknown (rule 2)."""
        if installed is None:
            return None
        try:
            have = Version.parse(installed)
        except InputError:
            return None
        lacking = [f for f in self.fixes(hardware_id) if Version.parse(f.fixed_in) > have]
        return sorted(lacking, key=lambda f: (-(f.cvss or 0.0), f.cve))
