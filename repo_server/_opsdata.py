"""The JSON of operator reads that both the CLI (local mode) and the server (remote mode) give.

Invariant: one function per answer, called by ``tufota_cli._ops.LocalOperations``
and by the routes of ``_routes_ops``, so a command's ``--json`` is the same
whether it reads the repository directory or the server's API. No FastAPI
here: the base install imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tufota_core import FirmwareInfo, InputError, NotFoundError, is_delta_custom, product_role

if TYPE_CHECKING:  # _auth needs fastapi; the base install reads releases without it
    from repo_server._auth import TokenRecord
    from repo_server._publisher import RepoState

ONLINE_ROLES = ("timestamp", "snapshot", "rollouts")


def release_lines(state: RepoState, hardware_id: str | None = None) -> list[dict[str, Any]]:
    """Per product line: the role's version and signing key ids, and each release, oldest first.

    A release is ``{version, severity, cvss, fixes, notes, released, target_path,
    length, sha256}``; deltas are left out (they belong to the release they rebuild).
    """
    prefix = product_role("x")[:-1]
    lines = []
    for name, md in sorted(state.roles.items()):
        if not name.startswith(prefix):
            continue
        hw = name[len(prefix) :]
        if hardware_id is not None and hw != hardware_id:
            continue
        releases: list[dict[str, Any]] = []
        for path, target in md.signed.targets.items():
            custom = dict(target.custom or {})
            if is_delta_custom(custom):
                continue
            try:
                info = FirmwareInfo.from_custom(custom)
            except InputError:
                continue
            releases.append(
                {
                    "version": info.version,
                    "severity": info.severity,
                    "cvss": info.cvss,
                    "fixes": list(info.fixes),
                    "notes": info.notes,
                    "released": info.released or None,
                    "target_path": path,
                    "length": target.length,
                    "sha256": target.hashes.get("sha256"),
                }
            )
        releases.sort(key=lambda r: _version_key(r["version"]))
        lines.append(
            {
                "hardware_id": hw,
                "role": name,
                "role_version": md.signed.version,
                "signing_keys": sorted(md.signatures),
                "releases": releases,
            }
        )
    return lines


def _version_key(text: str) -> Any:
    from tufota_core import Version

    try:
        return (0, Version.parse(text))
    except InputError:
        return (1, text)


def token_json(record: TokenRecord, now: datetime) -> dict[str, Any]:
    """A token for operators: id, name, role and dates; never the hash."""
    return {
        "id": record.token_id,
        "name": record.name,
        "role": record.role,
        "created": record.created,
        "expires": record.expires,
        "expired": record.expired(now),
    }


def apply_settings(store: Any, changes: dict[str, Any]) -> Any:
    """Change ``patch_grace_seconds``, ``patch_min_cvss``, ``expiry_margin_seconds``; the result.

    Raises:
        InputError: an unknown field or a value out of bounds (nothing changed).
    """
    from staging import AlertSettings

    settings = store.get_alert_settings()
    fields = ("patch_grace_seconds", "patch_min_cvss", "expiry_margin_seconds")
    unknown = set(changes) - set(fields)
    if unknown:
        raise InputError(f"unknown settings: {', '.join(sorted(unknown))}")
    given = {k: v for k, v in changes.items() if v is not None}
    if given:
        settings = AlertSettings(
            settings.sinks, *(given.get(f, getattr(settings, f)) for f in fields)
        )
        store.set_alert_settings(settings)
    return settings


def add_sink(store: Any, spec: dict[str, Any]) -> Any:
    """Add the sink ``spec`` (``SinkSpec`` fields); the new settings.

    Raises:
        InputError: a bad spec or a sink of that name exists (nothing changed).
    """
    from staging import AlertSettings, SinkSpec

    try:
        sink = SinkSpec(**spec)
    except TypeError as e:
        raise InputError(f"bad sink: {e}") from None
    settings = store.get_alert_settings()
    if any(s.name == sink.name for s in settings.sinks):
        raise InputError(f"an alert sink named {sink.name} exists; remove it first")
    new = AlertSettings(
        (*settings.sinks, sink),
        settings.patch_grace_seconds,
        settings.patch_min_cvss,
        settings.expiry_margin_seconds,
    )
    store.set_alert_settings(new)
    return new


def remove_sink(store: Any, name: str) -> Any:
    """Remove the sink ``name``; the new settings. Raises NotFoundError."""
    from staging import AlertSettings

    settings = store.get_alert_settings()
    kept = tuple(s for s in settings.sinks if s.name != name)
    if len(kept) == len(settings.sinks):
        raise NotFoundError(f"no alert sink named {name}")
    new = AlertSettings(
        kept, settings.patch_grace_seconds, settings.patch_min_cvss, settings.expiry_margin_seconds
    )
    store.set_alert_settings(new)
    return new


def send_test_alert(ctl: Any, origin: str) -> dict[str, Any]:
    """Open and resolve a test alert, deliver both to every sink; counts delivered and failed."""
    from staging import AlertDraft

    now = ctl.now()
    sinks = ctl.store.get_alert_settings().sinks
    draft = AlertDraft(
        key=f"test:{now.timestamp():.0f}",
        kind="test",
        severity="critical",
        summary=f"test alert from tufota ({origin})",
    )
    ctl.store.sync_alerts("test:", [draft], at=now, sinks=sinks)
    ctl.store.sync_alerts("test:", [], at=now, sinks=sinks, resolution="test over")
    delivered, failed = ctl.deliver()
    return {"delivered": delivered, "failed": failed}


def device_detail(store: Any, device_id: str, limit: int = 200) -> dict[str, Any]:
    """A device (key id, not the key), its last ``limit`` reports and downloads, newest first.

    Raises:
        InputError: a malformed device id.
        NotFoundError: no such device.
    """
    from repo_server._devices import device_json
    from tufota_core import check_device_id

    device = device_json(store.get_device(check_device_id(device_id)))
    history = [e.to_json() for e in store.device_history(device_id, limit=limit)]
    transfers = store.device_transfers(device_id, limit=limit)
    return {"device": device, "history": history, "transfers": transfers}


def edit_tags(
    store: Any,
    device_id: str,
    *,
    replace: Sequence[str] | None = None,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    reason: str = "",
) -> dict[str, Any]:
    """Set a device's tags to ``replace`` (if given), then add and remove; the device after.

    Raises:
        InputError: a malformed tag, too many, or a tag both added and removed.
        NotFoundError: no such device.
    """
    from repo_server._devices import device_json
    from tufota_core import check_device_id, check_tag

    device = store.get_device(check_device_id(device_id))  # a missing device is 404 first
    both = set(add) & set(remove)
    if both:
        raise InputError(f"tag {sorted(both)[0]} is both added and removed")
    current = set(device.tags if replace is None else replace)
    tags = sorted((current | {check_tag(t) for t in add}) - set(remove))
    return {"device": device_json(store.set_device_tags(device_id, tags, reason=reason))}
