"""Errors staging adds to the tufota_core hierarchy.

Only where a caller branches on them::

    ConflictError (tufota_core)
     └── ReplayError      a report's sequence number is not above the last accepted one
    RepositoryError (tufota_core)
     └── StoreError       the tracker database is unavailable, locked too long or corrupt

Everything else staging raises is a plain ``InputError``, ``NotFoundError`` or
``ConflictError`` from ``tufota_core``.
"""

from __future__ import annotations

from tufota_core import ConflictError, RepositoryError


class ReplayError(ConflictError):
    """A report's ``seq`` is not above the device's last accepted one; nothing changed.

    The server answers it like any conflict, but may branch on it to tell a
    device to resynchronise its counter.
    """

    code = "replayed_report"


class StoreError(RepositoryError):
    """The tracker store failed: database locked past the timeout, corrupt or too new."""

    code = "store_error"
