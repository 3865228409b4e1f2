"""Key custody: where each kind of key lives, and finding keys where they do not belong.

Three homes (docs/decisions/0008-key-custody-layout.md):

* the signing directory (release engineers, offline): root, targets and
  product-line keys, each encrypted with its own passphrase, plus the
  ``root.json`` the engineers trust;
* the server's state (``REPO`` or the S3 state directory): only the online
  keys (snapshot/timestamp and rollouts), tokens, tracker, configuration;
* an operator's laptop: API tokens only.

Invariants: ``default_signing_dir`` is never inside the repository directory;
``private_key_files`` reads at most ``_HEAD`` bytes of each file and never
scans a directory twice (links are followed); ``offline_key_findings``
names every private key file in a server's tree that is not one of the
server's own online keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Root, Targets

from signing._keys import KeyFile, load_public_key
from tufota_core import InputError, TufotaError, check_hardware_id

SIGNING_SUFFIX = "-signing"
TRUSTED_ROOT = "root.json"
_HEAD = 128
_PEM_MARK = b"PRIVATE KEY-----"


def default_signing_dir(repo_path: Path) -> Path:
    """``REPO-signing`` beside ``REPO``: outside the tree the server treats as its own."""
    repo_path = repo_path.absolute()
    return repo_path.parent / f"{repo_path.name}{SIGNING_SUFFIX}"


def product_key_name(hardware_id: str) -> str:
    """File stem of a product line's own release key: ``release-<hw>``."""
    return f"release-{check_hardware_id(hardware_id)}"


def is_inside(path: Path, directory: Path) -> bool:
    """True when ``path`` is ``directory`` or below it (after resolving both)."""
    path, directory = path.resolve(), directory.resolve()
    return path == directory or directory in path.parents


def private_key_files(directory: Path) -> Iterator[Path]:
    """Every regular file under ``directory`` that starts like a PEM private key.

    Symbolic links are followed (each real directory once), and a file found
    through a link is reported under the link's path.
    """
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        for name in filenames:
            path = Path(dirpath) / name
            try:
                if not path.is_file():  # follows a link; skips sockets, fifos, dangling links
                    continue
                with path.open("rb") as f:
                    head = f.read(_HEAD)
            except OSError:
                continue
            if head.startswith(b"-----BEGIN") and _PEM_MARK in head:
                yield path


@dataclass(frozen=True)
class KeyFinding:
    """A private key file found in a server's tree, and whose key it is."""

    path: Path
    role: str | None  # "root", "targets", "firmware-<hw>", or None when unknown

    def message(self, signing_dir: Path) -> str:
        what = (
            f"the private key of offline role {self.role}"
            if self.role
            else "a private key that is not one of this server's online keys"
        )
        return (
            f"{self.path} is {what}; it belongs in the signing directory ({signing_dir}) "
            "or on an HSM/KMS, never in the server's state or repository directory"
        )


def _roles_by_keyid(root: Metadata[Root], targets: Metadata[Targets] | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in ("root", "targets"):
        for keyid in root.signed.roles[name].keyids:
            found.setdefault(keyid, name)
    delegations = targets.signed.delegations if targets is not None else None
    for name, role in (delegations.roles or {}).items() if delegations else []:
        for keyid in role.keyids:
            found.setdefault(keyid, name)
    return found


def online_roles_by_keyid(
    root: Metadata[Root], targets: Metadata[Targets] | None
) -> dict[str, str]:
    """Key id -> the online role it serves: timestamp, snapshot, or the rollouts delegation."""
    found: dict[str, str] = {}
    for name in ("timestamp", "snapshot"):
        for keyid in root.signed.roles[name].keyids:
            found.setdefault(keyid, name)
    delegations = targets.signed.delegations if targets is not None else None
    rollouts = (delegations.roles or {}).get("rollouts") if delegations else None
    for keyid in rollouts.keyids if rollouts is not None else []:
        found.setdefault(keyid, "rollouts")
    return found


def refuse_online_keys(
    keyids: Iterable[str],
    root: Metadata[Root],
    targets: Metadata[Targets] | None,
    offline_role: str,
) -> None:
    """Refuse to make a server's online key an offline role's key.

    An online key lives on the server (its file and passphrase are the
    server's); a root, targets or product-line key that is also an online key
    gives a server compromise the offline role.

    Raises:
        InputError: one of ``keyids`` is an online key of this repository.
    """
    online = online_roles_by_keyid(root, targets)
    for keyid in keyids:
        if keyid in online:
            raise InputError(
                f"key {keyid[:12]} is the server's online {online[keyid]} key: it cannot be "
                f"a key of {offline_role}, which must stay offline (generate a new key)"
            )


def online_key_misuse(
    online_keyids: Iterable[str], root: Metadata[Root], targets: Metadata[Targets] | None
) -> str | None:
    """Why the server must not start: one of its online keys also signs an offline role."""
    offline: dict[str, str] = {}
    for name in ("root", "targets"):
        for keyid in root.signed.roles[name].keyids:
            offline.setdefault(keyid, name)
    delegations = targets.signed.delegations if targets is not None else None
    for name, delegated in (delegations.roles or {}).items() if delegations else []:
        if name != "rollouts":
            for keyid in delegated.keyids:
                offline.setdefault(keyid, name)
    for keyid in online_keyids:
        role = offline.get(keyid)
        if role is not None:
            return (
                f"the server's online key {keyid[:12]} is also a key of the offline role "
                f"{role}: whoever takes this server can sign as {role}; rotate that role's "
                "keys to offline ones (docs/signing.md)"
            )
    return None


def _public_half(private: Path) -> KeyFile | None:
    pub = private.with_suffix(".pub")
    try:
        return load_public_key(pub) if pub.is_file() else None
    except TufotaError:
        return None


def offline_key_findings(
    directories: Iterable[Path],
    online_private: Iterable[Path],
    root: Metadata[Root] | None,
    targets: Metadata[Targets] | None,
    ignore: Iterable[Path] = (),
) -> list[KeyFinding]:
    """Private key files under ``directories`` other than the server's own online keys.

    Args:
        directories: the trees the server treats as its own.
        online_private: the online keys' private key files (allowed).
        root, targets: the published metadata, to name the role a key plays
            (None when the repository cannot be read).
        ignore: further files that may be there (the TLS private key).
    """
    allowed = {p.resolve() for p in [*online_private, *ignore]}
    roles: dict[str, Any] = _roles_by_keyid(root, targets) if root is not None else {}
    findings: list[KeyFinding] = []
    for directory in directories:
        if not directory.is_dir():
            continue
        for path in sorted(private_key_files(directory)):
            if path.resolve() in allowed:
                continue
            public = _public_half(path)
            role = roles.get(public.keyid) if public is not None else None
            findings.append(KeyFinding(path, role))
    # Keys of known offline roles first: they are the most telling line.
    findings.sort(key=lambda f: (f.role is None, str(f.path)))
    return findings
