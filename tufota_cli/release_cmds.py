"""``tufota release``: sign, verify, upload and (embedded shortcut) publish releases.

* ``add``: sign with the embedded repository's own release key and publish.
* ``sign``: the offline path; writes a bundle with the product line's next
  signed role, the firmware file and (for offline checks) the targets it was
  signed against. Current metadata comes from ``--repo`` or from
  ``--metadata`` verified against ``--root`` (see ``signing_cmds``).
* ``cosign``: a further release key holder adds a signature (threshold > 1).
* ``verify``: checks a bundle offline against a trusted root.
* ``upload``: ``POST /api/v1/releases`` with an uploader token; the server
  verifies again and publishes.
* ``export``: an *offline bundle* of one published release for a USB stick
  (``repo_server._export``), which ``tufota-agent install-bundle`` takes; the
  *upload bundle* of ``sign`` is for the server only.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tuf.api.metadata import Metadata, Targets

from repo_server import Repository, add_release_locally
from signing import (
    DeltaRelease,
    add_deltas,
    add_release,
    empty_delegated,
    find_product,
    load_root,
    read_bundle,
    sign_checked,
    verify_bundle,
    write_bundle,
)
from tufota_cli._client import ClientLimits
from tufota_cli._common import open_repo, passphrase_source
from tufota_cli._ops import remote_client
from tufota_cli.ops_cmds import add_release_reads
from tufota_cli.signing_cmds import (
    add_source_args,
    check_output,
    confirm,
    current_metadata,
    expiry_with,
    load_keys,
    load_signers,
    short,
    signature_count,
)
from tufota_core import (
    SEVERITIES,
    FirmwareInfo,
    InputError,
    NotFoundError,
    Version,
    check_hardware_id,
    format_time,
    is_delta_custom,
    product_role,
    utcnow,
)

TOKEN_ENV = "TUFOTA_TOKEN"  # noqa: S105 - the variable's name, not a secret


def _release_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="firmware image")
    p.add_argument("--hardware", required=True, help="hardware id (product line)")
    p.add_argument("--version", required=True, help="semantic version, newer than the last release")
    p.add_argument("--severity", default="none", choices=SEVERITIES)
    p.add_argument("--cvss", type=float, default=None, help="highest CVSS score this release fixes")
    p.add_argument("--fixes", default="", help="comma-separated CVE ids this release fixes")
    p.add_argument("--notes", default="", help="release notes")
    p.add_argument(
        "--delta-from",
        action="append",
        default=[],
        metavar="VERSION[=FILE]",
        help="also publish a delta from this earlier release (repeat); FILE is its image "
        "('release add' reads it from the repository when omitted)",
    )


def _delta_sources(specs: list[str], need_file: bool) -> list[tuple[str, Path | None]]:
    """``VERSION[=FILE]`` arguments as (version, path); a missing FILE is an error if needed."""
    sources: list[tuple[str, Path | None]] = []
    for spec in specs:
        version, sep, file = spec.partition("=")
        Version.parse(version)
        if sep and not file:
            raise InputError(f"--delta-from {spec}: give VERSION=FILE or VERSION")
        if not sep and need_file:
            raise InputError(
                f"--delta-from {spec}: give VERSION=FILE, the image of {version} on this machine"
            )
        if sep:
            _check_firmware(Path(file))
        if any(v == version for v, _ in sources):
            raise InputError(f"--delta-from {version} is given twice")
        sources.append((version, Path(file) if sep else None))
    return sources


def _latest(
    repo: Repository, info: FirmwareInfo, count: int, given: list[tuple[str, Path | None]]
) -> list[str]:
    """The ``count`` newest published releases of the product line, not already ``given``."""
    if count < 0:
        raise InputError(f"--delta-latest {count}: give a number of releases >= 0")
    if not count:
        return []
    role = repo.verified_state().roles.get(product_role(info.hardware_id))
    versions = {
        str(t.custom["version"])
        for t in (role.signed.targets.values() if role is not None else ())
        if isinstance(t.custom, dict) and "version" in t.custom and not is_delta_custom(t.custom)
    }
    newest = sorted(versions, key=Version.parse)[-count:]
    return [v for v in newest if all(v != g for g, _ in given)]


def _print_deltas(deltas: Sequence[DeltaRelease], length: int) -> None:
    for d in deltas:
        s = d.stats
        size = f"{s.delta_length} bytes ({s.ratio:.1%} of {length})"
        if d.target is None:
            print(f"  delta from {d.source_version}: {size}, saves too little; not published")
        else:
            print(
                f"  delta from {d.source_version}: {d.target.path}, {size}, "
                f"made in {s.seconds:.1f} s (process peak memory {s.peak_rss_mib:.0f} MiB)"
            )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    release = sub.add_parser("release", help="sign and publish firmware releases")
    rsub = release.add_subparsers(dest="release_command", required=True, metavar="COMMAND")
    p = rsub.add_parser(
        "add", help="sign a firmware file with the repository's release key and publish it"
    )
    _release_args(p)
    p.add_argument("--repo", required=True, help="repository directory")
    p.add_argument(
        "--signing-dir",
        default=None,
        help="the signing directory with the product line's keys (default: REPO-signing)",
    )
    p.add_argument(
        "--delta-latest",
        type=int,
        default=0,
        metavar="N",
        help="also publish deltas from the N latest published releases (images from REPO)",
    )
    p.set_defaults(func=cmd_add)

    p = rsub.add_parser("sign", help="sign a release offline into a bundle")
    _release_args(p)
    p.add_argument("--key", action="append", required=True, help="release key NAME.key (repeat)")
    p.add_argument("--expires", default=None, help="role validity, e.g. 180d")
    add_source_args(p)
    p.set_defaults(func=cmd_sign)

    p = rsub.add_parser("cosign", help="add a release key's signature to a bundle, in place")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--key", action="append", required=True)
    p.add_argument("--yes", action="store_true")
    p.set_defaults(func=cmd_cosign)

    p = rsub.add_parser(
        "verify",
        help="check an upload bundle offline against a trusted root (--root, or --repo's root)",
    )
    p.add_argument("bundle", metavar="BUNDLE")
    add_source_args(p, publish=False, asks=False)
    p.set_defaults(func=cmd_verify)

    p = rsub.add_parser(
        "export",
        help="write an OFFLINE bundle of one published release for devices without network "
        "(tufota-agent install-bundle); not the upload bundle 'release sign' writes",
    )
    p.add_argument("--repo", required=True, help="repository directory (or s3:// + --state-dir)")
    p.add_argument("--state-dir", default=None, help="for an s3:// repository")
    p.add_argument("--hardware", required=True, help="hardware id (product line)")
    p.add_argument("--version", required=True, help="the published release to export")
    p.add_argument("--out", required=True, help="FILE.tar.gz to write (must not exist)")
    p.set_defaults(func=cmd_export)

    p = rsub.add_parser("upload", help="send an upload bundle to the repository server")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument(
        "--server",
        default=None,
        help="server URL, e.g. https://ota.example.com (default: $TUFOTA_SERVER or the profile)",
    )
    p.add_argument("--token", default=None, help=f"uploader API token (default: ${TOKEN_ENV})")
    p.add_argument("--profile", default=None, help="a profile saved by 'tufota login'")
    p.add_argument("--ca-bundle", default=None, help="CA certificates to trust for HTTPS")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    p.set_defaults(func=cmd_upload)
    add_release_reads(rsub)  # list, show: local or remote (tufota_cli/ops_cmds.py)


def cmd_add(args: argparse.Namespace) -> int:
    firmware = Path(args.file)
    if not firmware.is_file():
        raise NotFoundError(f"firmware file {firmware} does not exist")
    if firmware.stat().st_size == 0:
        raise InputError(f"firmware file {firmware} is empty")
    repo = open_repo(args.repo, args.signing_dir)
    info = FirmwareInfo(
        hardware_id=args.hardware,
        version=args.version,
        severity=args.severity,
        cvss=args.cvss,
        fixes=tuple(f.strip() for f in args.fixes.split(",") if f.strip()),
        notes=args.notes,
    )
    sources = _delta_sources(args.delta_from, need_file=False)
    sources += [(v, None) for v in _latest(repo, info, args.delta_latest, sources)]
    result = add_release_locally(repo, firmware, info, passphrase_source(), sources)
    if result.new_product_line:
        print(
            f"new product line {args.hardware}: delegated firmware/{args.hardware}/*/* to its "
            f"own key in {repo.signing_dir}"
        )
    print(f"published {result.target_path}")
    print(f"  {result.length} bytes, sha256 {result.sha256}")
    _print_deltas(result.deltas, result.length)
    return 0


def _info_from_args(args: argparse.Namespace) -> FirmwareInfo:
    return FirmwareInfo(
        hardware_id=args.hardware,
        version=args.version,
        severity=args.severity,
        cvss=args.cvss,
        fixes=tuple(f.strip() for f in args.fixes.split(",") if f.strip()),
        notes=args.notes,
    )


def _check_firmware(path: Path) -> None:
    if not path.is_file():
        raise NotFoundError(f"firmware file {path} does not exist")
    if path.stat().st_size == 0:
        raise InputError(f"firmware file {path} is empty")


def cmd_sign(args: argparse.Namespace) -> int:
    # Deltas are written here and copied into the bundle; gone afterwards.
    with tempfile.TemporaryDirectory(prefix="tufota-delta-") as work:
        return _sign(args, Path(work))


def _sign(args: argparse.Namespace, work: Path) -> int:
    firmware = Path(args.file)
    _check_firmware(firmware)
    info = _info_from_args(args)
    out = check_output(args)
    if out is None:
        raise InputError(
            "release sign writes a bundle: give --out BUNDLE ('release add' publishes)"
        )
    keys = load_keys(args.key)
    current = current_metadata(args, info.hardware_id)
    name = product_role(info.hardware_id)
    delegation = find_product(current.targets, info.hardware_id)
    delegated_keys = current.targets.signed.delegations.keys  # type: ignore[union-attr]
    for key in keys:
        if key.keyid not in delegation.keyids:
            raise InputError(
                f"key {short(key.keyid)} ({key.path.name}) is not a release key of product line "
                f"{info.hardware_id}"
            )
    now = utcnow()
    expiry = expiry_with(args.expires, "product")
    product = current.role
    if product is None:
        product = empty_delegated(now, expiry.product)
        product.signed.version = 0  # add_release bumps it to 1
    else:
        product = Metadata[Targets].from_bytes(product.to_bytes())
    info = dataclasses.replace(info, released=format_time(now))
    product, target = add_release(product, firmware, info, now, expiry)
    sources = [(v, f) for v, f in _delta_sources(args.delta_from, True) if f is not None]
    deltas = add_deltas(product, target, firmware, sources, work)
    _print_deltas(deltas, target.length)
    confirm(
        [
            f"file:      {firmware} ({target.length} bytes)",
            f"sha256:    {target.hashes['sha256']}",
            f"target:    {target.path}",
            f"hardware:  {info.hardware_id}   version: {info.version}",
            f"security:  severity {info.severity}, cvss {'-' if info.cvss is None else info.cvss}, "
            f"fixes {', '.join(info.fixes) or '-'}",
            *([f"notes:     {info.notes}"] if info.notes else []),
            f"role:      {name} v{product.signed.version}, expires "
            f"{format_time(product.signed.expires)}",
            f"keys:      {', '.join(short(k.keyid) for k in keys)} "
            f"(threshold {delegation.threshold} of {len(delegation.keyids)})",
        ],
        args.yes,
    )
    for signer in load_signers(args.key, passphrase_source()):
        sign_checked(product, signer, delegated_keys[signer.public_key.keyid])
    have, need = signature_count(current.targets, name, product)
    blobs = [(target, firmware)] + [(d.target, d.path) for d in deltas if d.target is not None]
    write_bundle(out, roles={name: product}, blobs=blobs, context_targets=current.targets)
    carried = sum(d.target is not None for d in deltas)
    with_deltas = f" and {carried} delta(s)" if carried else ""
    print(f"wrote {out}: {target.path}{with_deltas}, {have} of {need} signature(s)")
    if have < need:
        print(
            f"the product line needs {need} signatures: each other release key holder runs "
            f"'tufota release cosign {out} --key K'",
        )
    return 0


def cmd_cosign(args: argparse.Namespace) -> int:
    path = Path(args.bundle)
    with read_bundle(path) as bundle:
        if len(bundle.roles) != 1 or bundle.context_targets is None:
            raise InputError(f"{path} is not a release bundle from 'tufota release sign'")
        [(name, role)] = bundle.roles.items()
        delegations = bundle.context_targets.signed.delegations
        if delegations is None or delegations.roles is None or name not in delegations.roles:
            raise InputError(f"{path}: {name} is not delegated by the bundle's targets")
        delegation = delegations.roles[name]
        lines = [f"{name} v{role.signed.version}, expires {format_time(role.signed.expires)}"]
        for target, _file in bundle.blobs:
            lines.append(
                f"  {target.path}  {target.length} bytes  sha256 {target.hashes['sha256']}"
            )
        confirm(lines, args.yes)
        for signer in load_signers(args.key, passphrase_source()):
            keyid = signer.public_key.keyid
            if keyid not in delegation.keyids:
                raise InputError(f"key {short(keyid)} is not a release key of {name}")
            sign_checked(role, signer, delegations.keys[keyid])
        have, need = signature_count(bundle.context_targets, name, role)
        write_bundle(
            path,
            roles=bundle.roles,
            blobs=bundle.blobs,
            context_targets=bundle.context_targets,
            overwrite=True,
        )
    print(f"{path}: {have} of {need} signature(s)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    if args.repo and args.metadata:
        raise InputError("give --repo REPO or --metadata SRC --root R, not both")
    extra = None
    if args.root:
        trusted = load_root(Path(args.root))
        if args.repo or args.metadata:
            extra = current_metadata(args, None).targets
    elif args.repo:
        # The repository's own newest root, which its chain already verified on publish.
        current = current_metadata(args, None)
        trusted, extra = current.root, current.targets
    else:
        raise InputError(
            "release verify needs the root you trust: --root ROOT.json (e.g. the signing "
            "directory's root.json) or --repo REPO"
        )
    with read_bundle(Path(args.bundle)) as bundle:
        check = verify_bundle(bundle, trusted, utcnow(), extra)
    for role, (have, need) in sorted(check.signatures.items()):
        print(f"{role}: {have} of {need} required signature(s) valid")
    for target, info in check.firmware:
        print(
            f"{target.path}: {target.length} bytes, sha256 {target.hashes['sha256']}, "
            f"version {info.version}, severity {info.severity}"
        )
    for target, delta in check.deltas:
        print(
            f"{target.path}: {target.length} bytes, delta from {delta.source_version} "
            f"to {delta.result_version} ({delta.delta_format})"
        )
    if check.root_version is not None:
        print(f"carries root v{check.root_version}")
    print(f"{args.bundle}: OK")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from repo_server import Repository, export_offline_bundle

    check_hardware_id(args.hardware)
    out = Path(args.out)
    repo = Repository.locate(args.repo, args.state_dir)
    result = export_offline_bundle(repo.storage, args.hardware, args.version, out)
    print(
        f"wrote offline bundle {result.path}: {result.target}, {len(result.members)} files, "
        f"{result.size} bytes"
    )
    print(f"on the device: tufota-agent install-bundle {result.path.name}")
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    path = Path(args.bundle)
    with read_bundle(path):  # refuse a malformed bundle before it leaves the machine
        pass
    # --server/--token, else TUFOTA_SERVER/TUFOTA_TOKEN, else the active profile (tufota login).
    client = remote_client(args, ClientLimits(upload_timeout=args.timeout))
    if not client.has_token:
        raise InputError(f"give an uploader token with --token, {TOKEN_ENV} or 'tufota login'")
    with path.open("rb") as body:
        status, answer = client.request(
            "POST", "/api/v1/releases", role="uploader", data=body, ok=(200, 201)
        )
    published = isinstance(answer, dict) and answer.get("published", True)
    message = answer.get("message") if isinstance(answer, dict) else None
    if status == 201 and published:
        print(message or f"published {path.name}")
    else:
        print(message or f"{path.name} was already published; nothing changed")
    return 0
