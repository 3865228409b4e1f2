"""``tufota key|root|rollouts|product|expiry``: keys, root, online key rotation, product lines.

Where current metadata comes from (every command that changes metadata):

* ``--repo REPO``: the embedded repository directory; the result is published
  to it directly unless ``--out BUNDLE`` asks for a bundle instead.
* ``--metadata SRC --root ROOT.json``: a server URL or a directory copy of its
  ``metadata/``, verified by ``tuf.ngclient`` from the trusted root; the result
  is always a bundle (``--out``) for ``tufota release upload``.

Every command that signs prints what it will sign and asks for confirmation
unless ``--yes``; nothing is written before every check passed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import Metadata, Root, Targets, Timestamp

from repo_server import OnlineSigners, Publisher, Repository
from signing import (
    KEY_TYPES,
    CurrentMetadata,
    Expiry,
    KeyFile,
    RootProposal,
    add_product_line,
    change_product_keys,
    empty_delegated,
    fetch_current,
    find_product,
    finished_root,
    generate_key,
    import_kms_key,
    load_root,
    load_signer,
    merge_proposals,
    product_key_name,
    product_lines,
    proposal_status,
    propose_root,
    propose_rotation,
    refuse_online_keys,
    resign_role,
    resolve_key_file,
    sign_checked,
    sign_proposal,
    write_bundle,
)
from tufota_cli._common import open_repo, passphrase_source, print_json, table
from tufota_cli.rollout_cmds import parse_duration
from tufota_core import (
    ROLLOUTS_ROLE,
    ConflictError,
    InputError,
    NotFoundError,
    RepositoryError,
    VerificationError,
    check_hardware_id,
    format_time,
    product_role,
    rollout_target_path,
    utcnow,
)

# -- shared helpers (release_cmds uses them too) --------------------------------------


def add_source_args(p: argparse.ArgumentParser, publish: bool = True, asks: bool = True) -> None:
    """``--repo`` / ``--metadata`` + ``--root`` / ``--out`` (see the module docstring).

    ``publish``: the command can write (``--out``); ``asks``: it asks before
    signing (``--yes``).
    """
    p.add_argument("--repo", default=None, help="embedded repository directory")
    p.add_argument(
        "--signing-dir",
        default=None,
        help="with --repo: the signing directory (default: REPO-signing beside REPO)",
    )
    p.add_argument(
        "--metadata",
        default=None,
        help="server URL or directory of its metadata/, verified against --root",
    )
    p.add_argument("--root", default=None, help="trusted root.json for --metadata")
    if publish:
        p.add_argument(
            "--out", default=None, help="write a bundle here (default with --repo: publish)"
        )
    if asks:
        p.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def current_metadata(args: argparse.Namespace, hardware_id: str | None) -> CurrentMetadata:
    """Current metadata from ``--repo`` or ``--metadata``/``--root``.

    Raises:
        InputError: neither or both sources, or ``--metadata`` without ``--root``.
    """
    if bool(args.repo) == bool(args.metadata):
        raise InputError("give the current metadata with --repo REPO or --metadata SRC --root R")
    if args.repo:
        state = open_repo(args.repo, args.signing_dir).verified_state()
        role = state.roles.get(product_role(hardware_id)) if hardware_id else None
        return CurrentMetadata(state.root, state.targets, role)
    if not args.root:
        raise InputError("--metadata needs --root ROOT.json, the root you trust")
    trusted = load_root(Path(args.root))
    return fetch_current(args.metadata, trusted.to_bytes(), hardware_id)


def check_output(args: argparse.Namespace) -> Path | None:
    """The bundle path to write, or None to publish into ``--repo``.

    Raises:
        InputError: ``--metadata`` without ``--out``, or ``--out`` exists already.
    """
    if args.out is None:
        if not args.repo:
            raise InputError(
                "--metadata needs --out BUNDLE (upload it with 'tufota release upload')"
            )
        return None
    out = Path(args.out)
    if out.exists():
        raise InputError(f"{out} already exists; refusing to overwrite it")
    if not out.parent.is_dir():
        raise NotFoundError(f"directory {out.parent} does not exist")
    return out


def confirm(lines: Sequence[str], yes: bool, question: str = "Sign this?") -> None:
    """Print what will be signed; ask unless ``yes``.

    Raises:
        InputError: declined, or no terminal to ask on and no ``--yes``.
    """
    print("\n".join(lines), flush=True)
    if yes:
        return
    if not sys.stdin.isatty():
        raise InputError("refusing to sign without confirmation: pass --yes or run on a terminal")
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise InputError("not confirmed; nothing was signed")


def load_keys(paths: Sequence[str]) -> list[KeyFile]:
    """Public key files (``NAME.pub``, or ``NAME.key`` with ``NAME.pub`` beside it)."""
    return [resolve_key_file(Path(p)) for p in paths]


def load_signers(paths: Sequence[str], passphrase: Callable[[], str]) -> list[Signer]:
    """A signer per key file; asks the passphrase once, only for encrypted key files."""
    return [load_signer(k, passphrase) for k in load_keys(paths)]


def short(keyid: str) -> str:
    return keyid[:12]


def expiry_with(period: str | None, field: str) -> Expiry:
    """The default expiry periods with ``field`` overridden by ``period`` (e.g. ``180d``)."""
    if period is None:
        return Expiry()
    seconds = parse_duration(period)
    if seconds <= 0:
        raise InputError(f"expiry period {period!r} must be positive")
    return replace(Expiry(), **{field: timedelta(seconds=seconds)})


def signature_count(delegator: Metadata[Any], role: str, md: Metadata[Targets]) -> tuple[int, int]:
    result = delegator.signed.get_verification_result(role, md.signed_bytes, md.signatures)
    return len(result.signed), result.threshold


# -- key --------------------------------------------------------------------------------


def cmd_key_generate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not out.parent.is_dir():
        raise NotFoundError(f"directory {out.parent} does not exist")
    secret = passphrase_source(confirm=True).for_key(out.with_suffix(".key"))
    key = generate_key(out, secret, args.type)
    print(f"wrote {out.with_suffix('.key')} (encrypted) and {key.path}")
    print(f"key id:     {key.keyid}")
    print(f"signer URI: {key.uri}")
    return 0


def cmd_key_import_kms(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not out.parent.is_dir():
        raise NotFoundError(f"directory {out.parent} does not exist")
    key = import_kms_key(args.key_id, out, args.scheme)
    print(f"wrote {key.path}")
    print(f"key id:     {key.keyid}")
    print(f"signer URI: {key.uri}")
    return 0


def cmd_key_show(args: argparse.Namespace) -> int:
    key = resolve_key_file(Path(args.file))
    print(f"key id:     {key.keyid}")
    print(f"type:       {key.key.keytype} ({key.key.scheme})")
    print(f"signer URI: {key.uri or '(none: public key only)'}")
    return 0


# -- root -----------------------------------------------------------------------------


def _describe(proposal: RootProposal) -> list[str]:
    root = proposal.root.signed
    lines = [f"root v{root.version}, expires {format_time(root.expires)}"]
    rows = [
        [name, f"{role.threshold} of {len(role.keyids)}", " ".join(short(k) for k in role.keyids)]
        for name, role in sorted(root.roles.items())
    ]
    lines.append(table(["role", "threshold", "keys"], rows))
    return lines


def cmd_root_init(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        raise InputError(f"{out} already exists; refusing to overwrite it")
    root_keys = [k.key for k in load_keys(args.key)]
    targets_keys = [k.key for k in load_keys(args.targets_key or args.key)]
    online = resolve_key_file(Path(args.online_key)).key
    proposal = propose_root(
        root_keys,
        args.threshold,
        targets_keys,
        args.targets_threshold,
        online,
        utcnow(),
        expiry_with(args.expires, "root"),
    )
    proposal.save(out)
    print("\n".join(_describe(proposal)))
    print(
        f"wrote unsigned proposal {out}; each root key holder runs: tufota root sign {out} --key K"
    )
    return 0


def cmd_root_rotate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        raise InputError(f"{out} already exists; refusing to overwrite it")
    if bool(args.repo) == bool(args.current):
        raise InputError("give the current root with --repo REPO or --current ROOT.json")
    state = open_repo(args.repo).verified_state() if args.repo else None
    current = state.root if state is not None else load_root(Path(args.current))

    def keys(paths: list[str] | None, role: str) -> list[Key] | None:
        if not paths:
            return None
        found: list[Key] = [k.key for k in load_keys(paths)]
        refuse_online_keys(
            [k.keyid for k in found], current, state.targets if state else None, role
        )
        return found

    proposal = propose_rotation(
        current,
        utcnow(),
        expiry_with(args.expires, "root"),
        root_keys=keys(args.key, "root"),
        threshold=args.threshold,
        targets_keys=keys(args.targets_key, "targets"),
        targets_threshold=args.targets_threshold,
        online_key=None if not args.online_key else resolve_key_file(Path(args.online_key)).key,
    )
    proposal.save(out)
    print("\n".join(_describe(proposal)))
    print(
        f"wrote unsigned proposal {out}: it needs the threshold of root v{current.signed.version} "
        f"and its own; run: tufota root sign {out} --key K"
    )
    return 0


def cmd_root_sign(args: argparse.Namespace) -> int:
    path = Path(args.proposal)
    proposal = RootProposal.load(path)
    confirm(_describe(proposal), args.yes, "Sign this root?")
    for signer in load_signers(args.key, passphrase_source()):
        sign_proposal(proposal, signer)
        print(f"signed with key {short(signer.public_key.keyid)}")
    proposal.save(path)
    _print_status(proposal)
    return 0


def cmd_root_merge(args: argparse.Namespace) -> int:
    out = Path(args.out)
    proposals = [RootProposal.load(Path(p)) for p in args.copies]
    merged = merge_proposals(proposals)
    merged.save(out)
    print(f"merged {len(merged.root.signatures)} valid signature(s) into {out}")
    _print_status(merged)
    return 0


def _print_status(proposal: RootProposal) -> bool:
    status = proposal_status(proposal, utcnow())
    for group in status.groups:
        rows = [
            [
                short(k.keyid),
                "yes" if k.present else "no",
                "valid" if k.valid else ("INVALID" if k.present else "-"),
            ]
            for k in group.keys
        ]
        print(f"{group.name}: {group.valid} of {group.threshold} required signatures")
        print(table(["key", "signed", "signature"], rows))
    for problem in status.problems:
        print(f"problem: {problem}")
    print(
        "complete: ready to publish"
        if status.complete
        else "incomplete: more signatures are needed"
    )
    return status.complete


def cmd_root_status(args: argparse.Namespace) -> int:
    proposal = RootProposal.load(Path(args.proposal))
    if args.json:
        status = proposal_status(proposal, utcnow())
        print_json(
            {
                "version": status.version,
                "expires": format_time(status.expires),
                "roles": {
                    n: {"threshold": t, "keyids": list(k)} for n, (t, k) in status.roles.items()
                },
                "signatures": [
                    {
                        "group": g.name,
                        "threshold": g.threshold,
                        "valid": g.valid,
                        "keys": [
                            {"keyid": k.keyid, "present": k.present, "valid": k.valid}
                            for k in g.keys
                        ],
                    }
                    for g in status.groups
                ],
                "problems": list(status.problems),
                "complete": status.complete,
            }
        )
        complete = status.complete
    else:
        print("\n".join(_describe(proposal)))
        complete = _print_status(proposal)
    return 0 if complete or not args.check else 1


def cmd_root_publish(args: argparse.Namespace) -> int:
    proposal = RootProposal.load(Path(args.proposal))
    if bool(args.repo) == bool(args.out):
        raise InputError("give --repo REPO (publish) or --out BUNDLE (for upload)")
    if args.online_key and not args.repo:
        raise InputError("--online-key installs the key in the server's state: give --repo REPO")
    if args.repo:
        repo = open_repo(args.repo)
        current = repo.verified_state().root
        if args.online_key and proposal.root.to_bytes() == current.to_bytes():
            # Published by an earlier run that stopped before switching the key: finish it.
            return _publish_with_online_key(repo, current, Path(args.online_key))
        if proposal.previous is not None and proposal.previous.to_bytes() != current.to_bytes():
            raise ConflictError(
                f"the proposal replaces a different root than the repository's v"
                f"{current.signed.version}"
            )
        root = finished_root(RootProposal(proposal.root, current), utcnow())
        if args.online_key:
            return _publish_with_online_key(repo, root, Path(args.online_key))
        _check_online_key(repo, root)
        if repo.publisher(passphrase_source()).publish_root(root):
            print(f"published root v{root.signed.version}; devices follow it on their next poll")
        else:
            print(f"root v{root.signed.version} was already published")
        return 0
    root = finished_root(proposal, utcnow())
    out = Path(args.out)
    write_bundle(out, root=root)
    print(f"wrote {out} with root v{root.signed.version}; upload it with: tufota release upload")
    return 0


def _check_online_key(repo: Repository, root: Metadata[Root]) -> None:
    online = repo.key(repo.config.online_key).keyid
    for role in ("snapshot", "timestamp"):
        if online not in root.signed.roles[role].keyids:
            raise ConflictError(
                f"the new root does not list this repository's online key {short(online)} for "
                f"{role}; the server could not sign {role} any more (to rotate it, pass the "
                "new key the root lists: --online-key NEW.pub)"
            )


def _proven_signer(key: KeyFile, passphrase: Callable[[], str]) -> Signer:
    """``key``'s signer, proven to make signatures that ``key`` verifies (nothing written)."""
    signer = load_signer(key, passphrase)
    sign_checked(Metadata(Timestamp()), signer, key.key)
    return signer


def _refuse_offline_key(keyid: str, root: Metadata[Root], targets: Metadata[Targets]) -> None:
    """Refuse a new online key that already signs an offline role (root, targets, a line).

    Raises:
        InputError: the key is one of those roles' keys.
    """
    roles = [name for name in ("root", "targets") if keyid in root.signed.roles[name].keyids]
    delegations = targets.signed.delegations
    for name, role in (delegations.roles or {}).items() if delegations else []:
        if name != ROLLOUTS_ROLE and keyid in role.keyids:
            roles.append(name)
    if roles:
        raise InputError(
            f"key {short(keyid)} signs {', '.join(roles)}, which must stay offline: an online "
            "key lives on the server (generate a new key)"
        )


def _install_and_publish(
    repo: Repository, key: KeyFile, role: str, publish: Callable[[], bool]
) -> bool:
    """Copy ``key`` into the server's state, ``publish``, then switch ``tufota.json``.

    The publisher verifies everything before its first write and writes
    nothing when it refuses; the key files this call copied are then removed,
    so a refusal changes nothing. A crash after the publish and before the
    configuration switch is completed by running the same command again.
    """
    created = repo.install_online_key(key)
    try:
        published = publish()
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    retired = repo.switch_online_key(role, key.path.stem)
    print(f"the server now signs with {repo.keys_dir / key.path.stem} ({role} in tufota.json)")
    if retired is not None:
        print(f"removed the replaced private key {retired}")
    return published


def _publish_with_online_key(repo: Repository, root: Metadata[Root], path: Path) -> int:
    """``root publish --online-key``: rotate the snapshot/timestamp key through root.

    Every check before the first write: the root lists the new key for both
    roles, the key's name fits the server's state, its signer loads (its own
    passphrase) and signs, and the rollouts key still loads.
    """
    key = resolve_key_file(path)
    for role in ("snapshot", "timestamp"):
        if key.keyid not in root.signed.roles[role].keyids:
            raise ConflictError(
                f"root v{root.signed.version} does not list {path} ({short(key.keyid)}) for "
                f"{role}; rotate to it first (tufota root rotate --online-key {path} ...)"
            )
    _refuse_offline_key(key.keyid, root, repo.state().targets)
    repo.check_new_online_key(key)
    passphrase = passphrase_source()
    signers = OnlineSigners(
        snapshot_timestamp=_proven_signer(key, passphrase),
        rollouts=load_signer(repo.key(repo.config.rollouts_key), passphrase),
    )
    publisher = Publisher(repo.storage, lambda: signers, repo.expiry)
    if _install_and_publish(repo, key, "online_key", lambda: publisher.publish_root(root)):
        print(
            f"published root v{root.signed.version} with snapshot and timestamp signed by the new "
            f"online key {short(key.keyid)}; devices follow it on their next poll"
        )
    else:
        print(f"root v{root.signed.version} was already published")
    return 0


# -- rollouts ---------------------------------------------------------------------------


def _server_documents(rollouts: Metadata[Targets]) -> list[str]:
    """Drop every target of the online role the server could not have written; name them."""
    dropped = []
    for path in list(rollouts.signed.targets):
        hw = path.removeprefix("rollouts/").removesuffix(".json")
        try:
            ours = rollout_target_path(hw) == path
        except InputError:
            ours = False
        if not ours:
            del rollouts.signed.targets[path]
            dropped.append(path)
    return dropped


def cmd_rollouts_rotate(args: argparse.Namespace) -> int:
    repo = open_repo(args.repo, args.signing_dir)
    state = repo.verified_state()
    key = resolve_key_file(Path(args.key))
    delegations = state.targets.signed.delegations
    if delegations is None or delegations.roles is None or ROLLOUTS_ROLE not in delegations.roles:
        raise RepositoryError(f"targets v{state.targets.signed.version} delegates no rollouts role")
    old_ids = list(delegations.roles[ROLLOUTS_ROLE].keyids)
    if key.keyid in old_ids:
        raise InputError(f"{args.key} ({short(key.keyid)}) already signs the rollouts role")
    current_rollouts = state.roles.get(ROLLOUTS_ROLE)
    if current_rollouts is None:
        raise RepositoryError("the repository publishes no rollouts role")
    _refuse_offline_key(key.keyid, state.root, state.targets)
    repo.check_new_online_key(key)
    now = utcnow()
    # Every key and signer before the first write: a refused command writes nothing.
    passphrase = passphrase_source()
    targets_signers = _targets_signers(args, passphrase)
    signers = OnlineSigners(
        snapshot_timestamp=load_signer(repo.key(repo.config.online_key), passphrase),
        rollouts=_proven_signer(key, passphrase),
    )
    targets = Metadata[Targets].from_bytes(state.targets.to_bytes())
    targets.signed.add_key(key.key, ROLLOUTS_ROLE)
    for keyid in old_ids:
        targets.signed.revoke_key(keyid, ROLLOUTS_ROLE)
    targets.signed.version += 1
    targets.signed.expires = now + expiry_with(args.expires, "targets").targets
    targets.signatures.clear()
    rollouts = Metadata[Targets].from_bytes(current_rollouts.to_bytes())
    dropped = _server_documents(rollouts)
    rollouts.signed.version += 1
    rollouts.signed.expires = now + repo.expiry.rollouts
    rollouts.signatures.clear()
    lines = [
        f"targets v{targets.signed.version}: delegate rollouts/* to {short(key.keyid)} "
        f"instead of {', '.join(short(k) for k in old_ids)}",
        f"rollouts v{rollouts.signed.version}: its {len(rollouts.signed.targets)} document(s) "
        "re-signed with the new key",
    ]
    if dropped:
        lines.append(f"dropped from rollouts (the server never wrote them): {', '.join(dropped)}")
    confirm(lines, args.yes)
    _sign_targets(CurrentMetadata(state.root, state.targets, None), targets, targets_signers)
    sign_checked(rollouts, signers.rollouts, key.key)
    publisher = Publisher(repo.storage, lambda: signers, repo.expiry)
    _install_and_publish(
        repo, key, "rollouts_key", lambda: publisher.publish({ROLLOUTS_ROLE: rollouts}, [], targets)
    )
    print(
        f"published targets v{targets.signed.version} and rollouts v{rollouts.signed.version}: "
        f"signatures of {', '.join(short(k) for k in old_ids)} no longer count for rollouts"
    )
    return 0


# -- product ---------------------------------------------------------------------------


def _targets_signers(args: argparse.Namespace, passphrase: Callable[[], str]) -> list[Signer]:
    paths = list(args.targets_key or [])
    if not paths and args.repo:
        repo = open_repo(args.repo, args.signing_dir)
        paths = [str(repo.key(k).path) for k in repo.config.targets_keys]
    if not paths:
        raise InputError("give the targets key(s) that sign the delegation with --targets-key")
    return load_signers(paths, passphrase)


def _finish(
    args: argparse.Namespace,
    out: Path | None,
    targets: Metadata[Targets] | None,
    roles: dict[str, Metadata[Targets]],
    context: Metadata[Targets] | None = None,
) -> None:
    if out is not None:
        write_bundle(out, roles=roles, targets=targets, context_targets=context)
        print(f"wrote {out}; upload it with: tufota release upload {out} --server URL")
        return
    repo = open_repo(args.repo, args.signing_dir)
    repo.publisher(passphrase_source()).publish(roles, [], targets)
    print(f"published to {repo.path}")


def _sign_targets(
    current: CurrentMetadata, targets: Metadata[Targets], signers: list[Signer]
) -> None:
    root = current.root.signed
    allowed = set(root.roles["targets"].keyids)
    for signer in signers:
        keyid = signer.public_key.keyid
        if keyid not in allowed:
            raise InputError(f"key {short(keyid)} is not a targets key of root v{root.version}")
        sign_checked(targets, signer, root.keys[keyid])
    have, need = signature_count(current.root, "targets", targets)
    if have < need:
        raise VerificationError(f"targets needs {need} signatures; {have} given")


def _new_line_key(args: argparse.Namespace, hw: str, targets: Metadata[Targets]) -> Path:
    """Where ``product add`` without ``--key`` writes the line's own key (``release-<hw>``).

    Raises:
        InputError: the file exists and is already a key of some delegation.
    """
    if args.key_dir:
        directory = Path(args.key_dir)
    elif args.repo:
        directory = open_repo(args.repo, args.signing_dir).signing_dir
    else:
        directory = Path.cwd()
    if not directory.is_dir():
        raise NotFoundError(f"key directory {directory} does not exist (give --key-dir)")
    out = directory / product_key_name(hw)
    pub = out.with_suffix(".pub")
    if pub.exists():
        existing = resolve_key_file(pub)
        if _lines_of_key(targets, existing.keyid):
            raise InputError(
                f"{pub} already exists and signs for another product line; pass --key on "
                "purpose to share it, or --key-dir for a fresh one"
            )
    return out


def _lines_of_key(targets: Metadata[Targets], keyid: str) -> list[str]:
    """Product lines whose delegation lists ``keyid``."""
    return [hw for hw in product_lines(targets) if keyid in find_product(targets, hw).keyids]


def cmd_product_add(args: argparse.Namespace) -> int:
    hw = check_hardware_id(args.hardware)
    out = check_output(args)
    current = current_metadata(args, None)
    if not args.key and args.threshold != 1:
        raise InputError(f"--threshold {args.threshold} needs that many keys: give each with --key")
    keys = load_keys(args.key) if args.key else []
    refuse_online_keys([k.keyid for k in keys], current.root, current.targets, f"product line {hw}")
    new_key = None if keys else _new_line_key(args, hw, current.targets)
    shared = {
        k.path.name: lines for k in keys if (lines := _lines_of_key(current.targets, k.keyid))
    }
    now = utcnow()
    expiry = expiry_with(args.expires, "targets")
    # Every key and signer before the first write: a refused command writes nothing.
    passphrase = passphrase_source()
    targets_signers = _targets_signers(args, passphrase)
    allowed = current.root.signed.roles["targets"].keyids
    for signer in targets_signers:  # checked before a new line key is made
        if signer.public_key.keyid not in allowed:
            raise InputError(
                f"key {short(signer.public_key.keyid)} is not a targets key of root "
                f"v{current.root.signed.version}"
            )
    try:
        product_signers = [load_signer(k, passphrase) for k in keys]
    except NotFoundError as e:
        raise NotFoundError(
            f"{e}: product add signs the line's empty first role with the line's own key(s), "
            "so that its first release can be signed from the published metadata"
        ) from e
    described = ", ".join(short(k.keyid) for k in keys) if keys else "a NEW key"
    lines = [
        f"targets v{current.targets.signed.version + 1}: delegate firmware/{hw}/*/* "
        f"(terminating) to {args.threshold} of {len(keys) or 1} key(s): {described}",
        f"{product_role(hw)} v1: empty, signed by the product line's key(s), so the line's "
        "first release can be signed from the published metadata",
    ]
    for name, others in shared.items():
        lines.append(
            f"note: {name} is shared with product line(s) {', '.join(others)}, as given by --key"
        )
    confirm(lines, args.yes)
    if new_key is not None:
        if new_key.with_suffix(".pub").exists():
            made = resolve_key_file(new_key.with_suffix(".pub"))
        else:
            made = generate_key(new_key, passphrase.for_key(new_key.with_suffix(".key")))
        print(
            f"new key for product line {hw}: {new_key.with_suffix('.key')} (id {short(made.keyid)})"
        )
        keys = [made]
        product_signers = [load_signer(made, passphrase)]
    targets = Metadata[Targets].from_bytes(current.targets.to_bytes())
    targets = add_product_line(targets, hw, [k.key for k in keys], args.threshold, now, expiry)
    _sign_targets(current, targets, targets_signers)
    name = product_role(hw)
    role = empty_delegated(now, expiry_with(args.role_expires, "product").product)
    delegated = targets.signed.delegations.keys  # type: ignore[union-attr]
    for signer in product_signers:
        sign_checked(role, signer, delegated[signer.public_key.keyid])
    have, need = signature_count(targets, name, role)
    if have < need:
        raise VerificationError(
            f"{name} needs {need} signatures to be published; the --key files gave {have}"
        )
    _finish(args, out, targets, {name: role})
    return 0


def _key_ids(values: Sequence[str]) -> list[str]:
    ids = []
    for value in values:
        path = Path(value)
        ids.append(resolve_key_file(path).keyid if path.suffix in (".pub", ".key") else value)
    return ids


def cmd_product_change(args: argparse.Namespace) -> int:
    hw = check_hardware_id(args.hardware)
    revoke = args.product_command == "revoke"
    if revoke and not args.remove_key:
        raise InputError("name the key(s) to revoke with --remove-key KEY.pub or a key id")
    add = [] if revoke else [k.key for k in load_keys(args.add_key or [])]
    out = check_output(args)
    current = current_metadata(args, hw)
    refuse_online_keys([k.keyid for k in add], current.root, current.targets, f"product line {hw}")
    now = utcnow()
    expiry = expiry_with(args.expires, "targets")
    targets = change_product_keys(
        current.targets,
        hw,
        now,
        expiry,
        add=add,
        remove=_key_ids(args.remove_key or []),
        threshold=args.threshold,
    )
    name = product_role(hw)
    delegation = targets.signed.delegations.roles[name]  # type: ignore[union-attr,index]
    lines = [
        f"targets v{targets.signed.version}: product line {hw} keys become "
        f"{delegation.threshold} of {', '.join(short(k) for k in delegation.keyids)}",
    ]
    roles: dict[str, Metadata[Targets]] = {}
    product_signers: list[Signer] = []
    if current.role is not None and args.key:
        role = resign_role(current.role, now, expiry_with(args.role_expires, "product"))
        roles[name] = role
        lines.append(f"{name} v{role.signed.version}: re-signed with the new keys")
    if not roles and current.role is not None:
        have, need = signature_count(targets, name, current.role)
        if have < need:  # publishing would strand the line: refuse before asking or signing
            raise InputError(
                f"after this change {name} v{current.role.signed.version} keeps {have} valid "
                f"signature(s) of {need}, so devices would refuse {hw} firmware: also give "
                f"--key with the line's remaining or new key(s) to re-sign it"
            )
    confirm(lines, args.yes)
    passphrase = passphrase_source()
    _sign_targets(current, targets, _targets_signers(args, passphrase))
    if roles:
        product_signers = load_signers(args.key, passphrase)
        for signer in product_signers:
            keyid = signer.public_key.keyid
            if keyid not in delegation.keyids:
                raise InputError(f"key {short(keyid)} is not a key of product line {hw} any more")
            sign_checked(roles[name], signer, targets.signed.delegations.keys[keyid])  # type: ignore[union-attr]
        have, need = signature_count(targets, name, roles[name])
        if have < need:
            raise VerificationError(f"{name} needs {need} signatures; {have} given")
    _finish(args, out, targets, roles)
    return 0


def cmd_product_list(args: argparse.Namespace) -> int:
    current = current_metadata(args, None)
    delegations = current.targets.signed.delegations
    rows = []
    for name, role in (delegations.roles or {}).items() if delegations else []:
        keys = " ".join(short(k) for k in role.keyids)
        threshold = f"{role.threshold} of {len(role.keyids)}"
        rows.append([name, " ".join(role.paths or []), threshold, keys])
    print(table(["role", "paths", "threshold", "keys"], rows))
    return 0


# -- expiry ----------------------------------------------------------------------------

# Renewed automatically by the running server; only a lapse is a problem.
ONLINE_ROLES = ("timestamp", "snapshot", "rollouts")


@dataclass(frozen=True)
class ExpiryRow:
    role: str
    expires: str
    days_left: float
    online: bool
    due: bool


def expiry_rows(repo: Repository, within: timedelta) -> list[ExpiryRow]:
    """Each published role's expiry; offline roles are due when they expire within ``within``."""
    now = utcnow()
    rows = []
    for role, when in sorted(repo.publisher(passphrase_source()).expiries().items()):
        left = when - now
        online = role in ONLINE_ROLES
        due = left <= timedelta(0) if online else left <= within
        rows.append(ExpiryRow(role, format_time(when), left.total_seconds() / 86400, online, due))
    return rows


def cmd_expiry_check(args: argparse.Namespace) -> int:
    within = timedelta(seconds=parse_duration(args.within))
    rows = expiry_rows(open_repo(args.repo), within)
    due = [r for r in rows if r.due]
    if args.json:
        print_json(
            {
                "within_days": within.total_seconds() / 86400,
                "roles": [r.__dict__ for r in rows],
                "due": [r.role for r in due],
            }
        )
    else:
        print(
            table(
                ["role", "expires", "days left", "renewed by", "status"],
                [
                    [
                        r.role,
                        r.expires,
                        f"{r.days_left:.1f}",
                        "server" if r.online else "offline keys",
                        "DUE" if r.due else "ok",
                    ]
                    for r in rows
                ],
            )
        )
        if due:
            print(
                f"{len(due)} role(s) expire within {args.within}: {', '.join(r.role for r in due)}"
            )
    return 1 if due else 0


# -- registration -----------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the key, root, rollouts, product and expiry command groups."""
    key = sub.add_parser("key", help="create and import signing keys")
    ksub = key.add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    p = ksub.add_parser("generate", help="write NAME.key (encrypted) and NAME.pub")
    p.add_argument("--out", required=True, help="path without suffix, e.g. keys/alice-root")
    p.add_argument("--type", default="ed25519", choices=KEY_TYPES)
    p.set_defaults(func=cmd_key_generate)
    p = ksub.add_parser("import-kms", help="write NAME.pub for an AWS KMS key (awskms: URI)")
    p.add_argument("key_id", metavar="KEY_ID", help="KMS key id, ARN or alias/NAME")
    p.add_argument("--out", required=True, help="path without suffix")
    p.add_argument("--scheme", default=None, help="securesystemslib scheme (default: from KMS)")
    p.set_defaults(func=cmd_key_import_kms)
    p = ksub.add_parser("show", help="print a key file's id, type and signer URI")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_key_show)

    root = sub.add_parser("root", help="the multi-party root ceremony and root rotation")
    rsub = root.add_subparsers(dest="root_command", required=True, metavar="COMMAND")
    p = rsub.add_parser("init", help="write an unsigned root v1 proposal")
    p.add_argument("--threshold", type=int, required=True, help="root signatures required")
    p.add_argument("--key", action="append", required=True, help="root key NAME.pub (repeat)")
    p.add_argument("--targets-key", action="append", help="targets key (default: the root keys)")
    p.add_argument("--targets-threshold", type=int, default=1)
    p.add_argument("--online-key", required=True, help="the server's snapshot/timestamp key")
    p.add_argument("--expires", default=None, help="validity, e.g. 365d")
    p.add_argument("--out", required=True, help="proposal file to write")
    p.set_defaults(func=cmd_root_init)
    p = rsub.add_parser("rotate", help="write an unsigned proposal for the next root version")
    p.add_argument("--repo", default=None, help="take the current root from this repository")
    p.add_argument("--current", default=None, help="or from this root.json")
    p.add_argument("--threshold", type=int, default=None)
    p.add_argument("--key", action="append", help="new root key set (repeat; default: unchanged)")
    p.add_argument("--targets-key", action="append", help="new targets key set")
    p.add_argument("--targets-threshold", type=int, default=None)
    p.add_argument("--online-key", default=None)
    p.add_argument("--expires", default=None, help="validity, e.g. 365d")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_root_rotate)
    p = rsub.add_parser("sign", help="add your signature to a proposal, in place")
    p.add_argument("proposal", metavar="PROPOSAL")
    p.add_argument("--key", action="append", required=True, help="NAME.key or NAME.pub (URI)")
    p.add_argument("--yes", action="store_true")
    p.set_defaults(func=cmd_root_sign)
    p = rsub.add_parser("merge", help="combine the signatures of copies of one proposal")
    p.add_argument("copies", nargs="+", metavar="COPY")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_root_merge)
    p = rsub.add_parser("status", help="roles, keys, thresholds, expiry and signatures")
    p.add_argument("proposal", metavar="PROPOSAL")
    p.add_argument("--json", action="store_true")
    p.add_argument("--check", action="store_true", help="exit 1 unless complete")
    p.set_defaults(func=cmd_root_status)
    p = rsub.add_parser("publish", help="publish a complete proposal (or bundle it for upload)")
    p.add_argument("proposal", metavar="PROPOSAL")
    p.add_argument("--repo", default=None)
    p.add_argument("--out", default=None, help="write a bundle instead")
    p.add_argument(
        "--online-key",
        default=None,
        help="NEW.pub (or NEW.key) the new root lists for snapshot and timestamp: installed "
        "in the server's state, which then signs with it (a stolen online key)",
    )
    p.set_defaults(func=cmd_root_publish)

    rollouts = sub.add_parser("rollouts", help="the online rollouts role's key")
    osub = rollouts.add_subparsers(dest="rollouts_command", required=True, metavar="COMMAND")
    p = osub.add_parser(
        "rotate",
        help="delegate rollouts/* to a new key (targets re-signed offline), install it, publish",
    )
    p.add_argument("--repo", required=True, help="embedded repository (or state) directory")
    p.add_argument("--signing-dir", default=None, help="default: REPO-signing beside REPO")
    p.add_argument("--key", required=True, help="the new rollouts key NEW.pub (or NEW.key)")
    p.add_argument("--targets-key", action="append", help="targets key that signs (repeat)")
    p.add_argument("--expires", default=None, help="targets validity, e.g. 365d")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_rollouts_rotate)

    product = sub.add_parser("product", help="product lines: delegations to release keys")
    psub = product.add_subparsers(dest="product_command", required=True, metavar="COMMAND")
    p = psub.add_parser(
        "add",
        help="delegate firmware/HW/* to a product line's keys (default: a new key of its own)",
    )
    p.add_argument("hardware", metavar="HW")
    p.add_argument(
        "--key",
        action="append",
        help="release key NAME.key or NAME.pub (repeat); default: generate release-HW",
    )
    p.add_argument(
        "--key-dir",
        default=None,
        help="where the new key goes (default: the signing directory with --repo, else .)",
    )
    p.add_argument("--threshold", type=int, default=1)
    p.add_argument("--targets-key", action="append", help="targets key that signs (repeat)")
    p.add_argument("--expires", default=None, help="targets validity, e.g. 365d")
    p.add_argument("--role-expires", default=None, help="the line's first role validity")
    add_source_args(p)
    p.set_defaults(func=cmd_product_add)
    for action, text in (
        ("rotate", "add and remove a product line's keys, re-sign its role"),
        ("revoke", "remove a product line's key: its signatures stop counting"),
    ):
        p = psub.add_parser(action, help=text)
        p.add_argument("hardware", metavar="HW")
        if action == "rotate":
            p.add_argument("--add-key", action="append", help="new release key NAME.pub")
        p.add_argument("--remove-key", action="append", help="NAME.pub or key id to remove")
        p.add_argument("--threshold", type=int, default=None)
        p.add_argument(
            "--key", action="append", help="remaining/new release key that re-signs the role"
        )
        p.add_argument("--targets-key", action="append", help="targets key that signs (repeat)")
        p.add_argument("--expires", default=None, help="targets validity")
        p.add_argument("--role-expires", default=None, help="re-signed role validity")
        add_source_args(p)
        p.set_defaults(func=cmd_product_change)
    p = psub.add_parser("list", help="delegations of the top-level targets")
    add_source_args(p, publish=False, asks=False)
    p.set_defaults(func=cmd_product_list)

    expiry = sub.add_parser("expiry", help="metadata expiry")
    esub = expiry.add_subparsers(dest="expiry_command", required=True, metavar="COMMAND")
    p = esub.add_parser("check", help="list expiries; exit 1 when an offline role expires soon")
    p.add_argument("--repo", required=True)
    p.add_argument("--within", default="14d", help="window, e.g. 14d (default)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_expiry_check)
