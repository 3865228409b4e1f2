"""Device routes: registration and status for operators, signed status reports from devices.

Invariants: a report is applied only after its signature verified against the
device's registered key and its sequence number is above the last accepted
one; a refused report changes nothing; a 202 is sent only once the report is
committed (``_ingest``: group commit on one writer thread). Registering, accepting and revoking
need the ``operate`` permission; listing and reading need ``read``. Device
keys are never echoed whole: operators see their id and type.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Request, Response
from pydantic import BaseModel, Field

from repo_server import _devices
from repo_server._context import ServerContext
from repo_server._errors import error_responses
from repo_server._opsdata import device_detail
from tufota_core import check_hardware_id


class DeviceRegistration(BaseModel):
    """A device whose key was generated on the device."""

    device_id: str = Field(description="unique device id", max_length=128)
    hardware_id: str = Field(description="the device's product line", max_length=63)
    public_key: dict[str, Any] | str = Field(
        description="device.pub as a JSON object, or a PEM 'PUBLIC KEY' block"
    )
    tags: list[str] = Field(default_factory=list, description="cohort tags", max_length=32)


class ReportAccepted(BaseModel):
    """The answer to a report committed to the tracker."""

    accepted: bool = True
    seq: int = Field(description="the report's sequence number, now the device's last_seq")
    transition: bool = Field(
        description="the report changed the device's state, version, target or error"
    )


_REPORT_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "description": "a signed envelope: {report: tufota_core.Report, signature}",
                "required": ["report", "signature"],
                "properties": {"report": {"type": "object"}, "signature": {"type": "object"}},
            }
        }
    },
}


class StatusChange(BaseModel):
    """Why an operator accepts or revokes a device."""

    reason: str = Field(default="", max_length=1024)


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()
    operate = [Depends(ctx.require("operate"))]
    read = [Depends(ctx.require("read"))]

    @router.post(
        "/api/v1/devices/{device_id}/reports",
        tags=["devices"],
        status_code=202,
        response_model=ReportAccepted,
        responses=error_responses(400, 401, 403, 409, 413),
        openapi_extra={"requestBody": _REPORT_BODY},
    )
    async def post_report(device_id: str, request: Request) -> Response:
        """Accept a signed status report (see ``tufota_core.Report``).

        The 202 is sent once the report is committed to the tracker.
        """
        ingestor = ctx.report_ingestor()  # ``_ingest.ReportFastPath`` answers it first
        status, payload = await ingestor.ingest(device_id, await request.body())
        return Response(payload, status, media_type="application/json")

    @router.get(
        "/api/v1/devices",
        tags=["devices"],
        dependencies=read,
        responses=error_responses(400, 401, 403),
    )
    def list_devices(
        status: Literal["pending", "accepted", "revoked"] | None = None,
        hardware_id: str | None = None,
    ) -> dict[str, Any]:
        """Registered devices, optionally by registration status or hardware id."""
        if hardware_id is not None:
            check_hardware_id(hardware_id)
        devices = ctx.store.list_devices(hardware_id)
        return {
            "devices": [
                _devices.device_json(d) for d in devices if status is None or d.status == status
            ]
        }

    @router.post(
        "/api/v1/devices",
        tags=["devices"],
        status_code=201,
        dependencies=operate,
        responses=error_responses(400, 401, 403, 404, 409),
    )
    def register_device(registration: DeviceRegistration) -> dict[str, Any]:
        """Register a device key generated on the device; it stays pending until accepted."""
        device = _devices.register(
            ctx.store,
            ctx.publisher.storage,
            registration.device_id,
            registration.hardware_id,
            registration.public_key,
            registration.tags,
        )
        return {"device": _devices.device_json(device)}

    def _change(device_id: str, status: str, change: StatusChange | None) -> dict[str, Any]:
        changed = _devices.set_status(ctx.store, device_id, status, change.reason if change else "")
        return {"device": _devices.device_json(ctx.store.get_device(device_id)), "changed": changed}

    @router.post(
        "/api/v1/devices/{device_id}/accept",
        tags=["devices"],
        dependencies=operate,
        responses=error_responses(400, 401, 403, 404, 409),
    )
    def accept_device(
        device_id: str,
        change: StatusChange | None = Body(default=None),  # noqa: B008
    ) -> dict[str, Any]:
        """Let a pending device report (a revoked one stays revoked)."""
        return _change(device_id, "accepted", change)

    @router.post(
        "/api/v1/devices/{device_id}/revoke",
        tags=["devices"],
        dependencies=operate,
        responses=error_responses(400, 401, 403, 404),
    )
    def revoke_device(
        device_id: str,
        change: StatusChange | None = Body(default=None),  # noqa: B008
    ) -> dict[str, Any]:
        """Refuse every further report of a device, for good."""
        return _change(device_id, "revoked", change)

    @router.get(
        "/api/v1/devices/{device_id}",
        tags=["devices"],
        dependencies=read,
        responses=error_responses(400, 401, 403, 404),
    )
    def get_device(device_id: str) -> dict[str, Any]:
        """A device and its history of reports."""
        # The same builder as 'tufota device show --repo' (local and remote JSON agree).
        return device_detail(ctx.store, device_id)

    return router
