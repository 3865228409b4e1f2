"""Rollout and fleet routes for operators (read with a viewer token or locally)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from repo_server._context import ServerContext


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter(dependencies=[Depends(ctx.require("read"))])

    @router.get("/api/v1/rollouts", tags=["rollouts"])
    def list_rollouts() -> dict[str, Any]:
        """Every rollout with its per-wave progress."""
        return {
            "rollouts": [
                ctx.controller.status(r.rollout_id).to_json() for r in ctx.store.list_rollouts()
            ]
        }

    @router.get("/api/v1/rollouts/{rollout_id}", tags=["rollouts"])
    def get_rollout(rollout_id: str) -> dict[str, Any]:
        """One rollout's per-wave progress and gate status."""
        return ctx.controller.status(rollout_id).to_json()

    @router.get("/api/v1/fleet", tags=["devices"])
    def fleet() -> dict[str, Any]:
        """Every device's version and state, with a summary."""
        return ctx.controller.fleet_status().to_json()

    return router
