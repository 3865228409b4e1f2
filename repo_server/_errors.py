"""HTTP errors: every error body is ``{"error": CODE, "message": TEXT}``.

Invariants: client mistakes get 4xx with a code naming the problem; an
unexpected exception gets 500 ``internal_error`` without internals (they go
to the log); S3 or network trouble behind the server is 503.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from staging import StoreError
from tufota_core import (
    ConflictError,
    InputError,
    NotFoundError,
    RepositoryError,
    TransportError,
    TufotaError,
    VerificationError,
)

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str
    message: str


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route may answer."""
    text = {
        400: "Bad request: malformed body, parameter or bundle",
        401: "No API token, or an unknown one",
        403: "The token's role may not do this",
        404: "No such object",
        409: "Conflicts with the current state (version replay, duplicate)",
        413: "Body too large",
        422: "A signature, threshold, hash or path check failed",
        503: "The storage behind the server is unreachable",
    }
    return {s: {"model": ErrorBody, "description": text.get(s, "Error")} for s in statuses}


class ApiError(Exception):
    """An error answered with ``status`` and a JSON body."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def status_for(error: TufotaError) -> int:
    """The HTTP status a project error maps to."""
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, InputError):
        return 400
    if isinstance(error, ConflictError):
        return 409
    if isinstance(error, VerificationError):
        return 422
    if isinstance(error, TransportError | StoreError):
        # The database is unavailable or locked: nothing changed, retry later.
        return 503
    if isinstance(error, RepositoryError):
        return 500
    return 500


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _tufota_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TufotaError)
    status = status_for(exc)
    if status >= 500:
        logger.error("%s: %s", type(exc).__name__, exc)
    return error_response(status, exc.code, str(exc))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers at this path (Starlette lists only the first)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        route_methods = getattr(route, "methods", None)
        if match != Match.NONE and route_methods:
            methods |= set(route_methods)
    return sorted(methods)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return error_response(exc.status_code, code, str(exc.detail), headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(400, "bad_request", f"{where}: {first.get('msg', 'invalid request')}")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "the server failed; see its log")


EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    TufotaError: _tufota_error,
    StarletteHTTPException: _http_error,
    RequestValidationError: _validation_error,
    Exception: _unexpected,
}
