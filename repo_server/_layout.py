"""The embedded-default repository directory and its configuration.

Layout of ``REPO/``::

    tufota.json     configuration (key file names, thresholds, server URL)
    keys/           NAME.key (encrypted private key) and NAME.pub; never served
    public/         the served tree: metadata/ and targets/ (the local Storage)
    tracker.db      the rollout tracker (SQLite)
    tokens.json     operators' API tokens (SHA-256 hashes only)
    .publish.lock   serialises publishers across processes

Invariants: only ``public/`` is ever served; ``create`` builds the whole
directory beside its destination and renames it into place, so a failed
``tufota init`` leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from repo_server._publisher import OnlineSigners, Publisher, RepoState, load_state
from repo_server._storage import LocalStorage, Storage
from signing import (
    Expiry,
    KeyFile,
    generate_key,
    load_public_key,
    load_signer,
    new_root,
    new_targets,
    sign_all,
)
from tufota_core import InputError, NotFoundError, RepositoryError, utcnow

CONFIG_FILE = "tufota.json"
FORMAT = 1
Passphrase = Callable[[], str]


@dataclass(frozen=True)
class RepoConfig:
    """``tufota.json``: which key files play which role."""

    server_url: str = "http://127.0.0.1:8080"
    root_keys: list[str] = field(default_factory=lambda: ["root"])
    root_threshold: int = 1
    targets_keys: list[str] = field(default_factory=lambda: ["targets"])
    online_key: str = "online"
    rollouts_key: str = "rollouts"
    release_key: str = "release"
    format: int = FORMAT

    @classmethod
    def from_json(cls, data: Any) -> RepoConfig:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RepositoryError(f"{CONFIG_FILE} is not a tufota repository configuration")
        try:
            return cls(**data)
        except TypeError as e:
            raise RepositoryError(f"{CONFIG_FILE} is malformed: {e}") from e


class Repository:
    """A repository directory: configuration, keys, storage, tracker file."""

    def __init__(self, path: Path, config: RepoConfig, storage: Storage | None = None) -> None:
        self.path = path
        self.config = config
        self.storage: Storage = storage or LocalStorage(path / "public", path / ".publish.lock")
        self.expiry = Expiry()

    @property
    def keys_dir(self) -> Path:
        return self.path / "keys"

    @property
    def tracker_path(self) -> Path:
        return self.path / "tracker.db"

    @property
    def tokens_path(self) -> Path:
        return self.path / "tokens.json"

    @classmethod
    def open(cls, path: Path) -> Repository:
        """Open an existing repository.

        Raises:
            NotFoundError: ``path`` is not a tufota repository.
        """
        config_path = path / CONFIG_FILE
        if not config_path.is_file():
            raise NotFoundError(
                f"{path} is not a tufota repository (no {CONFIG_FILE}); run 'tufota init'"
            )
        try:
            data = json.loads(config_path.read_text())
        except (OSError, ValueError) as e:
            raise RepositoryError(f"cannot read {config_path}: {e}") from e
        return cls(path, RepoConfig.from_json(data))

    @classmethod
    def create(cls, path: Path, passphrase: str, server_url: str | None = None) -> Repository:
        """Create keys, root, targets (with the rollouts delegation), snapshot and timestamp.

        Raises:
            InputError: ``path`` exists and is not empty, or the passphrase is too weak.
        """
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise InputError(f"{path} already exists and is not empty")
        if not path.parent.is_dir():
            raise NotFoundError(f"parent directory {path.parent} does not exist")
        config = RepoConfig(server_url=server_url) if server_url else RepoConfig()
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.init-"))
        try:
            repo = cls(staging, config)
            keys = {
                name: generate_key(repo.keys_dir / name, passphrase)
                for name in ("root", "targets", "online", "rollouts", "release")
            }
            now = utcnow()

            def ask() -> str:
                return passphrase

            root = new_root(
                [keys["root"].key], 1, [keys["targets"].key], keys["online"].key, now, repo.expiry
            )
            sign_all(root, [load_signer(keys["root"], ask)])
            targets = new_targets(keys["rollouts"].key, now, repo.expiry)
            sign_all(targets, [load_signer(keys["targets"], ask)])
            (staging / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=1) + "\n")
            repo.publisher(ask).publish_initial(root, targets)
            if path.exists():
                path.rmdir()
            os.replace(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls.open(path)

    def key(self, name: str) -> KeyFile:
        return load_public_key(self.keys_dir / f"{name}.pub")

    def online_signers(self, passphrase: Passphrase) -> OnlineSigners:
        return OnlineSigners(
            snapshot_timestamp=load_signer(self.key(self.config.online_key), passphrase),
            rollouts=load_signer(self.key(self.config.rollouts_key), passphrase),
        )

    def publisher(self, passphrase: Passphrase) -> Publisher:
        cache: list[OnlineSigners] = []

        def signers() -> OnlineSigners:
            if not cache:
                cache.append(self.online_signers(passphrase))
            return cache[0]

        return Publisher(self.storage, signers, self.expiry)

    def state(self) -> RepoState:
        return load_state(self.storage)

    def trusted_root(self) -> bytes:
        """The newest root metadata, for provisioning devices."""
        state = self.state()
        return state.root.to_bytes()
