"""Rollout, fleet and alert routes for operators.

Reads need the ``read`` permission (a viewer token, or loopback without a
token); every change needs ``operate`` (an operator token). Routes::

    GET  /api/v1/rollouts                       every rollout with per-wave progress
    POST /api/v1/rollouts                       start one (body: see ``start_rollout``)
    GET  /api/v1/rollouts/{id}                  one rollout's progress, gate and stalls
    GET  /api/v1/rollouts/{id}/history          its transitions, with time and reason
    POST /api/v1/rollouts/{id}/pause|resume|abort|advance|complete   body: {"reason": "..."}
    GET  /api/v1/fleet[?hardware=HW]            patch status: versions, missing CVEs, exposure
    GET  /api/v1/alerts[?state=open&rollout=ID&kind=K&limit=N]
    POST /api/v1/alerts/{id}/resolve            body: {"reason": "..."}

Invariants: a refused request changes nothing (validation happens before the
controller acts, and the controller's changes are single transactions); the
controller's fleet-wide monitors are bound to this server's publisher here,
so metadata-expiry and patch alerts run inside the server's background tick.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam

from repo_server._context import ServerContext
from repo_server._releases import release_catalog
from repo_server._watchdog import published_rollouts
from staging import ALERT_KINDS, build_plan
from tufota_core import (
    ConflictError,
    InputError,
    NotFoundError,
    RepositoryError,
    TransportError,
    check_hardware_id,
)

_MAX_BODY = 16 * 1024
_STATE_AFTER = {"pause": "paused", "resume": "active", "abort": "aborted", "complete": "completed"}
_START_FIELDS = {
    "hardware_id",
    "version",
    "waves",
    "preset",
    "success_threshold",
    "failure_threshold",
    "soak",
    "min_devices",
    "stall_timeout",
    "reboot_timeout",
    "poll_interval",
    "silent_polls",
    "maintenance_window",
    "reason",
    "retry_failed",
    "retry_backoff",
}


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > _MAX_BODY:
        raise InputError(f"request body is larger than {_MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise InputError(f"request body is not JSON: {e}") from None
    except RecursionError:
        raise InputError("request body nests too deeply") from None
    if not isinstance(data, dict):
        raise InputError("request body must be a JSON object")
    return data


def _reason(data: dict[str, Any], default: str) -> str:
    reason = data.get("reason", default)
    if not isinstance(reason, str):
        raise InputError("reason must be a string")
    return reason or default


def build_router(ctx: ServerContext) -> APIRouter:
    ctx.controller.attach_repository(
        expiries=ctx.publisher.expiries,
        releases=lambda: release_catalog(ctx.publisher.state()),
        published=lambda: published_rollouts(ctx.publisher.storage, ctx.take_forged_targets()),
    )
    router = APIRouter()
    read = [Depends(ctx.require("read"))]
    operate = [Depends(ctx.require("operate"))]

    @router.get("/api/v1/rollouts", tags=["rollouts"], dependencies=read)
    def list_rollouts() -> dict[str, Any]:
        """Every rollout with its per-wave progress, newest first."""
        return {
            "rollouts": [
                ctx.controller.status(r.rollout_id).to_json() for r in ctx.store.list_rollouts()
            ]
        }

    @router.post("/api/v1/rollouts", tags=["rollouts"], dependencies=operate, status_code=201)
    async def start_rollout(request: Request) -> dict[str, Any]:
        """Start a rollout of a signed release.

        Body: ``hardware_id``, ``version``, and ``waves`` (a wave spec) and/or
        ``preset``; optional ``success_threshold``/``failure_threshold``
        ("95%" or 0.95), ``soak``/``stall_timeout``/``reboot_timeout``/
        ``poll_interval`` ("30m" or seconds), ``min_devices``, ``silent_polls``,
        ``maintenance_window`` ("Sat 02:00-04:00 UTC"), ``reason``.
        """
        data = await _body(request)
        unknown = set(data) - _START_FIELDS
        if unknown:
            raise InputError(f"unknown fields: {', '.join(sorted(unknown))}")
        hardware_id = data.get("hardware_id")
        version = data.get("version")
        if not isinstance(hardware_id, str) or not isinstance(version, str):
            raise InputError("hardware_id and version are required strings")
        check_hardware_id(hardware_id)
        catalog = release_catalog(ctx.publisher.state())
        release = catalog.find(hardware_id, version)
        if release is None:
            if hardware_id not in catalog.releases:
                raise NotFoundError(f"hardware id {hardware_id} has no signed releases")
            raise NotFoundError(f"hardware id {hardware_id} has no release {version}")
        for name in ("waves", "preset", "maintenance_window"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise InputError(f"{name} must be a string")
        waves, options = build_plan(
            waves=data.get("waves"),
            preset=data.get("preset"),
            release=release.info,
            maintenance_window=data.get("maintenance_window"),
            success_threshold=data.get("success_threshold"),
            failure_threshold=data.get("failure_threshold"),
            soak_seconds=data.get("soak"),
            min_devices=data.get("min_devices"),
            stall_timeout_seconds=data.get("stall_timeout"),
            reboot_timeout_seconds=data.get("reboot_timeout"),
            poll_interval_seconds=data.get("poll_interval"),
            silent_polls=data.get("silent_polls"),
            retry_failed=data.get("retry_failed"),
            retry_backoff_seconds=data.get("retry_backoff"),
        )
        doc = ctx.controller.start(
            hardware_id,
            version,
            release.target_path,
            waves,
            options,
            reason=_reason(data, "started through the API"),
        )
        return ctx.controller.status(doc.rollout_id).to_json()

    @router.get("/api/v1/rollouts/{rollout_id}", tags=["rollouts"], dependencies=read)
    def get_rollout(rollout_id: str) -> dict[str, Any]:
        """One rollout's per-wave progress, gate status and open stall counts."""
        return ctx.controller.status(rollout_id).to_json()

    @router.get("/api/v1/rollouts/{rollout_id}/history", tags=["rollouts"], dependencies=read)
    def rollout_history(rollout_id: str) -> dict[str, Any]:
        """The rollout's transitions (started, advanced, paused, ...) with time and reason."""
        events = ctx.store.rollout_history(rollout_id)
        return {"rollout_id": rollout_id, "events": [e.to_json() for e in events]}

    @router.post("/api/v1/rollouts/{rollout_id}/{action}", tags=["rollouts"], dependencies=operate)
    async def act(
        rollout_id: str, action: str, request: Request, response: Response
    ) -> dict[str, Any]:
        """Pause, resume, abort or advance a rollout by hand; the document is re-signed.

        200 with ``"published": true`` once devices can see the change; 202 with
        ``"published": false`` when the change is recorded but publishing failed
        (e.g. another writer holds the repository lock): the controller retries
        every tick, and the message says why and for how long devices still see
        the previous document.
        """
        data = await _body(request)
        try:
            # In a thread: publishing may wait for the repository lock, the loop must not.
            await asyncio.to_thread(_act, rollout_id, action, data)
        except (ConflictError, TransportError, RepositoryError) as e:
            if not _recorded_unpublished(rollout_id, action):
                raise
            response.status_code = 202
            return {
                **ctx.controller.status(rollout_id).to_json(),
                "published": False,
                "message": f"{action} recorded but not yet published to devices: {e}. The "
                f"server retries every {ctx.tick_interval:g}s; until then devices keep "
                "the previous rollout document",
            }
        return {**ctx.controller.status(rollout_id).to_json(), "published": True}

    def _recorded_unpublished(rollout_id: str, action: str) -> bool:
        rollout = ctx.store.get_rollout(rollout_id)
        expected = _STATE_AFTER.get(action)
        return rollout.published_revision < rollout.revision and (
            expected is None or rollout.state == expected
        )

    def _act(rollout_id: str, action: str, data: dict[str, Any]) -> None:
        controller = ctx.controller
        if action == "pause":
            controller.pause(rollout_id, _reason(data, "paused through the API"))
        elif action == "resume":
            controller.resume(rollout_id, _reason(data, "resumed through the API"))
        elif action == "abort":
            controller.abort(rollout_id, _reason(data, "aborted through the API"))
        elif action == "advance":
            controller.advance(rollout_id, _reason(data, "advanced through the API"))
        elif action == "complete":  # the reason is required: no default
            controller.complete(rollout_id, _reason(data, ""))
        else:
            raise NotFoundError(
                f"no rollout action {action!r} (pause, resume, abort, advance, complete)"
            )

    @router.get("/api/v1/fleet", tags=["devices"], dependencies=read)
    def fleet(hardware: str | None = None) -> dict[str, Any]:
        """Every device's version, the latest signed version, missing CVEs and exposure."""
        if hardware is not None:
            check_hardware_id(hardware)
        catalog = release_catalog(ctx.publisher.state())
        return ctx.controller.fleet_status(hardware, catalog=catalog).to_json()

    @router.get("/api/v1/alerts", tags=["alerts"], dependencies=read)
    def alerts(
        state: str = "all",
        rollout: str | None = None,
        kind: str | None = None,
        limit: int = Query(200, ge=1, le=10_000),
    ) -> dict[str, Any]:
        """Alerts, newest first (``state``: open or all)."""
        if state not in ("open", "all"):
            raise InputError("state must be 'open' or 'all'")
        if kind is not None and kind not in ALERT_KINDS:
            raise InputError(f"kind must be one of {', '.join(ALERT_KINDS)}")
        found = ctx.store.list_alerts(
            open_only=state == "open",
            rollout_id=rollout,
            kinds=None if kind is None else [kind],
            limit=limit,
        )
        return {"alerts": [a.to_json() for a in found]}

    @router.post("/api/v1/alerts/{alert_id}/resolve", tags=["alerts"], dependencies=operate)
    async def resolve(
        request: Request,
        alert_id: int = PathParam(ge=1, le=2**62),  # checked before SQLite sees it
    ) -> dict[str, Any]:
        """Resolve an alert by hand (it opens again if its condition persists)."""
        data = await _body(request)
        # Through the controller: a resolved document divergence re-publishes the tracker's.
        alert = ctx.controller.resolve_alert(alert_id, _reason(data, "resolved by an operator"))
        return alert.to_json()

    return router
