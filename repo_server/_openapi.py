"""The OpenAPI document states what the server does, not what FastAPI guesses.

Invariants of ``describe(app)`` (checked by the schemathesis run in the tests):

* No operation documents 422: validation errors are answered 400
  (``_errors``). Every operation documents the error statuses it can answer
  with the common ``ErrorBody``: 400 and 421 (Host) everywhere, 401/403 where a
  token or a device signature is needed, 404 where a path names an object,
  409/413 where a body is taken.
* Path and query parameters carry the constraints the server enforces:
  ``device_id`` and ``hardware`` patterns, alert ``state`` and ``kind`` enums,
  the rollout ``action`` enum, limits' ranges.
* ``/metrics`` is ``text/plain`` (Prometheus exposition), not JSON; the report
  and rollout-start bodies have their real schemas.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from staging import ALERT_KINDS, PRESETS
from tufota_core import DEVICE_STATES, MAX_REPORT_BYTES

DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
HARDWARE_ID = r"^[a-z0-9][a-z0-9_-]{0,62}$"
SEMVER = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)
MAX_SEQ = 2**62
_ACTIONS = ["pause", "resume", "abort", "advance", "complete"]
_UNAUTHENTICATED = {"/api/v1/health", "/openapi.json"}
_TEXT = {
    400: "Bad request: malformed body, parameter or bundle",
    401: "No API token, an unknown or expired one, or a device signature that does not verify",
    403: "The token's role may not do this, or the device is not accepted",
    404: "No such object",
    409: "Conflicts with the current state (replayed report, duplicate, rollout state)",
    413: "Body too large",
    421: "The Host header is not one of this server's names",
}
_ERROR_BODY = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}
_NULLABLE_SEMVER = {
    "anyOf": [{"type": "string", "pattern": SEMVER, "maxLength": 64}, {"type": "null"}]
}
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["device_id", "hardware_id", "seq", "state"],
    "properties": {
        "device_id": {"type": "string", "pattern": DEVICE_ID},
        "hardware_id": {"type": "string", "pattern": HARDWARE_ID},
        "seq": {"type": "integer", "minimum": 1, "maximum": MAX_SEQ},
        "state": {"type": "string", "enum": list(DEVICE_STATES)},
        "installed_version": _NULLABLE_SEMVER,
        "target_version": _NULLABLE_SEMVER,
        "rollout_id": {"anyOf": [{"type": "string", "maxLength": 128}, {"type": "null"}]},
        "error_code": {
            "anyOf": [{"type": "string", "pattern": r"^[a-z][a-z0-9_]{0,63}$"}, {"type": "null"}]
        },
        "message": {"type": "string", "maxLength": 1024},
        "bytes_done": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
        "bytes_total": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
        "time": {"type": "string", "maxLength": 64},
    },
}
_REPORT_ENVELOPE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["report", "signature"],
    "description": f"a signed envelope, at most {MAX_REPORT_BYTES} bytes",
    "properties": {
        "report": REPORT_SCHEMA,
        "signature": {
            "type": "object",
            "required": ["keyid", "sig"],
            "properties": {
                "keyid": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "sig": {"type": "string", "pattern": "^[0-9a-f]{2,1024}$"},
            },
        },
    },
}
_DURATION = {"anyOf": [{"type": "string", "pattern": r"^[0-9]{1,15}[smhd]?$"}, {"type": "integer"}]}
_FRACTION = {"anyOf": [{"type": "string", "maxLength": 16}, {"type": "number"}]}
_ROLLOUT_START = {
    "type": "object",
    "additionalProperties": False,
    "required": ["hardware_id", "version"],
    "properties": {
        "hardware_id": {"type": "string", "pattern": HARDWARE_ID},
        "version": {"type": "string", "pattern": SEMVER, "maxLength": 64},
        "waves": {"type": "string", "description": "a wave spec, e.g. canary:tag=canary,10%,100%"},
        "preset": {"type": "string", "enum": sorted(PRESETS)},
        "success_threshold": _FRACTION,
        "failure_threshold": _FRACTION,
        "soak": _DURATION,
        "min_devices": {"type": "integer", "minimum": 0},
        "stall_timeout": _DURATION,
        "reboot_timeout": _DURATION,
        "poll_interval": _DURATION,
        "silent_polls": {"type": "integer", "minimum": 1},
        "maintenance_window": {"type": "string", "description": "e.g. Sat 02:00-04:00 UTC"},
        "reason": {"type": "string", "maxLength": 1024},
        "retry_failed": {"type": "boolean"},
        "retry_backoff": _DURATION,
    },
}
_PARAMETERS: dict[str, dict[str, Any]] = {
    "device_id": {"type": "string", "pattern": DEVICE_ID},
    "hardware": {"type": "string", "pattern": HARDWARE_ID},
    "hardware_id": {"type": "string", "pattern": HARDWARE_ID},
    "kind": {"type": "string", "enum": list(ALERT_KINDS)},
    "action": {"type": "string", "enum": _ACTIONS},
}


def _statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    statuses = {400, 421}
    if path not in _UNAUTHENTICATED:
        statuses |= {401, 403}
    if "{" in path or (path == "/api/v1/rollouts" and method == "post"):
        statuses.add(404)  # a named object, or the release a new rollout names
    if method in ("post", "put", "patch", "delete"):
        statuses |= {409, 413}
    if path == "/api/v1/alerts/{alert_id}/resolve":
        statuses.add(409)
    return statuses


def _parameters(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        name = parameter.get("name")
        schema = parameter.setdefault("schema", {})
        if name in _PARAMETERS:
            if "anyOf" in schema:  # optional query parameter: str | None
                schema.clear()
            schema.update(_PARAMETERS[name])
        if name == "state" and parameter.get("in") == "query":
            schema.clear()
            schema.update({"type": "string", "enum": ["open", "all"], "default": "all"})


def build_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, corrected to what the server answers (see the module docstring)."""
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = _ERROR_BODY
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    # The server's own checks give clearer messages than a model pattern would; the
    # schema still states them.
    registration = components.get("DeviceRegistration", {}).get("properties", {})
    if registration:
        registration["device_id"]["pattern"] = DEVICE_ID
        registration["hardware_id"]["pattern"] = HARDWARE_ID
        registration["tags"]["items"]["pattern"] = HARDWARE_ID
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in _statuses(path, method, operation):
                responses.setdefault(str(status), {"description": _TEXT[status], "content": error})
            _parameters(operation)
            if path == "/metrics":
                responses["200"] = {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            if path == "/api/v1/devices/{device_id}/reports":
                body = operation["requestBody"]["content"]["application/json"]
                body["schema"] = _REPORT_ENVELOPE
            if path == "/api/v1/rollouts" and method == "post":
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": _ROLLOUT_START}},
                }
    return schema


def describe(app: FastAPI) -> None:
    """Serve ``build_schema(app)`` at ``/openapi.json`` (built once, on first request)."""
    built: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not built:
            built.update(build_schema(app))
        return built

    app.openapi = openapi  # type: ignore[method-assign]
