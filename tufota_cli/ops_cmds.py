"""``tufota login``, ``tufota profile`` and ``tufota release list|show``.

``login`` saves a server URL, a token and a CA bundle as a named profile in
the user's config file (``_profiles``: mode 0600) and makes it the active
one; every operator command then works remotely without ``--server``.
Precedence: flags, then ``TUFOTA_SERVER``/``TUFOTA_TOKEN``, then the profile.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from tufota_cli import _profiles
from tufota_cli._client import ApiClient, check_server_url
from tufota_cli._common import print_json, table
from tufota_cli._ops import TOKEN_ENV, add_target_arguments, operations
from tufota_core import InputError, NotFoundError, check_hardware_id

_MAX_TOKEN = 512


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "login",
        help="save a server URL and token as a profile (0600 file) and make it active",
        description="Save a server URL and API token as a named profile in "
        "$XDG_CONFIG_HOME/tufota/profiles.json (default ~/.config/tufota), created with "
        "mode 0600, and make it the active profile. The token comes from --token, else "
        f"${TOKEN_ENV}, else a prompt (or one line of stdin). The server must answer "
        "/api/v1/health; nothing is saved otherwise.",
    )
    p.add_argument("--server", required=True, help="server URL, e.g. https://ota.example.com")
    p.add_argument("--token", default=None, help="API token (default: prompt)")
    p.add_argument("--profile", default="default", help="profile name (default 'default')")
    p.add_argument("--ca-bundle", default=None, help="PEM CA certificates for an https server")
    p.set_defaults(func=cmd_login)

    profile = sub.add_parser("profile", help="list, switch or remove saved server profiles")
    psub = profile.add_subparsers(dest="profile_command", required=True, metavar="COMMAND")
    p = psub.add_parser("list", help="saved profiles (never their tokens); * marks the active one")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile_list)
    p = psub.add_parser("use", help="make a saved profile the active one")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_profile_use)
    p = psub.add_parser("remove", help="forget a saved profile and its token")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_profile_remove)


def add_release_reads(rsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``release list`` and ``release show``, added to the ``release`` group."""
    p = rsub.add_parser(
        "list",
        help="per hardware line: versions, severity, CVEs, signing keys, when published",
    )
    p.add_argument("--hardware", default=None, help="only this hardware id")
    add_target_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_release_list)
    p = rsub.add_parser("show", help="one release: facts, CVEs, target, hash, signing keys")
    p.add_argument("hardware_id", metavar="HARDWARE_ID")
    p.add_argument("version", metavar="VERSION")
    add_target_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_release_show)


def _read_token(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        if sys.stdin.isatty():
            token = getpass.getpass(f"API token for {args.server}: ")
        else:
            token = sys.stdin.readline(_MAX_TOKEN + 2)
    token = token.strip()
    if not token:
        raise InputError(f"no token: give --token, set {TOKEN_ENV}, or type it at the prompt")
    if len(token) > _MAX_TOKEN or any(c.isspace() or not c.isprintable() for c in token):
        raise InputError("that is not an API token (one line, no spaces)")
    return token


def cmd_login(args: argparse.Namespace) -> int:
    _profiles.check_profile_name(args.profile)
    server = check_server_url(args.server)
    ca = os.path.abspath(args.ca_bundle) if args.ca_bundle else None
    token = _read_token(args)
    # Reachable with this CA before anything is saved: a typo fails here, not later.
    ApiClient(server, token, ca).get("/api/v1/health")
    data = _profiles.load()
    data["profiles"][args.profile] = {"server": server, "token": token, "ca_bundle": ca}
    data["active"] = args.profile
    path = _profiles.save(data)
    print(f"logged in to {server} as profile {args.profile} (saved in {path}, mode 0600)")
    return 0


def cmd_profile_list(args: argparse.Namespace) -> int:
    data = _profiles.load()
    rows = [
        {"name": name, "server": p.get("server"), "ca_bundle": p.get("ca_bundle"),
         "active": name == data.get("active")}
        for name, p in sorted(data["profiles"].items())
    ]  # fmt: skip
    if args.json:
        print_json({"profiles": rows})
    elif not rows:
        print("no profiles; create one with 'tufota login --server URL'")
    else:
        print(
            table(
                ["", "name", "server", "ca bundle"],
                [
                    ["*" if r["active"] else "", r["name"], r["server"], r["ca_bundle"]]
                    for r in rows
                ],
            )
        )
    return 0


def cmd_profile_use(args: argparse.Namespace) -> int:
    data = _profiles.load()
    if args.name not in data["profiles"]:
        raise NotFoundError(f"no profile named {args.name}; see 'tufota profile list'")
    data["active"] = args.name
    _profiles.save(data)
    print(f"active profile: {args.name} ({data['profiles'][args.name].get('server')})")
    return 0


def cmd_profile_remove(args: argparse.Namespace) -> int:
    data = _profiles.load()
    if data["profiles"].pop(args.name, None) is None:
        raise NotFoundError(f"no profile named {args.name}; see 'tufota profile list'")
    if data.get("active") == args.name:
        data["active"] = None
    _profiles.save(data)
    print(f"removed profile {args.name}")
    return 0


def cmd_release_list(args: argparse.Namespace) -> int:
    if args.hardware:
        check_hardware_id(args.hardware)
    lines = operations(args).releases(args.hardware)
    if args.json:
        print_json({"lines": lines})
        return 0
    if not lines:
        print("no releases")
        return 0
    blocks = []
    for line in lines:
        head = (
            f"{line['hardware_id']}  (role {line['role']} v{line['role_version']}, signed by "
            f"{', '.join(k[:16] for k in line['signing_keys']) or 'nobody'})"
        )
        rows = [
            [
                r["version"],
                r["severity"],
                "" if r["cvss"] is None else f"{r['cvss']:.1f}",
                " ".join(r["fixes"]),
                r["released"],
            ]
            for r in line["releases"]
        ]
        blocks.append(
            head + "\n" + table(["version", "severity", "cvss", "fixes", "released"], rows)
        )
    print("\n\n".join(blocks))
    return 0


def cmd_release_show(args: argparse.Namespace) -> int:
    check_hardware_id(args.hardware_id)
    lines = operations(args).releases(args.hardware_id)
    found: dict[str, Any] | None = None
    for line in lines:
        for release in line["releases"]:
            if release["version"] == args.version:
                found = {
                    "hardware_id": line["hardware_id"],
                    "role": line["role"],
                    "signing_keys": line["signing_keys"],
                    **release,
                }
    if found is None:
        raise NotFoundError(f"hardware id {args.hardware_id} has no release {args.version}")
    if args.json:
        print_json(found)
        return 0
    for key in ("hardware_id", "version", "severity", "cvss", "fixes", "released", "notes",
                "target_path", "length", "sha256", "role", "signing_keys"):  # fmt: skip
        value = found[key]
        if isinstance(value, list):
            value = ", ".join(value) or "-"
        print(f"{key + ':':14} {'-' if value in (None, '') else value}")
    return 0
