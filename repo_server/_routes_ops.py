"""Operator routes the remote CLI needs beyond rollouts and devices: releases, tokens, alerts.

Routes::

    GET    /api/v1/release-lines[?hardware_id=HW]   releases and signing keys per line (read)
    GET    /api/v1/tokens                           API tokens, never their secrets (operate)
    POST   /api/v1/tokens                           create a viewer or operator token (operate)
    DELETE /api/v1/tokens/{token_id}                revoke a token (operate)
    GET    /api/v1/alert-settings                   sinks and fleet-wide alert settings (operate)
    PATCH  /api/v1/alert-settings                   change the settings (operate)
    POST   /api/v1/alert-settings/sinks             add a webhook or SNS sink (operate)
    DELETE /api/v1/alert-settings/sinks/{name}      remove a sink (operate)
    POST   /api/v1/alert-settings/test              send a test alert to every sink (operate)
    PUT    /api/v1/devices/{device_id}/tags         edit a device's cohort tags (operate)

Invariants: answers are built by ``_opsdata`` and ``tufota_cli._ops``, the
same code the CLI's local mode runs, so ``--json`` agrees in both modes.
Nothing here widens a role: an operator token cannot create an uploader
token (uploading is a right operators do not have), and a sink cannot be
allowed to reach private addresses through the API (webhook URLs would
otherwise let an operator token probe the server's network); both stay
with whoever holds the server's directory. Alert settings are read with
``operate`` because webhook URLs often carry secrets.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from repo_server._context import ServerContext
from repo_server._errors import ApiError, error_responses
from repo_server._opsdata import (
    add_sink,
    apply_settings,
    edit_tags,
    release_lines,
    remove_sink,
    send_test_alert,
    token_json,
)
from tufota_core import check_hardware_id, utcnow

_MAX_LIFETIME = 5 * 365 * 86400


def _json_number(value: Any) -> Any:
    # As JSON Schema reads the body: true and "5" are not numbers (pydantic's lax mode
    # would take them), 300.0 is an integer (its strict mode would not).
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError("a JSON number is required")
    return value


Number = BeforeValidator(_json_number)
Tag = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]  # tufota_core.check_tag
_MAX_DURATION = 365 * 86400


class TokenRequest(BaseModel):
    """A token to create: who uses it, its role and how long it is valid (null: until revoked)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    role: Literal["viewer", "operator", "uploader"]
    lifetime_seconds: Annotated[int | None, Number] = Field(default=None, ge=1, le=_MAX_LIFETIME)


class SettingsChange(BaseModel):
    """Fleet-wide alert settings to change; absent or null fields keep their value."""

    model_config = ConfigDict(extra="forbid")

    patch_grace_seconds: Annotated[int | None, Number] = Field(default=None, ge=0, le=_MAX_DURATION)
    patch_min_cvss: Annotated[float | None, Number] = Field(default=None, ge=0.0, le=10.0)
    expiry_margin_seconds: Annotated[int | None, Number] = Field(
        default=None, ge=0, le=_MAX_DURATION
    )


class TagsChange(BaseModel):
    """A device's new tags: ``set`` replaces them (when given), then ``add`` and ``remove``."""

    model_config = ConfigDict(extra="forbid")

    set: list[Tag] | None = Field(default=None, max_length=32)
    add: list[Tag] = Field(default_factory=list, max_length=32)
    remove: list[Tag] = Field(default_factory=list, max_length=32)
    reason: str = Field(default="", max_length=1024)


class SinkRequest(BaseModel):
    """An alert sink: a webhook URL or an SNS topic."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    kind: Literal["webhook", "sns"]
    url: str = Field(default="", max_length=2048)
    topic_arn: str = Field(default="", max_length=256)
    region: str = Field(default="", max_length=64)
    endpoint_url: str = Field(default="", max_length=2048)
    min_severity: Literal["info", "warning", "critical"] = "info"
    allow_private: bool = Field(default=False, strict=True)


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()
    read = [Depends(ctx.require("read"))]
    operate = [Depends(ctx.require("operate"))]

    @router.get(
        "/api/v1/release-lines",
        tags=["releases"],
        dependencies=read,
        responses=error_responses(400, 401, 403, 503),
    )
    def list_release_lines(
        hardware_id: str | None = None,
    ) -> dict[str, Any]:
        """Each product line's releases (version, severity, CVSS, fixes, when signed) and keys."""
        if hardware_id is not None:
            check_hardware_id(hardware_id)
        return {"lines": release_lines(ctx.publisher.state(), hardware_id)}

    def _tokens() -> Any:
        if ctx.tokens is None:
            raise ApiError(404, "not_found", "this server has no token store")
        return ctx.tokens

    @router.get(
        "/api/v1/tokens",
        tags=["tokens"],
        dependencies=operate,
        responses=error_responses(401, 403, 404),
    )
    def list_tokens() -> dict[str, Any]:
        """API tokens by id, name, role and expiry (never the secrets or their hashes)."""
        now = utcnow()
        return {"tokens": [token_json(r, now) for r in _tokens().list()]}

    @router.post(
        "/api/v1/tokens",
        tags=["tokens"],
        status_code=201,
        dependencies=operate,
        responses=error_responses(400, 401, 403, 404),
    )
    def create_token(request: TokenRequest) -> dict[str, Any]:
        """Create a viewer or operator token; the answer is the only place it is ever shown."""
        if request.role == "uploader":
            raise ApiError(
                403,
                "forbidden",
                "an operator token may not create an uploader token; run 'tufota token "
                "create --role uploader --repo REPO' on the server's host",
            )
        lifetime = (
            None
            if request.lifetime_seconds is None
            else timedelta(seconds=request.lifetime_seconds)
        )
        token = _tokens().create(request.name, request.role, lifetime)
        return {
            "token": token,
            "id": token.split("_")[1],
            "name": request.name,
            "role": request.role,
        }

    @router.delete(
        "/api/v1/tokens/{token_id}",
        tags=["tokens"],
        dependencies=operate,
        responses=error_responses(401, 403, 404),
    )
    def revoke_token(
        token_id: str = PathParam(pattern=r"^[0-9a-f]{1,64}$"),
    ) -> dict[str, Any]:
        """Delete a token; requests using it are refused at once."""
        _tokens().revoke(token_id)
        return {"id": token_id, "revoked": True}

    @router.put(
        "/api/v1/devices/{device_id}/tags",
        tags=["devices"],
        dependencies=operate,
        responses=error_responses(400, 401, 403, 404),
    )
    def put_tags(
        change: TagsChange,
        device_id: str = PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"),
    ) -> dict[str, Any]:
        """Edit a device's cohort tags (they pick its waves; a live rollout sees them next tick)."""
        return edit_tags(
            ctx.store,
            device_id,
            replace=change.set,
            add=change.add,
            remove=change.remove,
            reason=change.reason,
        )

    @router.get(
        "/api/v1/alert-settings",
        tags=["alerts"],
        dependencies=operate,
        responses=error_responses(401, 403),
    )
    def get_settings() -> dict[str, Any]:
        """Alert sinks and when fleet-wide alerts fire."""
        return dict(ctx.store.get_alert_settings().to_json())

    @router.patch(
        "/api/v1/alert-settings",
        tags=["alerts"],
        dependencies=operate,
        responses=error_responses(400, 401, 403),
    )
    def change_settings(change: SettingsChange) -> dict[str, Any]:
        """Change the patch grace, the least CVSS alerted on or the online-role expiry margin."""
        return dict(apply_settings(ctx.store, change.model_dump()).to_json())

    @router.post(
        "/api/v1/alert-settings/sinks",
        tags=["alerts"],
        status_code=201,
        dependencies=operate,
        responses=error_responses(400, 401, 403),
    )
    def post_sink(sink: SinkRequest) -> dict[str, Any]:
        """Add a webhook or SNS sink (private addresses stay refused through the API)."""
        if sink.allow_private:
            raise ApiError(
                400,
                "bad_request",
                "allow_private can only be set on the server's host ('tufota alert sink add "
                "--allow-private --repo REPO')",
            )
        return dict(add_sink(ctx.store, sink.model_dump()).to_json())

    @router.delete(
        "/api/v1/alert-settings/sinks/{name}",
        tags=["alerts"],
        dependencies=operate,
        responses=error_responses(401, 403, 404),
    )
    def delete_sink(
        name: str = PathParam(pattern=r"^[A-Za-z0-9-]{1,64}$"),
    ) -> dict[str, Any]:
        """Remove an alert sink."""
        return dict(remove_sink(ctx.store, name).to_json())

    @router.post(
        "/api/v1/alert-settings/test",
        tags=["alerts"],
        dependencies=operate,
        responses=error_responses(401, 403),
    )
    def post_test_alert() -> dict[str, Any]:
        """Open and resolve a test alert and deliver both to every sink."""
        return send_test_alert(ctx.controller, "the server")

    return router
