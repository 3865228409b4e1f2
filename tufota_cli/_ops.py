"""One operations interface for the operator commands, local or remote.

Each operator command parses its arguments, calls one method of an
``Operations`` and prints the JSON-able answer (``--json``) or a table made
from it. ``LocalOperations`` works on a repository directory (``--repo``, on
the server's host, no server needed); ``RemoteOperations`` calls the server's
API (``--server``/``--token``, ``TUFOTA_SERVER``/``TUFOTA_TOKEN`` or a
profile from ``tufota login``). Both answer with the same JSON: the reads use
the same builders the server's routes use (``to_json`` of the tracker's
records, ``repo_server._opsdata``).

Invariants:

* Where to act is resolved once per command: ``--repo`` or ``--server``
  (mutually exclusive flags), then ``--profile``, then ``TUFOTA_SERVER``,
  then the active profile. A token from a profile is only sent to that
  profile's server.
* Remote calls name the least role they need; a refusal (401/403) is exit 3
  and changes nothing (the server checks the role before acting).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from repo_server._opsdata import (
    add_sink,
    apply_settings,
    edit_tags,
    remove_sink,
    send_test_alert,
)
from tufota_cli import _profiles
from tufota_cli._client import ApiClient, ClientLimits, segment
from tufota_core import InputError, NotFoundError, format_time, utcnow

if TYPE_CHECKING:
    from repo_server import Repository

SERVER_ENV = "TUFOTA_SERVER"
TOKEN_ENV = "TUFOTA_TOKEN"  # noqa: S105 - the variable's name, not a secret
_ALREADY = {"pause": "paused", "resume": "active"}


class Operations(Protocol):
    """What operator commands do; every answer is JSON-able and the same local or remote."""

    where: str

    def rollouts(self, rollout_id: str | None) -> list[dict[str, Any]]: ...
    def rollout_history(self, rollout_id: str) -> dict[str, Any]: ...
    def start_rollout(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def rollout_action(self, rollout_id: str, action: str, reason: str) -> dict[str, Any]: ...
    def fleet(self, hardware_id: str | None) -> dict[str, Any]: ...
    def devices(self, status: str | None, hardware_id: str | None) -> list[dict[str, Any]]: ...
    def device(self, device_id: str) -> dict[str, Any]: ...
    def register_device(
        self, device_id: str, hardware_id: str, key: dict[str, Any], tags: list[str]
    ) -> dict[str, Any]: ...
    def set_device_status(self, device_id: str, status: str, reason: str) -> dict[str, Any]: ...
    def edit_tags(self, device_id: str, change: dict[str, Any]) -> dict[str, Any]: ...
    def alerts(
        self, open_only: bool, rollout_id: str | None, limit: int
    ) -> list[dict[str, Any]]: ...
    def resolve_alert(self, alert_id: int, reason: str) -> dict[str, Any]: ...
    def alert_settings(self, changes: dict[str, Any]) -> dict[str, Any]: ...
    def add_sink(self, spec: dict[str, Any]) -> dict[str, Any]: ...
    def remove_sink(self, name: str) -> dict[str, Any]: ...
    def test_alert(self) -> dict[str, Any]: ...
    def tokens(self) -> list[dict[str, Any]]: ...
    def create_token(
        self, name: str, role: str, lifetime_seconds: int | None
    ) -> dict[str, Any]: ...
    def revoke_token(self, token_id: str) -> dict[str, Any]: ...
    def releases(self, hardware_id: str | None) -> list[dict[str, Any]]: ...
    def repo_status(self) -> dict[str, Any]: ...


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    """Local ``--repo``/``--state-dir``, or remote ``--server``/``--token``/``--profile``/CA."""
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--repo",
        default=None,
        help="local mode: repository directory, or s3://BUCKET/PREFIX with --state-dir",
    )
    where.add_argument(
        "--server", default=None, help=f"remote mode: server URL (default ${SERVER_ENV} or profile)"
    )
    p.add_argument("--state-dir", default=None, help="for an s3:// --repo: its state directory")
    p.add_argument(
        "--database",
        default=None,
        metavar="URL",
        help="with --repo: the tracker's PostgreSQL database, postgresql://USER@HOST/DB "
        "(default $TUFOTA_DATABASE_URL, else REPO/tracker.db)",
    )
    p.add_argument("--token", default=None, help=f"API token for --server (default ${TOKEN_ENV})")
    p.add_argument("--profile", default=None, help="a profile saved by 'tufota login'")
    p.add_argument(
        "--ca-bundle",
        default=None,
        help="PEM CA certificates for an https server (beats REQUESTS_CA_BUNDLE)",
    )


def operations(args: argparse.Namespace) -> Operations:
    """The operations ``args`` point at: flags, then env, then the active profile.

    Raises:
        InputError: neither a repository nor a server is given.
        NotFoundError: a named profile or the repository does not exist.
    """
    if getattr(args, "repo", None):
        from repo_server import Repository

        return LocalOperations(
            Repository.locate(
                args.repo, getattr(args, "state_dir", None), getattr(args, "database", None)
            )
        )
    if getattr(args, "state_dir", None):
        raise InputError("--state-dir goes with --repo s3://BUCKET/PREFIX")
    return RemoteOperations(remote_client(args))


def remote_client(args: argparse.Namespace, limits: ClientLimits | None = None) -> ApiClient:
    """The API client ``--server``/``--profile``, ``TUFOTA_SERVER`` or the active profile names.

    Raises:
        InputError: no server is named anywhere.
        NotFoundError: a named profile or the CA bundle does not exist.
    """
    server = getattr(args, "server", None)
    chosen = None
    if not server and getattr(args, "profile", None):
        chosen = _profiles.profile(args.profile)
        server = chosen["server"] if chosen else None
    if not server:
        server = os.environ.get(SERVER_ENV) or None
    if not server:
        chosen = _profiles.profile(None)
        server = chosen["server"] if chosen else None
    if not server:
        raise InputError(
            "no repository or server: give --repo DIR on the server's host, or --server URL "
            f"with --token, or set {SERVER_ENV}, or run 'tufota login --server URL'"
        )
    if chosen is None:
        active = _profiles.profile(getattr(args, "profile", None) or None)
        chosen = active if active and active.get("server") == server else None
    token = (
        getattr(args, "token", None)
        or os.environ.get(TOKEN_ENV)
        or (chosen.get("token") if chosen else None)
    )
    ca = getattr(args, "ca_bundle", None) or (chosen.get("ca_bundle") if chosen else None)
    client = ApiClient(server, token, ca or None, limits)
    args.remote_server = client.server  # main() names it if its answer cannot be shown
    return client


class LocalOperations:
    """Operations on a repository directory (the tracker and the published tree)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.where = str(repo.path)

    def _store(self) -> Any:
        return self.repo.open_tracker()

    def _controller(self, signing: bool) -> Any:
        from tufota_cli.rollout_cmds import controller

        return controller(self.repo, signing=signing)

    def rollouts(self, rollout_id: str | None) -> list[dict[str, Any]]:
        ctl = self._controller(False)
        ids = [rollout_id] if rollout_id else [r.rollout_id for r in ctl.store.list_rollouts()]
        return [ctl.status(i).to_json() for i in ids]

    def rollout_history(self, rollout_id: str) -> dict[str, Any]:
        with self._store() as store:
            events = store.rollout_history(rollout_id)
        return {"rollout_id": rollout_id, "events": [e.to_json() for e in events]}

    def start_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        from staging import build_plan
        from tufota_cli.rollout_cmds import find_release

        release = find_release(self.repo, body["hardware_id"], body["version"])
        waves, options = build_plan(
            waves=body.get("waves"),
            preset=body.get("preset"),
            release=release.info,
            maintenance_window=body.get("maintenance_window"),
            success_threshold=body.get("success_threshold"),
            failure_threshold=body.get("failure_threshold"),
            soak_seconds=body.get("soak"),
            min_devices=body.get("min_devices"),
            stall_timeout_seconds=body.get("stall_timeout"),
            reboot_timeout_seconds=body.get("reboot_timeout"),
            poll_interval_seconds=body.get("poll_interval"),
            silent_polls=body.get("silent_polls"),
            retry_failed=body.get("retry_failed"),
            retry_backoff_seconds=body.get("retry_backoff"),
        )
        ctl = self._controller(True)  # loads the online key before the first write
        doc = ctl.start(
            body["hardware_id"],
            body["version"],
            release.target_path,
            waves,
            options,
            reason=body.get("reason") or "",
        )
        return dict(ctl.status(doc.rollout_id).to_json())

    def rollout_action(self, rollout_id: str, action: str, reason: str) -> dict[str, Any]:
        with self._store() as store:
            current = store.get_rollout(rollout_id)
        if _ALREADY.get(action) == current.state:
            # Idempotent: the wanted state holds already; nothing to sign or write.
            return {**self.rollouts(rollout_id)[0], "already": True}
        ctl = self._controller(True)
        getattr(ctl, action)(rollout_id, reason)
        ctl.deliver()
        return {**ctl.status(rollout_id).to_json(), "already": False}

    def fleet(self, hardware_id: str | None) -> dict[str, Any]:
        from repo_server import release_catalog

        status = self._controller(False).fleet_status(
            hardware_id=hardware_id, catalog=release_catalog(self.repo.state())
        )
        return dict(status.to_json())

    def devices(self, status: str | None, hardware_id: str | None) -> list[dict[str, Any]]:
        from repo_server import device_json

        with self._store() as store:
            found = store.list_devices(hardware_id)
        return [device_json(d) for d in found if status is None or d.status == status]

    def device(self, device_id: str) -> dict[str, Any]:
        from repo_server._opsdata import device_detail

        with self._store() as store:
            return device_detail(store, device_id)

    def register_device(
        self, device_id: str, hardware_id: str, key: dict[str, Any], tags: list[str]
    ) -> dict[str, Any]:
        from repo_server import device_json, register_device

        with self._store() as store:
            device = register_device(store, self.repo.storage, device_id, hardware_id, key, tags)
        return {"device": device_json(device)}

    def set_device_status(self, device_id: str, status: str, reason: str) -> dict[str, Any]:
        from repo_server import device_json, set_device_status

        with self._store() as store:
            changed = set_device_status(store, device_id, status, reason)
            return {"device": device_json(store.get_device(device_id)), "changed": changed}

    def edit_tags(self, device_id: str, change: dict[str, Any]) -> dict[str, Any]:
        """``change``: ``set`` (list or None), ``add``, ``remove``, ``reason``."""
        with self._store() as store:
            return edit_tags(
                store,
                device_id,
                replace=change.get("set"),
                add=change.get("add", []),
                remove=change.get("remove", []),
                reason=change.get("reason", ""),
            )

    def alerts(self, open_only: bool, rollout_id: str | None, limit: int) -> list[dict[str, Any]]:
        with self._store() as store:
            found = store.list_alerts(open_only=open_only, rollout_id=rollout_id, limit=limit)
        return [a.to_json() for a in found]

    def resolve_alert(self, alert_id: int, reason: str) -> dict[str, Any]:
        ctl = self._controller(False)
        alert = ctl.resolve_alert(alert_id, reason)
        ctl.deliver()
        return dict(alert.to_json())

    def alert_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        with self._store() as store:
            settings = apply_settings(store, changes)
        return dict(settings.to_json())

    def add_sink(self, spec: dict[str, Any]) -> dict[str, Any]:
        with self._store() as store:
            return dict(add_sink(store, spec).to_json())

    def remove_sink(self, name: str) -> dict[str, Any]:
        with self._store() as store:
            return dict(remove_sink(store, name).to_json())

    def test_alert(self) -> dict[str, Any]:
        return send_test_alert(self._controller(False), f"repository {self.repo.path}")

    def tokens(self) -> list[dict[str, Any]]:
        from repo_server._opsdata import token_json

        now = utcnow()
        with self.repo.token_store() as tokens:
            return [token_json(r, now) for r in tokens.list()]

    def create_token(self, name: str, role: str, lifetime_seconds: int | None) -> dict[str, Any]:
        from datetime import timedelta

        lifetime = None if lifetime_seconds is None else timedelta(seconds=lifetime_seconds)
        with self.repo.token_store() as tokens:
            token = tokens.create(name, role, lifetime)
        return {"token": token, "id": token.split("_")[1], "name": name, "role": role}

    def revoke_token(self, token_id: str) -> dict[str, Any]:

        with self.repo.token_store() as tokens:
            tokens.revoke(token_id)
        return {"id": token_id, "revoked": True}

    def releases(self, hardware_id: str | None) -> list[dict[str, Any]]:
        from repo_server._opsdata import release_lines

        return release_lines(self.repo.state(), hardware_id)

    def repo_status(self) -> dict[str, Any]:
        from repo_server._opsdata import ONLINE_ROLES

        now = utcnow()
        roles = {}
        for name, md in self.repo.state().all_roles():
            roles[name] = {
                "version": md.signed.version,
                "expires": format_time(md.signed.expires),
                "seconds_left": int((md.signed.expires - now).total_seconds()),
                "online": name in ONLINE_ROLES,
            }
        return {"storage": self.repo.storage_url, "roles": roles}


class RemoteOperations:
    """Operations through the server's HTTP API, each with the least role it needs."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self.where = client.server

    def rollouts(self, rollout_id: str | None) -> list[dict[str, Any]]:
        if rollout_id:
            return [self.client.get(f"/api/v1/rollouts/{segment(rollout_id)}")]
        return list(self.client.get("/api/v1/rollouts")["rollouts"])

    def rollout_history(self, rollout_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/api/v1/rollouts/{segment(rollout_id)}/history"))

    def start_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.client.post("/api/v1/rollouts", body))

    def rollout_action(self, rollout_id: str, action: str, reason: str) -> dict[str, Any]:
        before = self.client.get(f"/api/v1/rollouts/{segment(rollout_id)}", role="operator")[
            "state"
        ]
        # Always asked of the server (idempotent there too), so a token that may not act is
        # refused even when the rollout already is in the wanted state.
        path = f"/api/v1/rollouts/{segment(rollout_id)}/{action}"
        answer = self.client.post(path, {"reason": reason})
        return {**answer, "already": _ALREADY.get(action) == before}

    def fleet(self, hardware_id: str | None) -> dict[str, Any]:
        return dict(self.client.get("/api/v1/fleet", hardware=hardware_id))

    def devices(self, status: str | None, hardware_id: str | None) -> list[dict[str, Any]]:
        answer = self.client.get("/api/v1/devices", status=status, hardware_id=hardware_id)
        return list(answer["devices"])

    def device(self, device_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/api/v1/devices/{segment(device_id)}"))

    def register_device(
        self, device_id: str, hardware_id: str, key: dict[str, Any], tags: list[str]
    ) -> dict[str, Any]:
        body = {"device_id": device_id, "hardware_id": hardware_id, "public_key": key, "tags": tags}
        return dict(self.client.post("/api/v1/devices", body))

    def set_device_status(self, device_id: str, status: str, reason: str) -> dict[str, Any]:
        action = {"accepted": "accept", "revoked": "revoke"}[status]
        return dict(
            self.client.post(f"/api/v1/devices/{segment(device_id)}/{action}", {"reason": reason})
        )

    def edit_tags(self, device_id: str, change: dict[str, Any]) -> dict[str, Any]:
        path = f"/api/v1/devices/{segment(device_id)}/tags"
        return dict(self.client.request("PUT", path, role="operator", body=change)[1])

    def alerts(self, open_only: bool, rollout_id: str | None, limit: int) -> list[dict[str, Any]]:
        state = "open" if open_only else "all"
        answer = self.client.get("/api/v1/alerts", state=state, rollout=rollout_id, limit=limit)
        return list(answer["alerts"])

    def resolve_alert(self, alert_id: int, reason: str) -> dict[str, Any]:
        return dict(self.client.post(f"/api/v1/alerts/{alert_id}/resolve", {"reason": reason}))

    def alert_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        if not changes:
            return dict(self.client.get("/api/v1/alert-settings", role="operator"))
        return dict(
            self.client.request("PATCH", "/api/v1/alert-settings", role="operator", body=changes)[1]
        )

    def add_sink(self, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(self.client.post("/api/v1/alert-settings/sinks", spec))

    def remove_sink(self, name: str) -> dict[str, Any]:
        path = f"/api/v1/alert-settings/sinks/{segment(name)}"
        return dict(self.client.request("DELETE", path, role="operator")[1])

    def test_alert(self) -> dict[str, Any]:
        return dict(self.client.post("/api/v1/alert-settings/test"))

    def tokens(self) -> list[dict[str, Any]]:
        return list(self.client.get("/api/v1/tokens", role="operator")["tokens"])

    def create_token(self, name: str, role: str, lifetime_seconds: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "role": role, "lifetime_seconds": lifetime_seconds}
        return dict(self.client.post("/api/v1/tokens", body))

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        path = f"/api/v1/tokens/{segment(token_id)}"
        return dict(self.client.request("DELETE", path, role="operator")[1])

    def releases(self, hardware_id: str | None) -> list[dict[str, Any]]:
        return list(self.client.get("/api/v1/release-lines", hardware_id=hardware_id)["lines"])

    def repo_status(self) -> dict[str, Any]:
        answer = self.client.get("/api/v1/repository")
        keep = ("version", "expires", "seconds_left", "online")
        roles = {n: {k: r[k] for k in keep} for n, r in answer["roles"].items()}
        return {"storage": answer["storage"], "roles": roles}


def read_pubkey(path: Path, max_bytes: int) -> dict[str, Any]:
    """A device public key file (JSON or PEM) as the key dict. Raises NotFoundError, InputError."""
    from repo_server import parse_public_key

    if not path.is_file():
        raise NotFoundError(f"public key file {path} does not exist")
    if path.stat().st_size > max_bytes:
        raise InputError(f"{path} is larger than {max_bytes} bytes; not a public key")
    try:
        return dict(parse_public_key(path.read_text(encoding="utf-8")))
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text (PEM or JSON) public key") from None
    except InputError as e:
        raise InputError(f"{path}: {e}") from e
