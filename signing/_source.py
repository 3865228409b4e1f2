"""Current repository metadata for an offline machine, verified against a trusted root.

The offline signer must know the product line's current delegation and
targets to sign the next version. It gets them from the server's
``/metadata/`` URL or from a directory (a copy of ``public/metadata`` carried
on removable media), and trusts them only after ``tuf.ngclient`` verified the
whole chain from the release engineer's trusted ``root.json``: root rotations,
timestamp, snapshot, targets and the product line's delegated role (TUF
specification section 5).

Invariant: what ``fetch_current`` returns was read back from ngclient's
metadata cache, which holds only metadata ngclient verified.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib import parse

from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata, Root, Targets
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from tufota_core import (
    InputError,
    NotFoundError,
    TransportError,
    VerificationError,
    product_role,
)

_DIR_SCHEME = "tufota-dir:"
_CHAIN_LIMIT = 20


def _reason(error: BaseException) -> str:
    """The innermost cause of a download error, in a few words ("Connection refused")."""
    found = str(error)
    current: BaseException | None = error
    for _ in range(_CHAIN_LIMIT):
        if current is None:
            break
        if isinstance(current, OSError) and current.strerror:
            found = current.strerror
        elif str(current):
            found = str(current)
        reason = getattr(current, "reason", None)
        current = (
            reason
            if isinstance(reason, BaseException)
            else (current.__cause__ or current.__context__)
        )
    return " ".join(found.split()) or type(error).__name__


@contextlib.contextmanager
def _no_retry_chatter() -> Iterator[None]:
    """urllib3 logs each retry at WARNING; the one-line error says it all (``-v`` keeps them)."""
    log = logging.getLogger("urllib3")
    level = log.level
    if not log.isEnabledFor(logging.DEBUG):
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def metadata_directory(directory: Path) -> Path:
    """``directory``, or its ``metadata/`` when given a copy of the whole ``public/`` tree."""
    if not (directory / "timestamp.json").is_file() and (directory / "metadata").is_dir():
        return directory / "metadata"
    return directory


@dataclass
class CurrentMetadata:
    """Verified current metadata: newest root, top-level targets, a product line's role."""

    root: Metadata[Root]
    targets: Metadata[Targets]
    role: Metadata[Targets] | None


class _DirectoryFetcher(FetcherInterface):
    """Serves ``<dir>/<name>`` for ngclient; names are ngclient's own (role files)."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory.resolve()

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url[len(_DIR_SCHEME) :].rsplit("/", 1)[-1]
        path = self._dir / parse.unquote(name)
        if path.resolve().parent != self._dir or not path.is_file():
            raise tuf_exceptions.DownloadHTTPError(f"{name} not found", 404)
        with path.open("rb") as f:
            yield from iter(lambda: f.read(1024 * 1024), b"")


def fetch_current(source: str, trusted_root: bytes, hardware_id: str | None) -> CurrentMetadata:
    """Verified current metadata from a server URL or a metadata directory.

    Args:
        source: ``https://server`` (``/metadata/`` is appended unless present)
            or a local directory holding the repository's metadata files (or
            a copy of ``public/``, whose ``metadata/`` is used).
        trusted_root: Bytes of the root the caller trusts.
        hardware_id: Also load this product line's role (None: only targets).

    Raises:
        NotFoundError: the directory does not exist.
        TransportError: the server cannot be reached.
        VerificationError: the metadata does not verify against the trusted root.
    """
    fetcher: FetcherInterface | None = None
    if source.startswith(("http://", "https://")):
        base = (
            source if source.rstrip("/").endswith("/metadata") else source.rstrip("/") + "/metadata"
        )
        base = base.rstrip("/") + "/"
    else:
        directory = Path(source)
        if not directory.is_dir():
            raise NotFoundError(f"metadata directory {directory} does not exist")
        fetcher = _DirectoryFetcher(metadata_directory(directory))
        base = f"{_DIR_SCHEME}/"
    with tempfile.TemporaryDirectory(prefix="tufota-metadata-") as work, _no_retry_chatter():
        try:
            updater = Updater(
                metadata_dir=work,
                metadata_base_url=base,
                target_base_url=base,
                fetcher=fetcher,
                config=UpdaterConfig(prefix_targets_with_hash=True),
                bootstrap=trusted_root,
            )
            updater.refresh()
            role_name = None
            if hardware_id is not None:
                role_name = product_role(hardware_id)
                # The delegation walk loads (and verifies) the product line's role.
                updater.get_targetinfo(f"firmware/{hardware_id}/0.0.0/probe")
        except tuf_exceptions.DownloadError as e:
            raise TransportError(f"cannot fetch metadata from {source}: {_reason(e)}") from e
        except (tuf_exceptions.RepositoryError, ValueError) as e:
            raise VerificationError(f"metadata from {source} does not verify: {e}") from e
        except OSError as e:
            raise InputError(f"cannot read metadata from {source}: {e}") from e
        cache = Path(work)
        root = Metadata[Root].from_bytes((cache / "root.json").read_bytes())
        targets = Metadata[Targets].from_bytes((cache / "targets.json").read_bytes())
        role = None
        if role_name is not None:
            role_file = cache / f"{parse.quote(role_name, '')}.json"
            if role_file.is_file():
                role = Metadata[Targets].from_bytes(role_file.read_bytes())
        return CurrentMetadata(root, targets, role)
