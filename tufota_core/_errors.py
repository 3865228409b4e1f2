"""The error hierarchy shared by every tufota package.

Errors are split by whose fault they are, so an entry point can decide how to
answer (exit code, HTTP status) without knowing the module that raised::

    TufotaError
     ├── InputError            the operator or a client gave bad input
     │    └── NotFoundError    a named thing (repository, device, release) does not exist
     ├── ConflictError         the input is well formed but clashes with current state
     ├── RepositoryError       stored repository state is missing, corrupt or badly signed
     ├── VerificationError     a signature, hash, length or version check failed
     ├── TransportError        the network or a remote server failed
     └── InstallError          a device could not install or boot an image

A narrow subclass exists only where a caller branches on it. Foreign exceptions
are wrapped at package boundaries with ``raise ... from e``.
"""

from __future__ import annotations


class TufotaError(Exception):
    """Base of every error tufota raises on purpose.

    ``code`` is a stable machine-readable name used in API bodies and device
    reports; the message is for people.
    """

    code = "error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            # A narrower, stable reason than the class gives (e.g. "downgrade_refused").
            self.code = code


class InputError(TufotaError):
    """Bad operator or client input: arguments, uploads, request bodies."""

    code = "bad_input"


class NotFoundError(InputError):
    """A named object (repository, device, release, rollout) does not exist."""

    code = "not_found"


class ConflictError(TufotaError):
    """Well-formed input that clashes with the current state."""

    code = "conflict"


class RepositoryError(TufotaError):
    """Stored repository state is missing, corrupt or inconsistent."""

    code = "repository_error"


class VerificationError(TufotaError):
    """A signature, threshold, hash, length or version check failed."""

    code = "verification_failed"


class TransportError(TufotaError):
    """The network or a remote server failed."""

    code = "transport_error"


class InstallError(TufotaError):
    """A device could not install, boot or health-check an image."""

    code = "install_failed"
