"""Routes for the static TUF tree and the server's health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from repo_server._context import ServerContext
from repo_server._static import serve_object
from tufota_core import format_time, utcnow


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()

    @router.api_route("/metadata/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    def metadata(name: str, request: Request) -> Response:
        return serve_object(ctx.publisher.storage, request, f"metadata/{name}")

    @router.api_route("/targets/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    def targets(path: str, request: Request) -> Response:
        return serve_object(ctx.publisher.storage, request, f"targets/{path}")

    @router.get("/api/v1/health", tags=["server"])
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

    return router
