"""``tufota init`` and ``tufota serve``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from repo_server import (
    SSE_CHOICES,
    RepoConfig,
    Repository,
    ServerContext,
    ServerLimits,
    TokenStore,
    check_tls,
    create_app,
    run_forever,
)
from staging import RolloutController, SqliteTrackerStore
from tufota_cli._common import passphrase_source

logger = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


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


def open_repository(args: argparse.Namespace) -> Repository:
    """The repository ``--repo``/``--state-dir`` name. Raises InputError, NotFoundError."""
    return Repository.locate(args.repo, getattr(args, "state_dir", None))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "init",
        help="create a repository: keys, root, targets, snapshot, timestamp",
        description="Create a repository. With --storage s3://BUCKET/PREFIX the served tree "
        "goes to S3 and REPO becomes the state directory (keys, tokens, tracker).",
    )
    p.add_argument("repo", metavar="REPO", help="directory to create (must not exist or be empty)")
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
    passphrase = passphrase_source(confirm=True)()
    repo = Repository.create(Path(args.repo), passphrase, args.server_url, storage)
    state = repo.state()
    print(f"created repository {repo.path}")
    if args.storage:
        print(f"  publishing to {repo.config.storage}; {repo.path} holds keys, tokens, tracker")
    print(f"  root v{state.root.signed.version}, keys in {repo.keys_dir} (encrypted)")
    print(f"  devices will use {repo.config.server_url}")
    print(f"next: tufota release add FIRMWARE --repo {args.repo} --hardware HW --version X.Y.Z")
    return 0


def build_context(
    repo: Repository,
    passphrase: Callable[[], str],
    tick_interval: float = 5.0,
    limits: ServerLimits | None = None,
) -> ServerContext:
    """The server's publisher, tracker and controller for ``repo``."""
    limits = limits or ServerLimits()
    publisher = repo.publisher(passphrase)
    store = SqliteTrackerStore(repo.tracker_path)
    controller = RolloutController(store, publisher)
    return ServerContext(
        tokens=TokenStore(repo.tokens_path),
        publisher=publisher,
        store=store,
        controller=controller,
        tick_interval=tick_interval,
        refresh_interval=limits.refresh_interval_seconds,
        limits=limits,
        storage_url=repo.storage_url,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise SystemExit(f"tufota: error: port {args.port} is outside 1-65535")
    if not args.tick_interval > 0 or not args.refresh_interval > 0 or args.max_upload_mb < 1:
        raise SystemExit(
            "tufota: error: --tick-interval, --refresh-interval and --max-upload-mb must be > 0"
        )
    check_tls(args.tls_cert, args.tls_key)
    repo = open_repository(args)
    passphrase = passphrase_source()
    # Load the online keys now: a wrong passphrase fails at start, not at the first publish.
    repo.online_signers(passphrase)
    limits = ServerLimits(
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        refresh_interval_seconds=args.refresh_interval,
    )
    ctx = build_context(repo, passphrase, args.tick_interval, limits)
    ctx.refresh_online()
    scheme = "https" if args.tls_cert else "http"
    if scheme == "http" and args.host not in _LOOPBACK:
        logger.warning(
            "serving plain HTTP on %s: API tokens travel in clear; use --tls-cert/--tls-key "
            "or a TLS-terminating proxy",
            args.host,
        )
    print(f"serving {repo.storage_url} on {scheme}://{args.host}:{args.port}", flush=True)
    run_forever(create_app(ctx), args.host, args.port, args.tls_cert, args.tls_key)
    return 0
