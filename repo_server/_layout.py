"""The embedded-default repository directory, its configuration and its signing directory.

Layout of ``REPO/`` (the server's state: everything ``tufota serve`` may read)::

    tufota.json     configuration (key file names, server URL, storage)
    keys/           the ONLINE keys only: online.key/.pub (snapshot, timestamp),
                    rollouts.key/.pub; each encrypted with its own passphrase.
                    A rotated key comes in under its own name (tufota.json
                    names the keys in use); the replaced private key is
                    removed (docs/signing.md, "When an online key is stolen")
    public/         the served tree: metadata/ and targets/ (the local Storage)
    tracker.db      the rollout tracker (SQLite)
    tokens.json     operators' API tokens (SHA-256 hashes only)
    .publish.lock   serialises publishers across processes

Layout of the signing directory (default ``REPO-signing`` beside ``REPO``,
``tufota init --signing-dir`` elsewhere; docs/decisions/0008)::

    root.key/.pub, targets.key/.pub      offline top-level keys
    release-<hw>.key/.pub                one key per product line
    root.json                            the root trusted at init, for --root

With S3 storage (``tufota init STATE_DIR --storage s3://BUCKET/PREFIX``) the
directory is the *state directory*: everything above except ``public/``, and
``tufota.json`` names the bucket (docs/decisions/0005). Keys, tokens and the
tracker never go to the bucket, which may be public behind a CDN.

Invariants: only ``public/`` (or the bucket prefix) is ever served; no offline
private key is ever written under ``REPO`` (``create`` refuses a signing
directory inside it); ``create`` builds both directories beside their
destinations and renames them into place, so a failed ``tufota init`` leaves
nothing behind locally; every secret is gathered before the first write.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repo_server._config import ServerLimits
from repo_server._publisher import OnlineSigners, Publisher, RepoState, load_state
from repo_server._storage import LocalStorage, Storage
from repo_server._verify import verify_repository
from signing import (
    TRUSTED_ROOT,
    Expiry,
    KeyFile,
    KeyFinding,
    KeyPassphrases,
    atomic_write,
    default_signing_dir,
    generate_key,
    is_inside,
    load_public_key,
    load_signer,
    new_root,
    new_targets,
    offline_key_findings,
    product_key_name,
    sign_all,
    write_public_key,
)
from tufota_core import (
    InputError,
    NotFoundError,
    RepositoryError,
    TufotaError,
    VerificationError,
    utcnow,
)

if TYPE_CHECKING:
    from repo_server._auth import TokenStore
    from repo_server._s3 import S3Location
    from staging import SqlTrackerStore

CONFIG_FILE = "tufota.json"
DATABASE_ENV = "TUFOTA_DATABASE_URL"
FORMAT = 1
Passphrase = Callable[[], str]
# The offline keys init creates (in the signing directory) and the online ones (in REPO/keys).
OFFLINE_INIT_KEYS = ("root", "targets")
ONLINE_INIT_KEYS = ("online", "rollouts")


def is_s3_url(value: str) -> bool:
    """``s3://...``; kept here so the base install never imports boto3 for a local path."""
    return value.startswith("s3://")


def _s3_location(url: str) -> S3Location:
    from repo_server._s3 import S3Location  # boto3: server extra only

    return S3Location.parse(url)


@dataclass(frozen=True)
class RepoConfig:
    """``tufota.json``: which key files play which role.

    ``root_keys`` and ``targets_keys`` name files in the signing directory;
    ``online_key`` and ``rollouts_key`` name files in ``REPO/keys``.
    ``release_key`` is empty for repositories made since key custody
    (each product line gets its own ``release-<hw>`` key); older
    repositories keep the shared key they name.
    """

    server_url: str = "http://127.0.0.1:8080"
    root_keys: list[str] = field(default_factory=lambda: ["root"])
    root_threshold: int = 1
    targets_keys: list[str] = field(default_factory=lambda: ["targets"])
    online_key: str = "online"
    rollouts_key: str = "rollouts"
    release_key: str = ""
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
    from repo_server._s3 import S3Storage  # boto3: server extra only

    return S3Storage(
        _s3_location(config.storage),
        endpoint_url=config.s3_endpoint_url or None,
        region=config.s3_region or None,
        sse=config.s3_sse,
        kms_key_id=config.s3_kms_key_id or None,
        limits=limits,
    )


def _private_key_file(key: KeyFile) -> Path | None:
    """The private key file of an ``encfile:`` key (None for KMS or HSM keys)."""
    scheme, _, rest = key.uri.partition(":")
    if scheme != "encfile":
        return None
    return Path(rest) if rest.startswith("/") else key.path.parent / rest


def _absolute_uri(key: KeyFile) -> str:
    """``key``'s signer URI with a relative ``encfile:`` path made absolute (it moves to REPO)."""
    scheme, _, rest = key.uri.partition(":")
    if scheme == "encfile" and not rest.startswith("/"):
        return f"encfile:{(key.path.parent / rest).resolve()}"
    return key.uri


class Repository:
    """A repository (or state) directory and, for offline commands, its signing directory.

    ``key(name)`` looks in ``REPO/keys`` (online keys) and then in the signing
    directory; the server itself only ever asks for online keys.
    """

    def __init__(
        self,
        path: Path,
        config: RepoConfig,
        storage: Storage | None = None,
        signing_dir: Path | None = None,
    ) -> None:
        self.path = path
        self.config = config
        self.storage: Storage = storage or make_storage(path, config)
        self.expiry = Expiry()
        self.signing_dir = signing_dir or default_signing_dir(path)
        #: the tracker database URL (``--database``/``TUFOTA_DATABASE_URL``); None: the SQLite file
        self.database: str | None = None

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
        """Where tokens lived before schema v4; imported into the tracker when found."""
        return self.path / "tokens.json"

    @property
    def tracker_location(self) -> str:
        """The tracker's database: ``--database`` URL, else ``REPO/tracker.db``."""
        return self.database or str(self.tracker_path)

    def open_tracker(self, application_name: str = "tufota") -> SqlTrackerStore:
        """The tracker store (SQLite file, or PostgreSQL with ``database``).

        Raises:
            InputError: an unusable database URL.
            StoreError: the database cannot be opened or has a newer schema.
        """
        from staging import open_tracker

        return open_tracker(self.tracker_location, application_name=application_name)

    def token_store(self, tracker: SqlTrackerStore | None = None) -> TokenStore:
        """API tokens in the tracker (``tracker``, or one opened for the token store alone).

        Tokens of an older ``tokens.json`` are imported once, and the file renamed.
        """
        from repo_server._auth import TokenStore

        store = TokenStore(tracker or self.open_tracker(), owned=tracker is None)
        store.import_file(self.tokens_path)
        return store

    @classmethod
    def open(cls, path: Path, signing_dir: Path | None = None) -> Repository:
        """Open an existing repository (``signing_dir``: default ``REPO-signing``).

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
        return cls(path, RepoConfig.from_json(data), signing_dir=signing_dir)

    @classmethod
    def locate(
        cls, repo: str, state_dir: str | None = None, database: str | None = None
    ) -> Repository:
        """Open ``repo``: a repository directory, or ``s3://BUCKET/PREFIX`` with its state dir.

        ``database`` (else ``TUFOTA_DATABASE_URL``) names the tracker database.

        Raises:
            InputError: an S3 URL without ``state_dir``, or one that is not the
                storage the state directory was created for.
            NotFoundError: the directory is not a tufota repository.
        """
        opened = cls._locate(repo, state_dir)
        opened.database = database or os.environ.get(DATABASE_ENV) or None
        return opened

    @classmethod
    def _locate(cls, repo: str, state_dir: str | None) -> Repository:
        if not is_s3_url(repo):
            if state_dir is not None and Path(state_dir) != Path(repo):
                raise InputError("--state-dir goes with an s3:// --repo only")
            return cls.open(Path(repo))
        location = _s3_location(repo)
        if state_dir is None:
            raise InputError(
                f"{repo} needs --state-dir: the directory 'tufota init --storage {repo}' "
                "created, holding the keys, tokens and tracker"
            )
        opened = cls.open(Path(state_dir))
        if not opened.config.storage or _s3_location(opened.config.storage) != location:
            raise InputError(
                f"state directory {state_dir} belongs to "
                f"{opened.config.storage or 'a local repository'}, not {location.url}"
            )
        return opened

    @classmethod
    def create(
        cls,
        path: Path,
        passphrase: str | KeyPassphrases,
        server_url: str | None = None,
        storage: RepoConfig | None = None,
        signing_dir: Path | None = None,
        online_keys: Mapping[str, KeyFile] | None = None,
    ) -> Repository:
        """Create online keys in ``path``, offline keys in the signing directory, v1 metadata.

        Args:
            path: the directory to create (the state directory for S3 storage).
            passphrase: one passphrase for every new key (tests, the demo), or
                a ``KeyPassphrases`` giving each key file its own.
            server_url: the URL devices will use.
            storage: a configuration whose ``storage``/``s3_*`` fields name S3
                storage; None keeps the served tree in ``path/public``.
            signing_dir: where root and targets keys go (default
                ``REPO-signing``); never inside ``path``.
            online_keys: existing keys to use as ``online`` (snapshot and
                timestamp) and/or ``rollouts`` instead of new key files, by
                signer URI: an ``awskms:`` key lets several servers share one
                online key without copying a private key file.

        Raises:
            InputError: a directory exists and is not empty, the signing
                directory is inside ``path``, or a passphrase is too weak.
            ConflictError: the S3 location already holds a repository.
        """
        signing = signing_dir or default_signing_dir(path)
        if is_inside(signing, path) or is_inside(path, signing):
            raise InputError(
                f"the signing directory {signing} must be outside the repository {path}: "
                "the server treats everything under REPO as its own"
            )
        for directory in (path, signing):
            if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
                raise InputError(f"{directory} already exists and is not empty")
            parent = directory.absolute().parent
            if not parent.is_dir():
                raise NotFoundError(f"parent directory {parent} does not exist")
        config = RepoConfig(server_url=server_url) if server_url else RepoConfig()
        if storage is not None and storage.storage:
            config = RepoConfig(
                **{
                    **asdict(config),
                    "storage": _s3_location(storage.storage).url,
                    "s3_endpoint_url": storage.s3_endpoint_url,
                    "s3_region": storage.s3_region,
                    "s3_sse": storage.s3_sse,
                    "s3_kms_key_id": storage.s3_kms_key_id,
                }
            )
            make_storage(path, config)  # validate the options before making keys
        # Every passphrase before the first write: a missing one changes nothing.
        given = dict(online_keys or {})
        unknown = set(given) - set(ONLINE_INIT_KEYS)
        if unknown:
            raise InputError(f"online keys are {', '.join(ONLINE_INIT_KEYS)}, not {unknown}")
        homes = dict.fromkeys(OFFLINE_INIT_KEYS, signing)
        homes.update(dict.fromkeys(set(ONLINE_INIT_KEYS) - set(given), path / "keys"))
        secrets = {
            name: passphrase
            if isinstance(passphrase, str)
            else passphrase.for_key(home / f"{name}.key")
            for name, home in homes.items()
        }
        made: list[Path] = []
        try:
            staging = Path(
                tempfile.mkdtemp(dir=path.absolute().parent, prefix=f".{path.name}.init-")
            )
            made.append(staging)
            staged_signing = Path(
                tempfile.mkdtemp(dir=signing.absolute().parent, prefix=f".{signing.name}.init-")
            )
            made.append(staged_signing)
            repo = cls(staging, config, signing_dir=staged_signing)
            keys = {
                name: generate_key(
                    (staged_signing if home == signing else repo.keys_dir) / name, secrets[name]
                )
                for name, home in homes.items()
            }
            for name, key in given.items():
                keys[name] = write_public_key(
                    repo.keys_dir / f"{name}.pub", key.key, _absolute_uri(key)
                )
            now = utcnow()

            def ask_for(name: str) -> Passphrase:
                if name in secrets:
                    return lambda: secrets[name]
                return passphrase if not isinstance(passphrase, str) else lambda: passphrase

            root = new_root(
                [keys["root"].key], 1, [keys["targets"].key], keys["online"].key, now, repo.expiry
            )
            sign_all(root, [load_signer(keys["root"], ask_for("root"))])
            targets = new_targets(keys["rollouts"].key, now, repo.expiry)
            sign_all(targets, [load_signer(keys["targets"], ask_for("targets"))])
            (staging / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=1) + "\n")
            (staged_signing / TRUSTED_ROOT).write_bytes(root.to_bytes())

            publisher = Publisher(
                repo.storage,
                lambda: OnlineSigners(
                    snapshot_timestamp=load_signer(keys["online"], ask_for("online")),
                    rollouts=load_signer(keys["rollouts"], ask_for("rollouts")),
                ),
                repo.expiry,
            )
            publisher.publish_initial(root, targets)
            os.chmod(staged_signing, 0o700)
            for final, staged in ((path, staging), (signing, staged_signing)):
                if final.exists():
                    final.rmdir()
                os.replace(staged, final)
                made[made.index(staged)] = final
        except BaseException:
            for directory in made:
                shutil.rmtree(directory, ignore_errors=True)
            raise
        return cls.open(path, signing)

    def key(self, name: str) -> KeyFile:
        """The key file ``name.pub``: online keys from ``REPO/keys``, others from the signing dir.

        Each falls back to the other place (older layouts kept every key in ``REPO/keys``).

        Raises:
            NotFoundError: in neither place.
        """
        online = name in (self.config.online_key, self.config.rollouts_key)
        places = (self.keys_dir, self.signing_dir) if online else (self.signing_dir, self.keys_dir)
        for directory in places:
            if (directory / f"{name}.pub").is_file():
                return load_public_key(directory / f"{name}.pub")
        raise NotFoundError(
            f"key {name} is in neither {self.keys_dir} nor the signing directory "
            f"{self.signing_dir} (give --signing-dir?)"
        )

    def check_new_online_key(self, key: KeyFile) -> Path:
        """Where ``key`` would go in ``REPO/keys`` (``<stem>.pub``), refusing every clash.

        The key keeps its file name so the server's passphrase variable
        (``TUFOTA_PASSPHRASE_<STEM>``) follows it. Writes nothing.

        Raises:
            InputError: the name is the current online or rollouts key's (the
                stolen key's files are kept, not overwritten), or another key
                of that name is already in ``REPO/keys``.
            NotFoundError: an ``encfile:`` key whose private key file is missing.
        """
        name = key.path.stem
        if name in (self.config.online_key, self.config.rollouts_key):
            raise InputError(
                f"{key.path.name}: {name} is the name of a key this repository uses now; "
                f"give the new key another name (e.g. {name}-2) so the old files stay apart"
            )
        pub = self.keys_dir / f"{name}.pub"
        if pub.exists():
            there = load_public_key(pub)
            if there.keyid != key.keyid:
                raise InputError(f"{pub} already holds another key ({there.keyid[:12]})")
        private = _private_key_file(key)
        if private is not None and not private.is_file():
            raise NotFoundError(f"private key file {private} does not exist")
        return pub

    def install_online_key(self, key: KeyFile) -> list[Path]:
        """Copy ``key`` into ``REPO/keys`` (``.pub``, and ``.key`` for an ``encfile:`` key).

        A KMS or HSM key gets only its ``.pub`` (the signer URI). Files already
        there with the same key are kept, so a re-run after a crash completes.
        Call ``check_new_online_key`` first.

        Returns:
            The files this call created (to remove when the publish after it fails).
        """
        pub = self.check_new_online_key(key)
        created = []
        private = _private_key_file(key)
        uri = key.uri
        if private is not None:
            dest = pub.with_suffix(".key")
            uri = f"encfile:{dest.name}"
            if not dest.exists():
                atomic_write(dest, private.read_bytes(), 0o600)
                created.append(dest)
        if not pub.exists():
            write_public_key(pub, key.key, uri)
            created.append(pub)
        return created

    def switch_online_key(self, role: str, name: str) -> Path | None:
        """Point ``online_key`` or ``rollouts_key`` of ``tufota.json`` at ``REPO/keys/<name>``.

        One atomic rename: readers see the old configuration or the new one.
        Then the replaced key's private file leaves ``REPO/keys``: its
        signatures no longer count, and ``serve`` refuses to start beside a
        private key that is not one of its online keys. Its ``.pub`` stays.

        Returns:
            The retired private key file that was removed, if there was one.
        """
        if role not in ("online_key", "rollouts_key"):
            raise InputError(f"{role} is not an online key of the configuration")
        old = getattr(self.config, role)
        config = RepoConfig(**{**asdict(self.config), role: name})
        data = (json.dumps(asdict(config), indent=1) + "\n").encode()
        atomic_write(self.path / CONFIG_FILE, data, 0o644)
        self.config = config
        retired = self.keys_dir / f"{old}.key"
        if old == name or old in (config.online_key, config.rollouts_key) or not retired.exists():
            return None
        retired.unlink()
        return retired

    def signing_keys(self) -> list[KeyFile]:
        """Every public key file of the signing directory (an empty list when it is absent)."""
        if not self.signing_dir.is_dir():
            return []
        found = []
        for pub in sorted(self.signing_dir.glob("*.pub")):
            try:
                found.append(load_public_key(pub))
            except TufotaError:
                continue  # not a key file of ours; the caller reports what is missing
        return found

    def product_key_files(self, targets: Any, hardware_id: str) -> list[KeyFile]:
        """The signing directory's keys of ``hardware_id``'s delegation, up to its threshold.

        Raises:
            NotFoundError: fewer than the threshold of its keys are in the signing directory.
        """
        from signing import find_product

        delegation = find_product(targets, hardware_id)
        found = [k for k in self.signing_keys() if k.keyid in delegation.keyids]
        if len(found) < delegation.threshold:
            raise NotFoundError(
                f"product line {hardware_id} needs {delegation.threshold} of its release keys; "
                f"{len(found)} are in the signing directory {self.signing_dir}"
            )
        return found[: delegation.threshold]

    def new_product_key(self, hardware_id: str, passphrase: Passphrase) -> KeyFile:
        """A new product line's release key: its own ``release-<hw>`` in the signing directory.

        A key file of that name left by an earlier attempt that published
        nothing is reused. Repositories made before key custody keep their
        shared ``release_key``.

        Raises:
            NotFoundError: the signing directory does not exist.
        """
        if self.config.release_key:
            return self.key(self.config.release_key)
        if not self.signing_dir.is_dir():
            raise NotFoundError(
                f"signing directory {self.signing_dir} does not exist (give --signing-dir)"
            )
        out = self.signing_dir / product_key_name(hardware_id)
        if out.with_suffix(".pub").is_file():
            return load_public_key(out.with_suffix(".pub"))
        key_path = out.with_suffix(".key")
        secret = (
            passphrase.for_key(key_path) if isinstance(passphrase, KeyPassphrases) else passphrase()
        )
        return generate_key(out, secret)

    def offline_keys_here(self, ignore: tuple[Path, ...] = ()) -> list[KeyFinding]:
        """Private key files in this state/repository directory other than its online keys."""
        online = []
        for name in (self.config.online_key, self.config.rollouts_key):
            online.append(self.keys_dir / f"{name}.key")
        try:
            state: RepoState | None = self.state()
        except TufotaError:
            state = None
        return offline_key_findings(
            [self.path],
            online,
            state.root if state else None,
            state.targets if state else None,
            ignore,
        )

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

    @property
    def signing_root_path(self) -> Path:
        """The root the release engineers trust: init wrote it, rotations chain from it."""
        return self.signing_dir / TRUSTED_ROOT

    def verified_state(
        self, trusted_root: bytes | None = None, *, required: bool = True
    ) -> RepoState:
        """The repository's metadata, after checking every signature from a trusted root.

        Offline keys sign on top of what they read, and the server's directory
        is writable by whoever holds the server: so nothing an offline key
        signs is taken from it unverified. The chain starts from ``trusted_root``,
        else the signing directory's ``root.json``; with ``required=False`` and
        neither, from the repository's own ``1.root.json`` (still catching a
        planted later root or an unsigned role). Expiry is not checked: an
        offline signer may re-sign on top of a lapsed timestamp.

        Raises:
            NotFoundError: ``required`` and no trusted root is at hand.
            VerificationError: a signature, threshold or reference does not verify.
        """
        source = "the repository's 1.root.json"
        if trusted_root is None and self.signing_root_path.is_file():
            trusted_root = self.signing_root_path.read_bytes()
            source = str(self.signing_root_path)
        elif trusted_root is not None:
            source = "the given root"
        elif required:
            raise NotFoundError(
                f"no trusted root to verify {self.storage_url} from: {self.signing_root_path} "
                "does not exist (give --signing-dir, the directory 'tufota init' printed)"
            )
        report = verify_repository(self.storage, trusted_root, blobs=False, expiry=False)
        errors = [p for p in report.problems if p.severity == "error"]
        if errors:
            raise VerificationError(
                f"{self.storage_url} does not verify from {source}: {errors[0].key}: "
                f"{errors[0].message}; refusing to sign on top of it (see 'tufota repo verify')"
            )
        return self.state()

    def trusted_root(self, trusted_root: bytes | None = None) -> bytes:
        """The newest root metadata, for provisioning devices, verified along its chain."""
        return self.verified_state(trusted_root, required=False).root.to_bytes()
