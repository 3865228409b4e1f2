"""The embedded-default repository directory and its configuration.

Layout of ``REPO/``::

    tufota.json     configuration (key file names, thresholds, server URL)
    keys/           NAME.key (encrypted private key) and NAME.pub; never served
    public/         the served tree: metadata/ and targets/ (the local Storage)
    tracker.db      the rollout tracker (SQLite)
    tokens.json     operators' API tokens (SHA-256 hashes only)
    .publish.lock   serialises publishers across processes

With S3 storage (``tufota init STATE_DIR --storage s3://BUCKET/PREFIX``) the
directory is the *state directory*: everything above except ``public/``, and
``tufota.json`` names the bucket (docs/decisions/0005). Keys, tokens and the
tracker never go to the bucket, which may be public behind a CDN.

Invariants: only ``public/`` (or the bucket prefix) is ever served; ``create``
builds the whole directory beside its destination and renames it into place,
so a failed ``tufota init`` leaves nothing behind locally.
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

from repo_server._config import ServerLimits
from repo_server._publisher import OnlineSigners, Publisher, RepoState, load_state
from repo_server._s3 import S3Location, S3Storage, is_s3_url
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
    storage: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_sse: str = "AES256"
    s3_kms_key_id: str = ""

    @classmethod
    def from_json(cls, data: Any) -> RepoConfig:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RepositoryError(f"{CONFIG_FILE} is not a tufota repository configuration")
        try:
            return cls(**data)
        except TypeError as e:
            raise RepositoryError(f"{CONFIG_FILE} is malformed: {e}") from e


def make_storage(path: Path, config: RepoConfig, limits: ServerLimits | None = None) -> Storage:
    """The storage ``config`` names: ``path/public`` by default, else its S3 location.

    Raises:
        InputError: the configured storage URL or S3 options are invalid.
    """
    if not config.storage:
        return LocalStorage(path / "public", path / ".publish.lock")
    if not is_s3_url(config.storage):
        raise InputError(f"{CONFIG_FILE}: storage {config.storage!r} is not an s3:// URL")
    return S3Storage(
        S3Location.parse(config.storage),
        endpoint_url=config.s3_endpoint_url or None,
        region=config.s3_region or None,
        sse=config.s3_sse,
        kms_key_id=config.s3_kms_key_id or None,
        limits=limits,
    )


class Repository:
    """A repository (or state) directory: configuration, keys, storage, tracker file."""

    def __init__(self, path: Path, config: RepoConfig, storage: Storage | None = None) -> None:
        self.path = path
        self.config = config
        self.storage: Storage = storage or make_storage(path, config)
        self.expiry = Expiry()

    @property
    def storage_url(self) -> str:
        """Where the served tree lives: an ``s3://`` URL or the ``public/`` directory."""
        return self.config.storage or str(self.path / "public")

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
    def locate(cls, repo: str, state_dir: str | None = None) -> Repository:
        """Open ``repo``: a repository directory, or ``s3://BUCKET/PREFIX`` with its state dir.

        Raises:
            InputError: an S3 URL without ``state_dir``, or one that is not the
                storage the state directory was created for.
            NotFoundError: the directory is not a tufota repository.
        """
        if not is_s3_url(repo):
            if state_dir is not None and Path(state_dir) != Path(repo):
                raise InputError("--state-dir goes with an s3:// --repo only")
            return cls.open(Path(repo))
        location = S3Location.parse(repo)
        if state_dir is None:
            raise InputError(
                f"{repo} needs --state-dir: the directory 'tufota init --storage {repo}' "
                "created, holding the keys, tokens and tracker"
            )
        opened = cls.open(Path(state_dir))
        if not opened.config.storage or S3Location.parse(opened.config.storage) != location:
            raise InputError(
                f"state directory {state_dir} belongs to "
                f"{opened.config.storage or 'a local repository'}, not {location.url}"
            )
        return opened

    @classmethod
    def create(
        cls,
        path: Path,
        passphrase: str,
        server_url: str | None = None,
        storage: RepoConfig | None = None,
    ) -> Repository:
        """Create keys, root, targets (with the rollouts delegation), snapshot and timestamp.

        Args:
            path: the directory to create (the state directory for S3 storage).
            passphrase: encrypts the new key files.
            server_url: the URL devices will use.
            storage: a configuration whose ``storage``/``s3_*`` fields name S3
                storage; None keeps the served tree in ``path/public``.

        Raises:
            InputError: ``path`` exists and is not empty, or the passphrase is too weak.
            ConflictError: the S3 location already holds a repository.
        """
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise InputError(f"{path} already exists and is not empty")
        if not path.parent.is_dir():
            raise NotFoundError(f"parent directory {path.parent} does not exist")
        config = RepoConfig(server_url=server_url) if server_url else RepoConfig()
        if storage is not None and storage.storage:
            config = RepoConfig(
                **{
                    **asdict(config),
                    "storage": S3Location.parse(storage.storage).url,
                    "s3_endpoint_url": storage.s3_endpoint_url,
                    "s3_region": storage.s3_region,
                    "s3_sse": storage.s3_sse,
                    "s3_kms_key_id": storage.s3_kms_key_id,
                }
            )
            make_storage(path, config)  # validate the options before making keys
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
