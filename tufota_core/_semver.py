"""Semantic versions (semver.org 2.0.0): parsing and precedence.

Invariant: ``Version.parse(str(v)) == v`` and ordering follows section 11 of the
specification; build metadata never affects precedence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import total_ordering

from tufota_core._errors import InputError

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
MAX_VERSION_LENGTH = 64


@total_ordering
@dataclass(frozen=True)
class Version:
    """A parsed semantic version; compare with ``<``, ``==`` and friends."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``text`` as a semantic version.

        Raises:
            InputError: ``text`` is not a semantic version such as ``1.4.0``.
        """
        match = _SEMVER.match(text) if len(text) <= MAX_VERSION_LENGTH else None
        if match is None:
            raise InputError(f"version {text!r} is not a semantic version such as 1.4.0")
        major, minor, patch, pre, build = match.groups()
        return cls(
            int(major), int(minor), int(patch), tuple(pre.split(".")) if pre else (), build or ""
        )

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + self.build
        return text

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # A release ranks above any of its pre-releases; numeric identifiers
        # rank below alphanumeric ones and compare as numbers.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)


def is_newer(candidate: str, installed: str | None) -> bool:
    """True when ``candidate`` takes precedence over ``installed`` (None: nothing installed)."""
    if installed is None:
        return True
    return Version.parse(candidate) > Version.parse(installed)
