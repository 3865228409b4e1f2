"""``tufota release``: sign and publish firmware releases."""

from __future__ import annotations

import argparse
from pathlib import Path

from repo_server import add_release_locally
from tufota_cli._common import open_repo, passphrase_source
from tufota_core import SEVERITIES, FirmwareInfo, InputError, NotFoundError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    release = sub.add_parser("release", help="sign and publish firmware releases")
    rsub = release.add_subparsers(dest="release_command", required=True, metavar="COMMAND")
    p = rsub.add_parser(
        "add", help="sign a firmware file with the repository's release key and publish it"
    )
    p.add_argument("file", metavar="FILE", help="firmware image")
    p.add_argument("--repo", required=True, help="repository directory")
    p.add_argument("--hardware", required=True, help="hardware id (product line)")
    p.add_argument("--version", required=True, help="semantic version, newer than the last release")
    p.add_argument("--severity", default="none", choices=SEVERITIES)
    p.add_argument("--cvss", type=float, default=None, help="highest CVSS score this release fixes")
    p.add_argument("--fixes", default="", help="comma-separated CVE ids this release fixes")
    p.add_argument("--notes", default="", help="release notes")
    p.set_defaults(func=cmd_add)


def cmd_add(args: argparse.Namespace) -> int:
    firmware = Path(args.file)
    if not firmware.is_file():
        raise NotFoundError(f"firmware file {firmware} does not exist")
    if firmware.stat().st_size == 0:
        raise InputError(f"firmware file {firmware} is empty")
    repo = open_repo(args.repo)
    info = FirmwareInfo(
        hardware_id=args.hardware,
        version=args.version,
        severity=args.severity,
        cvss=args.cvss,
        fixes=tuple(f.strip() for f in args.fixes.split(",") if f.strip()),
        notes=args.notes,
    )
    result = add_release_locally(repo, firmware, info, passphrase_source())
    if result.new_product_line:
        print(
            f"new product line {args.hardware}: delegated firmware/{args.hardware}/* "
            f"to the repository's release key"
        )
    print(f"published {result.target_path}")
    print(f"  {result.length} bytes, sha256 {result.sha256}")
    return 0
