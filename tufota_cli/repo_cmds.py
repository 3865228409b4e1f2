"""``tufota init`` and ``tufota serve``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from repo_server import Repository, ServerContext, TokenStore, create_app, run_forever
from staging import RolloutController, SqliteTrackerStore
from tufota_cli._common import open_repo, passphrase_source

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("init", help="create a repository: keys, root, targets, snapshot, timestamp")
    p.add_argument("repo", metavar="REPO", help="directory to create (must not exist or be empty)")
    p.add_argument(
        "--server-url",
        default=None,
        help="URL devices will use to reach the server (default http://127.0.0.1:8080)",
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", help="run the repository server")
    p.add_argument("--repo", required=True, help="repository directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--tick-interval", type=float, default=5.0, help="seconds between rollout gate evaluations"
    )
    p.add_argument("--tls-cert", default=None)
    p.add_argument("--tls-key", default=None)
    p.set_defaults(func=cmd_serve)


def cmd_init(args: argparse.Namespace) -> int:
    passphrase = passphrase_source(confirm=True)()
    repo = Repository.create(Path(args.repo), passphrase, args.server_url)
    state = repo.state()
    print(f"created repository {repo.path}")
    print(f"  root v{state.root.signed.version}, keys in {repo.keys_dir} (encrypted)")
    print(f"  devices will use {repo.config.server_url}")
    print(f"next: tufota release add FIRMWARE --repo {args.repo} --hardware HW --version X.Y.Z")
    return 0


def build_context(
    repo: Repository, passphrase: Callable[[], str], tick_interval: float = 5.0
) -> ServerContext:
    """The server's publisher, tracker and controller for ``repo``."""
    publisher = repo.publisher(passphrase)
    store = SqliteTrackerStore(repo.tracker_path)
    controller = RolloutController(store, publisher)
    return ServerContext(
        tokens=TokenStore(repo.tokens_path),
        publisher=publisher,
        store=store,
        controller=controller,
        tick_interval=tick_interval,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise SystemExit(f"tufota: error: port {args.port} is outside 1-65535")
    repo = open_repo(args.repo)
    passphrase = passphrase_source()
    # Load the online keys now: a wrong passphrase fails at start, not at the first publish.
    repo.online_signers(passphrase)
    ctx = build_context(repo, passphrase, args.tick_interval)
    ctx.publisher.refresh_online()
    scheme = "https" if args.tls_cert else "http"
    print(f"serving {repo.path} on {scheme}://{args.host}:{args.port}", flush=True)
    run_forever(create_app(ctx), args.host, args.port, args.tls_cert, args.tls_key)
    return 0
