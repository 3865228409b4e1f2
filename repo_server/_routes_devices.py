"""Device routes: registration and status for operators, signed status reports from devices.

Invariants: a report is applied only after its signature verified against the
device's registered key and its sequence number is above the last accepted
one; a refused report changes nothing. Registering, accepting and revoking
need the ``operate`` permission; listing and reading need ``read``. Device
keys are never echoed whole: operators see their id and type.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, Field
from securesystemslib.signer import SSlibKey

from repo_server import _devices
from repo_server._context import ServerContext
from repo_server._errors import ApiError, error_responses
from staging import ReplayError
from tufota_core import (
    MAX_REPORT_BYTES,
    ConflictError,
    InputError,
    NotFoundError,
    VerificationError,
    check_device_id,
    parse_envelope,
    utcnow,
    verify_report,
)


class DeviceRegistration(BaseModel):
    """A device whose key was generated on the device."""

    device_id: str = Field(description="unique device id", max_length=128)
    hardware_id: str = Field(description="the device's product line", max_length=63)
    public_key: dict[str, Any] | str = Field(
        description="device.pub as a JSON object, or a PEM 'PUBLIC KEY' block"
    )
    tags: list[str] = Field(default_factory=list, description="cohort tags", max_length=32)


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
        responses=error_responses(400, 401, 403, 409, 413),
    )
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
        device = _devices.device_json(ctx.store.get_device(check_device_id(device_id)))
        history = [e.to_json() for e in ctx.store.device_history(device_id, limit=200)]
        return {"device": device, "history": history}

    return router
