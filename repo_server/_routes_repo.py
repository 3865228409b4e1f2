"""Routes for the static TUF tree, the server's health and the state of its online roles."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from repo_server._context import ServerContext
from repo_server._errors import error_responses
from repo_server._static import serve_object
from tufota_core import ROLLOUTS_ROLE, format_time, utcnow

ONLINE_ROLES = ("timestamp", "snapshot", ROLLOUTS_ROLE)


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()

    @router.api_route("/metadata/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    def metadata(name: str, request: Request) -> Response:
        return serve_object(ctx.publisher.storage, request, f"metadata/{name}")

    @router.api_route("/targets/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    def targets(path: str, request: Request) -> Response:
        return serve_object(ctx.publisher.storage, request, f"targets/{path}")

    @router.get("/api/v1/health", tags=["server"], responses=error_responses(503))
    def health() -> dict[str, Any]:
        """Liveness, this replica (and whether it leads), and the remaining validity of each role.

        It reads the storage, not the tracker: a replica that cannot reach the
        database still serves devices their metadata and firmware.
        """
        now = utcnow()
        expiries = ctx.publisher.expiries()
        return {
            "status": "ok",
            "time": format_time(now),
            "replica": ctx.leadership.replica,
            "leading": ctx.leadership.leading,
            "roles": {
                role: {
                    "expires": format_time(when),
                    "seconds_left": int((when - now).total_seconds()),
                }
                for role, when in sorted(expiries.items())
            },
        }

    def repository_status() -> dict[str, Any]:
        now = utcnow()
        state = ctx.publisher.state()
        periods = {
            "timestamp": ctx.publisher.expiry.timestamp,
            "snapshot": ctx.publisher.expiry.snapshot,
            ROLLOUTS_ROLE: ctx.publisher.expiry.rollouts,
        }
        roles: dict[str, Any] = {}
        for name, md in state.all_roles():
            left = md.signed.expires - now
            entry: dict[str, Any] = {
                "version": md.signed.version,
                "expires": format_time(md.signed.expires),
                "seconds_left": int(left.total_seconds()),
                "online": name in ONLINE_ROLES,
            }
            if name in periods:
                # refresh_online re-signs when half the validity period is left
                renew_at = md.signed.expires - periods[name] / 2
                entry["renews_in_seconds"] = max(0, int((renew_at - now).total_seconds()))
            else:
                entry["needs_offline_signing"] = left < timedelta(days=30)
            roles[name] = entry
        return {
            "storage": ctx.storage_url,
            "time": format_time(now),
            "refresh_interval_seconds": ctx.refresh_interval,
            "last_refresh": ctx.last_refresh(),
            "replica": ctx.leadership.replica,
            "leader": ctx.leadership.leader_name(),
            "roles": roles,
        }

    @router.get(
        "/api/v1/repository",
        tags=["server"],
        dependencies=[Depends(ctx.require("read"))],
        responses=error_responses(401, 403, 503),
    )
    def get_repository() -> dict[str, Any]:
        """Each role's version and remaining validity; the online-role refresh's last outcome.

        Online roles (timestamp, snapshot, rollouts) are re-signed by the server
        when half their validity is left; offline roles (root, targets, product
        lines) must be re-signed by their key holders before they expire
        (``needs_offline_signing`` turns true 30 days before).
        """
        return repository_status()

    @router.post(
        "/api/v1/repository/refresh",
        tags=["server"],
        dependencies=[Depends(ctx.require("operate"))],
        responses=error_responses(401, 403, 422, 503),
    )
    def refresh_repository() -> dict[str, Any]:
        """Re-sign every online role now (timestamp, snapshot, rollouts)."""
        renewed = ctx.refresh_online(margin=timedelta(days=36500))
        return {"renewed": renewed, **repository_status()}

    return router
