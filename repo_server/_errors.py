"""HTTP errors: every error body is ``{"error": CODE, "message": TEXT}``."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tufota_core import (
    ConflictError,
    InputError,
    NotFoundError,
    RepositoryError,
    TufotaError,
    VerificationError,
)


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
    if isinstance(error, RepositoryError):
        return 500
    return 500


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _tufota_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TufotaError)
    return error_response(status_for(exc), exc.code, str(exc))


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(400, "bad_request", f"{where}: {first.get('msg', 'invalid request')}")


EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    TufotaError: _tufota_error,
    StarletteHTTPException: _http_error,
    RequestValidationError: _validation_error,
}
