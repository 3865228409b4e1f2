"""The repository server's ASGI application.

Routes:
* ``GET /metadata/{name}``, ``GET /targets/{path}``: the static TUF tree (see ``_static``).
* ``/api/v1/...``: device reports and the operators' read API, described by ``/openapi.json``.

Invariants: a device report is applied only after its signature verified
against the device's registered key and its sequence number is above the last
accepted one; a refused report changes nothing. Every error body is
``{"error": CODE, "message": TEXT}``. Background tasks (rollout gates, online
role refresh) log and survive their own failures, so one bad tick cannot stop
the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from securesystemslib.signer import SSlibKey

from repo_server._errors import EXCEPTION_HANDLERS, ApiError
from repo_server._publisher import Publisher
from repo_server._static import serve_object
from staging import ReplayError, RolloutController, TrackerStore
from tufota_core import (
    MAX_REPORT_BYTES,
    ConflictError,
    InputError,
    NotFoundError,
    VerificationError,
    check_device_id,
    format_time,
    parse_envelope,
    utcnow,
    verify_report,
)

logger = logging.getLogger(__name__)


@dataclass
class ServerContext:
    """What the application serves from and writes to."""

    publisher: Publisher
    store: TrackerStore
    controller: RolloutController
    tick_interval: float = 5.0
    refresh_interval: float = 60.0


async def _every(seconds: float, name: str, work: Callable[[], object]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(work)
        except Exception:
            logger.exception("background task %s failed; retrying in %.0fs", name, seconds)


def create_app(ctx: ServerContext, background: bool = True) -> FastAPI:
    """Build the FastAPI application around ``ctx``."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = []
        if background:
            tasks = [
                asyncio.create_task(_every(ctx.tick_interval, "rollout-tick", ctx.controller.tick)),
                asyncio.create_task(
                    _every(ctx.refresh_interval, "online-refresh", ctx.publisher.refresh_online)
                ),
            ]
        yield
        for task in tasks:
            task.cancel()

    app = FastAPI(
        title="tufota repository server",
        version="0.1.0",
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    )

    @app.api_route("/metadata/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    def metadata(name: str, request: Request) -> Response:
        return serve_object(ctx.publisher.storage, request, f"metadata/{name}")

    @app.api_route("/targets/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    def targets(path: str, request: Request) -> Response:
        return serve_object(ctx.publisher.storage, request, f"targets/{path}")

    @app.get("/api/v1/health", tags=["server"])
    def health() -> dict[str, Any]:
        """Liveness and the remaining validity of each role."""
        now = utcnow()
        expiries = ctx.publisher.expiries()
        return {
            "status": "ok",
            "time": format_time(now),
            "roles": {
                role: {
                    "expires": format_time(when),
                    "seconds_left": int((when - now).total_seconds()),
                }
                for role, when in sorted(expiries.items())
            },
        }

    @app.post("/api/v1/devices/{device_id}/reports", tags=["devices"], status_code=202)
    async def post_report(device_id: str, request: Request) -> dict[str, Any]:
        """Accept a signed status report (see ``tufota_core.Report``)."""
        body = await request.body()
        if len(body) > MAX_REPORT_BYTES:
            raise ApiError(413, "too_large", f"a report is at most {MAX_REPORT_BYTES} bytes")
        try:
            check_device_id(device_id)
            envelope = json.loads(body)
            report, _sig = parse_envelope(envelope)
        except ValueError as e:
            raise ApiError(400, "bad_request", f"report body is not JSON: {e}") from None
        except InputError as e:
            raise ApiError(400, "bad_report", str(e)) from None
        if report.device_id != device_id:
            raise ApiError(400, "bad_report", "report device_id does not match the URL")
        return await asyncio.to_thread(_apply_report, envelope, device_id)

    def _apply_report(envelope: Any, device_id: str) -> dict[str, Any]:
        try:
            device = ctx.store.get_device(device_id)
        except NotFoundError:
            raise ApiError(401, "unknown_device", f"device {device_id} is not registered") from None
        if device.status == "revoked":
            raise ApiError(403, "device_revoked", f"device {device_id} is revoked")
        if device.status != "accepted":
            raise ApiError(403, "device_pending", f"device {device_id} is not accepted yet")
        key_data = dict(device.public_key)
        keyid = str(key_data.pop("keyid", ""))
        try:
            key = SSlibKey.from_dict(keyid, key_data)
            report = verify_report(envelope, key)
        except VerificationError as e:
            raise ApiError(401, "bad_signature", str(e)) from None
        except (ValueError, KeyError) as e:
            raise ApiError(500, "bad_device_key", f"registered key is unusable: {e}") from None
        try:
            changed = ctx.store.record_report(report, utcnow())
        except ReplayError as e:
            raise ApiError(409, "replayed_report", str(e)) from None
        except ConflictError as e:
            raise ApiError(403, "refused", str(e)) from None
        return {"accepted": True, "seq": report.seq, "transition": changed}

    @app.get("/api/v1/rollouts", tags=["rollouts"])
    def list_rollouts() -> dict[str, Any]:
        """Every rollout with its per-wave progress."""
        return {
            "rollouts": [
                ctx.controller.status(r.rollout_id).to_json() for r in ctx.store.list_rollouts()
            ]
        }

    @app.get("/api/v1/rollouts/{rollout_id}", tags=["rollouts"])
    def get_rollout(rollout_id: str) -> dict[str, Any]:
        """One rollout's per-wave progress and gate status."""
        return ctx.controller.status(rollout_id).to_json()

    @app.get("/api/v1/devices/{device_id}", tags=["devices"])
    def get_device(device_id: str) -> dict[str, Any]:
        """A device and its history of reports."""
        device = ctx.store.get_device(device_id).to_json()
        device.pop("public_key", None)
        history = [e.to_json() for e in ctx.store.device_history(device_id, limit=200)]
        return {"device": device, "history": history}

    @app.get("/api/v1/fleet", tags=["devices"])
    def fleet() -> dict[str, Any]:
        """Every device's version and state, with a summary."""
        return ctx.controller.fleet_status().to_json()

    return app
