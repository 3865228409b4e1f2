"""Device routes: signed status reports in, a device's history out.

Invariant: a report is applied only after its signature verified against the
device's registered key and its sequence number is above the last accepted
one; a refused report changes nothing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from securesystemslib.signer import SSlibKey

from repo_server._context import ServerContext
from repo_server._errors import ApiError
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


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()

    @router.post("/api/v1/devices/{device_id}/reports", tags=["devices"], status_code=202)
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
        "/api/v1/devices/{device_id}", tags=["devices"], dependencies=[Depends(ctx.require("read"))]
    )
    def get_device(device_id: str) -> dict[str, Any]:
        """A device and its history of reports."""
        device = ctx.store.get_device(device_id).to_json()
        device.pop("public_key", None)
        history = [e.to_json() for e in ctx.store.device_history(device_id, limit=200)]
        return {"device": device, "history": history}

    return router
