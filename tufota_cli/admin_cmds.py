"""``tufota repo verify|status`` and ``tufota token create|list|revoke``."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from staging import parse_duration
from tufota_cli._common import print_json, table
from tufota_cli._ops import add_target_arguments, operations
from tufota_cli.repo_cmds import add_repo_arguments, open_repository
from tufota_core import InputError, NotFoundError, VerificationError

if TYPE_CHECKING:
    from repo_server import Storage

# As repo_server._auth.ROLES, without importing fastapi: 'token' and 'repo status' run
# remotely on the base install (a test keeps the two equal).
ROLES = ("viewer", "operator", "uploader")
ONLINE = ("timestamp", "snapshot", "rollouts")
_MAX_TOKEN_LIFETIME = 5 * 365 * 86400


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    repo = sub.add_parser("repo", help="check and inspect a published repository")
    rsub = repo.add_subparsers(dest="repo_command", required=True, metavar="COMMAND")
    p = rsub.add_parser(
        "verify",
        help="check every signature, threshold, reference and blob; exit 1 on any problem",
    )
    add_repo_arguments(p)
    p.add_argument(
        "--trusted-root",
        default=None,
        help="root.json to start the chain from (default: the repository's 1.root.json)",
    )
    p.add_argument(
        "--s3-endpoint-url", default=None, help="S3 endpoint when --repo is s3:// without state"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)

    p = rsub.add_parser("status", help="each role's version and remaining validity")
    add_target_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    token = sub.add_parser("token", help="API tokens for operators, uploaders and viewers")
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    p = tsub.add_parser("create", help="create a token; it is printed once and never stored")
    p.add_argument("--name", required=True, help="who or what uses it, e.g. ci-release")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument(
        "--expires",
        default=None,
        metavar="DURATION",
        help="valid for this long, e.g. 12h or 30d (default: until revoked)",
    )
    add_target_arguments(p)
    p.set_defaults(func=cmd_token_create)
    p = tsub.add_parser("list", help="tokens by id, name and role (never the secrets)")
    add_target_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_token_list)
    p = tsub.add_parser("revoke", help="delete a token; requests using it fail at once")
    p.add_argument("token_id", metavar="TOKEN_ID", help="the id 'token list' shows")
    add_target_arguments(p)
    p.set_defaults(func=cmd_token_revoke)


def _storage_for_verify(args: argparse.Namespace) -> Storage:
    from repo_server import S3Location, S3Storage, is_s3_url

    if is_s3_url(args.repo) and args.state_dir is None:
        # Verification needs no keys: the bucket alone will do.
        return S3Storage(S3Location.parse(args.repo), endpoint_url=args.s3_endpoint_url)
    return open_repository(args).storage


def cmd_verify(args: argparse.Namespace) -> int:
    trusted = None
    if args.trusted_root:
        path = Path(args.trusted_root)
        if not path.is_file():
            raise NotFoundError(f"trusted root {path} does not exist")
        trusted = path.read_bytes()
    from repo_server import verify_repository

    report = verify_repository(_storage_for_verify(args), trusted)
    if args.json:
        print_json(report.to_json())
    else:
        for problem in report.problems:
            print(problem)
        versions = ", ".join(f"{r} v{v}" for r, v in sorted(report.roles.items()))
        print(
            f"checked {len(report.roles)} roles ({versions}), {report.targets} targets, "
            f"{report.blob_bytes} bytes of blobs"
        )
    errors = [p for p in report.problems if p.severity == "error"]
    if errors:
        raise VerificationError(
            f"{len(errors)} problem{'s' if len(errors) > 1 else ''} in {args.repo}; "
            f"first: {errors[0].key}: {errors[0].message}"
        )
    if not args.json:
        print(f"{args.repo}: OK")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    data = operations(args).repo_status()
    if args.json:
        print_json(data)
        return 0
    rows = []
    for name, role in data["roles"].items():
        left = timedelta(seconds=role["seconds_left"])
        note = "server re-signs" if role["online"] else ""
        if not role["online"] and left < timedelta(days=30):
            note = "re-sign offline soon"
        if left.total_seconds() <= 0:
            note = "EXPIRED"
        rows.append([name, role["version"], role["expires"], _days(left), note])
    print(f"repository {data['storage']}")
    print(table(["role", "version", "expires", "left", ""], rows))
    return 0


def _days(left: timedelta) -> str:
    hours = left.total_seconds() / 3600
    return f"{hours / 24:.1f}d" if abs(hours) >= 48 else f"{hours:.1f}h"


def cmd_token_create(args: argparse.Namespace) -> int:
    lifetime = None
    if args.expires is not None:
        lifetime = parse_duration(args.expires, maximum=_MAX_TOKEN_LIFETIME)
        if not lifetime:
            raise InputError("--expires must be longer than 0s")
    created = operations(args).create_token(args.name, args.role, lifetime)
    # Only the token on stdout, so TOKEN=$(tufota token create ...) captures it.
    print(created["token"])
    until = f", valid for {args.expires}" if lifetime else ""
    print(
        f"created {args.role} token {created['id']} for {args.name}{until}; "
        "it is shown only this once",
        file=sys.stderr,
    )
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    tokens = operations(args).tokens()
    if args.json:
        print_json({"tokens": tokens})
    elif not tokens:
        print("no tokens")
    else:
        print(
            table(
                ["id", "name", "role", "created", "expires"],
                [
                    [
                        t["id"],
                        t["name"],
                        t["role"],
                        t["created"],
                        _expiry(t),
                    ]
                    for t in tokens
                ],
            )
        )
    return 0


def _expiry(token: dict[str, Any]) -> str:
    if token["expires"] is None:
        return "never"
    return f"{token['expires']} (EXPIRED)" if token["expired"] else str(token["expires"])


def cmd_token_revoke(args: argparse.Namespace) -> int:
    if not args.token_id or len(args.token_id) > 64:
        raise InputError(f"{args.token_id!r} is not a token id")
    operations(args).revoke_token(args.token_id)
    print(f"revoked token {args.token_id}")
    return 0
