"""``tufota init`` and ``tufota serve``.

``init`` lays out the three homes of keys (docs/decisions/0008): the server's
part under REPO (online keys only) and the signing directory outside it.
``serve`` treats everything under REPO (or the S3 state directory) as its own
and refuses to start beside an offline private key.

The server side (fastapi, uvicorn, boto3) is imported inside ``cmd_serve`` and
``build_context`` only, so ``init`` and every offline command work on the
base install.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from repo_server import RepoConfig, Repository, ServerLimits
from signing import (
    PASSPHRASE_ENV,
    TRUSTED_ROOT,
    KeyPassphrases,
    default_signing_dir,
    online_key_misuse,
    passphrase_env_name,
    resolve_key_file,
)
from tufota_cli._common import passphrase_source
from tufota_core import InputError, TufotaError

if TYPE_CHECKING:
    from repo_server import ServerContext

SSE_CHOICES = ("AES256", "aws:kms", "none")  # as repo_server._s3, without importing boto3
LAB_OVERRIDE = "--lab-allow-offline-keys"

logger = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_REPLICA_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def add_repo_arguments(p: argparse.ArgumentParser) -> None:
    """``--repo`` (a directory or ``s3://BUCKET/PREFIX``) and ``--state-dir``."""
    p.add_argument(
        "--repo",
        required=True,
        help="repository directory, or s3://BUCKET/PREFIX together with --state-dir",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help="for an s3:// repository: the directory 'tufota init --storage' created "
        "(keys, tokens, tracker)",
    )
    p.add_argument(
        "--database",
        default=None,
        metavar="URL",
        help="the tracker's PostgreSQL database, postgresql://USER@HOST/DB "
        "(default $TUFOTA_DATABASE_URL, else REPO/tracker.db); keep the password in "
        "PGPASSWORD or ~/.pgpass",
    )


def open_repository(args: argparse.Namespace) -> Repository:
    """The repository ``--repo``/``--state-dir`` name. Raises InputError, NotFoundError."""
    return Repository.locate(
        args.repo, getattr(args, "state_dir", None), getattr(args, "database", None)
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "init",
        help="create a repository: keys, root, targets, snapshot, timestamp",
        description="Create a repository: the server's part in REPO (online keys only) and a "
        "signing directory outside it (root and targets keys, each with its own passphrase "
        "from TUFOTA_PASSPHRASE_<NAME>, else TUFOTA_PASSPHRASE, else a prompt). With --storage "
        "s3://BUCKET/PREFIX the served tree goes to S3 and REPO becomes the state directory.",
    )
    p.add_argument("repo", metavar="REPO", help="directory to create (must not exist or be empty)")
    p.add_argument(
        "--signing-dir",
        default=None,
        help="where root and targets keys go, outside REPO (default: REPO-signing beside REPO)",
    )
    for role, text in (("online", "snapshot and timestamp"), ("rollouts", "rollout documents")):
        p.add_argument(
            f"--{role}-key",
            default=None,
            metavar="NAME.pub",
            help=f"an existing key for {text} by signer URI, e.g. from 'tufota key import-kms' "
            "(default: a new encrypted key file in REPO/keys)",
        )
    p.add_argument(
        "--server-url",
        default=None,
        help="URL devices will use to reach the server (default http://127.0.0.1:8080)",
    )
    p.add_argument(
        "--storage", default="", help="s3://BUCKET/PREFIX to publish to (default: REPO/public)"
    )
    p.add_argument("--s3-endpoint-url", default="", help="S3-compatible endpoint (default: AWS)")
    p.add_argument("--s3-region", default="", help="bucket region (default: boto3's)")
    p.add_argument(
        "--s3-sse",
        default="AES256",
        choices=SSE_CHOICES,
        help="server-side encryption of every object (default AES256)",
    )
    p.add_argument("--s3-kms-key-id", default="", help="KMS key for --s3-sse aws:kms")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", help="run the repository server")
    add_repo_arguments(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--replica-name",
        default=None,
        metavar="NAME",
        help="this server's name among replicas on one database (default HOST:PID)",
    )
    p.add_argument(
        "--tick-interval", type=float, default=5.0, help="seconds between rollout gate evaluations"
    )
    p.add_argument(
        "--refresh-interval",
        type=float,
        default=60.0,
        help="seconds between checks whether online roles need re-signing",
    )
    p.add_argument(
        "--max-upload-mb",
        type=int,
        default=2048,
        help="largest release bundle accepted, in MiB (default 2048)",
    )
    p.add_argument("--tls-cert", default=None, help="PEM certificate chain (enables HTTPS)")
    p.add_argument("--tls-key", default=None, help="PEM private key of the certificate")
    p.add_argument(
        "--server-name",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name clients use besides the repository's server URL host "
        "(repeatable); other names get 421",
    )
    p.add_argument(
        "--local-viewer",
        action="store_true",
        help="let loopback clients read without a token (never through a proxy); off by default",
    )
    p.add_argument(
        LAB_OVERRIDE,
        action="store_true",
        help="LAB ONLY: start even though REPO holds offline private keys (warns at every start)",
    )
    p.set_defaults(func=cmd_serve)


def cmd_init(args: argparse.Namespace) -> int:
    storage = None
    if args.storage:
        storage = RepoConfig(
            storage=args.storage,
            s3_endpoint_url=args.s3_endpoint_url,
            s3_region=args.s3_region,
            s3_sse=args.s3_sse,
            s3_kms_key_id=args.s3_kms_key_id,
        )
    path = Path(args.repo)
    signing_dir = Path(args.signing_dir) if args.signing_dir else default_signing_dir(path)
    passphrases = passphrase_source(confirm=True)
    shared = _shared_passphrases(
        passphrases,
        path,
        signing_dir,
        {"online": args.online_key or "", "rollouts": args.rollouts_key or ""},
    )
    online_keys = {
        role: resolve_key_file(Path(value))
        for role, value in (("online", args.online_key), ("rollouts", args.rollouts_key))
        if value
    }
    repo = Repository.create(path, passphrases, args.server_url, storage, signing_dir, online_keys)
    state = repo.state()
    print(f"created repository {repo.path}")
    if args.storage:
        print(f"  publishing to {repo.config.storage}; {repo.path} holds keys, tokens, tracker")
    print(f"  root v{state.root.signed.version}; server keys (online, rollouts) in {repo.keys_dir}")
    print(f"  devices will use {repo.config.server_url}")
    print(f"signing directory {repo.signing_dir} (root and targets keys, {TRUSTED_ROOT}):")
    print("  it is not the server's: move it to the signing workstation or offline media")
    if shared:
        online_env = " and ".join(
            passphrase_env_name(Path(f"{n}.key")) for n in ("online", "rollouts")
        )
        print(
            f"warning: {shared} share a passphrase with the server's online keys: whoever reads "
            f"the server's environment can decrypt them; give the server {online_env} "
            f"instead of {PASSPHRASE_ENV}",
            file=sys.stderr,
        )
    print(f"next: tufota release add FIRMWARE --repo {args.repo} --hardware HW --version X.Y.Z")
    return 0


def _shared_passphrases(
    passphrases: KeyPassphrases, path: Path, signing_dir: Path, online_keys: dict[str, str]
) -> str:
    """Offline keys whose passphrase an online key also uses ("" when none)."""
    online = {
        passphrases.for_key(path / "keys" / f"{n}.key")
        for n in ("online", "rollouts")
        if not online_keys.get(n)
    }
    offline = [
        n for n in ("root", "targets") if passphrases.for_key(signing_dir / f"{n}.key") in online
    ]
    return " and ".join(f"{n}.key" for n in offline)


def build_context(
    repo: Repository,
    passphrase: Callable[[], str],
    tick_interval: float = 5.0,
    limits: ServerLimits | None = None,
    replica: str | None = None,
) -> ServerContext:
    """The server's publisher, tracker, controller and claim on leadership for ``repo``.

    ``replica`` names this server among the replicas on one database
    (default ``HOST:PID``).
    """
    from repo_server import ServerContext
    from repo_server._context import FORGED_SETTING
    from repo_server._leader import Leadership, default_replica_name
    from staging import RolloutController

    limits = limits or ServerLimits()
    replica = replica or default_replica_name()
    publisher = repo.publisher(passphrase)
    store = repo.open_tracker(f"tufota serve {replica}")
    wait = limits.lock_timeout_seconds
    publisher.serialize = lambda: store.exclusive("publish", wait)
    publisher.on_forged = lambda paths: store.add_to_set(FORGED_SETTING, paths)
    controller = RolloutController(store, publisher)
    return ServerContext(
        leadership=Leadership(store.leader_lock("controller"), replica, store),
        tokens=repo.token_store(store),
        publisher=publisher,
        store=store,
        controller=controller,
        tick_interval=tick_interval,
        refresh_interval=limits.refresh_interval_seconds,
        limits=limits,
        storage_url=repo.storage_url,
    )


def check_custody(repo: Repository, tls_key: str | None, lab_override: bool) -> None:
    """Refuse (or, with the lab override, warn loudly) when REPO holds an offline private key.

    Also warns when the server's environment holds an offline key's passphrase
    variable (root, targets, ``release-*``).

    Raises:
        InputError: one line naming the first such file and where it belongs.
    """
    offline_env = sorted(
        name
        for name in os.environ
        if name in ("TUFOTA_PASSPHRASE_ROOT", "TUFOTA_PASSPHRASE_TARGETS")
        or name.startswith("TUFOTA_PASSPHRASE_RELEASE_")
    )
    if offline_env:
        print(
            f"warning: the server's environment holds offline keys' passphrases "
            f"({', '.join(offline_env)}); give it only TUFOTA_PASSPHRASE_ONLINE and "
            "TUFOTA_PASSPHRASE_ROLLOUTS",
            file=sys.stderr,
            flush=True,
        )
    misuse = _online_key_misuse(repo)
    if misuse is not None:
        if not lab_override:
            raise InputError(f"refusing to serve: {misuse}")
        print(f"WARNING: {LAB_OVERRIDE}: {misuse}", file=sys.stderr, flush=True)
    ignore = (Path(tls_key),) if tls_key else ()
    findings = repo.offline_keys_here(ignore)
    if not findings:
        return
    first = findings[0].message(repo.signing_dir)
    more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
    if not lab_override:
        raise InputError(f"refusing to serve: {first}{more}")
    for finding in findings:
        print(
            f"WARNING: {LAB_OVERRIDE}: {finding.message(repo.signing_dir)}; anyone who takes "
            "this server can sign firmware",
            file=sys.stderr,
            flush=True,
        )
        logger.warning("serving beside an offline private key: %s", finding.path)


def _online_key_misuse(repo: Repository) -> str | None:
    """Why serving would hand out an offline role: an online key that also signs one."""
    try:
        state = repo.state()
        online = [repo.key(repo.config.online_key).keyid, repo.key(repo.config.rollouts_key).keyid]
    except TufotaError:
        return None  # an unreadable repository fails later with its own message
    return online_key_misuse(online, state.root, state.targets)


def cmd_serve(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise InputError(f"port {args.port} is outside 1-65535")
    if not args.tick_interval > 0 or not args.refresh_interval > 0 or args.max_upload_mb < 1:
        raise InputError("--tick-interval, --refresh-interval and --max-upload-mb must be > 0")
    if args.replica_name is not None and not _REPLICA_NAME.fullmatch(args.replica_name):
        raise InputError(
            f"--replica-name {args.replica_name!r}: use 1-64 letters, digits and . _ : -"
        )
    from repo_server import (  # server extra
        bind_socket,
        check_tls,
        create_app,
        run_forever,
        server_names,
    )

    check_tls(args.tls_cert, args.tls_key)
    repo = open_repository(args)
    check_custody(repo, args.tls_key, args.lab_allow_offline_keys)
    passphrase = passphrase_source()
    # Load the online keys now: a wrong passphrase fails at start, not at the first publish.
    repo.online_signers(passphrase)
    limits = ServerLimits(
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        refresh_interval_seconds=args.refresh_interval,
    )
    # Bind before touching the tracker: a busy port is the only thing said.
    sock = bind_socket(args.host, args.port)
    ctx = build_context(repo, passphrase, args.tick_interval, limits, args.replica_name)
    ctx.local_viewer = args.local_viewer
    ctx.server_names = server_names(repo.config.server_url, args.server_name, args.host)
    ctx.loopback_names = args.host in _LOOPBACK
    if ctx.leadership.check():
        ctx.refresh_online()
        role = "leads (controller, online refresh)"
    else:
        role = f"follows; {ctx.leadership.leader_name() or 'another replica'} leads"
    print(f"tracker {ctx.store.location}: replica {ctx.leadership.replica} {role}", flush=True)
    scheme = "https" if args.tls_cert else "http"
    if scheme == "http" and args.host not in _LOOPBACK:
        logger.warning(
            "serving plain HTTP on %s: API tokens travel in clear; use --tls-cert/--tls-key "
            "or a TLS-terminating proxy",
            args.host,
        )

    def listening() -> None:
        # Only once the socket listens: a busy port prints the error alone.
        print(f"serving {repo.storage_url} on {scheme}://{args.host}:{args.port}", flush=True)
        print(f"dashboard: {scheme}://{args.host}:{args.port}/dashboard", flush=True)

    run_forever(
        create_app(ctx),
        args.host,
        args.port,
        args.tls_cert,
        args.tls_key,
        on_listening=listening,
        sock=sock,
    )
    return 0
