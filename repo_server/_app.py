"""The repository server's ASGI application: routers, error handling, background tasks.

Routers (one module each):
* ``_routes_repo``: ``/metadata/*``, ``/targets/*`` (the static TUF tree), ``/api/v1/health``.
* ``_routes_devices``: device registration and status, signed reports, history.
* ``_routes_releases``: ``POST /api/v1/releases``, verified bundle uploads.
* ``_routes_rollouts``: rollouts and fleet status.

Every error body is ``{"error": CODE, "message": TEXT}`` (``_errors``). The
background tasks (rollout gates, online role refresh) log and survive their
own failures, so one bad tick cannot stop the server; with several replicas
they run on the leader only (``_leader``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from repo_server import (
    _dashboard,
    _metrics,
    _routes_devices,
    _routes_ops,
    _routes_releases,
    _routes_repo,
    _routes_rollouts,
)
from repo_server._context import ServerContext
from repo_server._errors import EXCEPTION_HANDLERS
from repo_server._guards import ErrorGuard, JsonGuard
from repo_server._hosts import HostCheck
from repo_server._ingest import ReportFastPath
from repo_server._openapi import describe

logger = logging.getLogger(__name__)


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
                asyncio.create_task(
                    _every(ctx.leader_check_interval, "leader-check", ctx.leadership.check)
                ),
                asyncio.create_task(_every(ctx.tick_interval, "rollout-tick", ctx.tick_if_leading)),
                asyncio.create_task(
                    _every(ctx.refresh_interval, "online-refresh", ctx.refresh_if_leading)
                ),
            ]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.to_thread(ctx.close_ingest)
        await asyncio.to_thread(ctx.leadership.release)

    app = FastAPI(
        title="tufota repository server",
        version="0.1.0",
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    )
    for module in (
        _routes_repo,
        _routes_devices,
        _routes_releases,
        _routes_rollouts,
        _routes_ops,
        _dashboard,
        _metrics,
    ):
        app.include_router(module.build_router(ctx))
    # Innermost first: the metrics middleware must see the reports the fast path answers;
    # reports have their own size cap and parser, every other body passes the JSON guard.
    app.add_middleware(JsonGuard, max_bytes=lambda: ctx.limits.max_json_bytes)
    app.add_middleware(ReportFastPath, ingestor=ctx.report_ingestor)
    app.add_middleware(_metrics.ReportIngestMiddleware, ingest=_metrics.ingest_for(ctx))
    app.add_middleware(ErrorGuard)
    describe(app)  # the OpenAPI document states the real statuses and constraints
    # Outermost: a request for a foreign Host name reaches nothing.
    app.add_middleware(
        HostCheck, names=lambda: ctx.server_names, loopback=lambda: ctx.loopback_names
    )
    return app
