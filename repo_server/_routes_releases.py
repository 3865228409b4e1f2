"""``POST /api/v1/releases``: upload a signed release bundle (role uploader).

Invariants: the body is streamed to a private spool file and never held in
memory; a body above ``ServerLimits.max_upload_bytes`` is refused with 413 as
soon as that is known (from ``Content-Length`` or while streaming); the spool
file is deleted whatever happens; verification and publishing run in
``repo_server._upload``, so a refused bundle changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from repo_server._auth import Principal
from repo_server._context import ServerContext
from repo_server._errors import ApiError, error_responses
from repo_server._upload import publish_bundle

logger = logging.getLogger(__name__)

_BUNDLE_BODY = {
    "requestBody": {
        "required": True,
        "description": "a release bundle (tar or tar.gz) as written by 'tufota release sign'",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()
    # Parsing a bundle's metadata costs up to ~20x its size in Python objects;
    # verifying a few bundles at a time keeps the server's memory bounded.
    verifying = asyncio.Semaphore(ctx.limits.max_concurrent_uploads)

    @router.post(
        "/api/v1/releases",
        tags=["releases"],
        status_code=201,
        responses={
            200: {"description": "Already published: nothing changed"},
            **error_responses(400, 401, 403, 409, 413, 422, 503),
        },
        openapi_extra=_BUNDLE_BODY,
    )
    async def upload_release(
        request: Request,
        response: Response,
        principal: Principal = Depends(ctx.require("upload")),  # noqa: B008
    ) -> dict[str, Any]:
        """Verify a signed release bundle against the published trust chain and publish it.

        201 when published; 200 with ``"published": false`` when this exact bundle
        was already published; 4xx naming the problem otherwise, and then the
        repository is unchanged.
        """
        cap = ctx.limits.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "bad_request", "Content-Length is not a number")
            if int(declared) > cap:
                raise ApiError(413, "too_large", f"a release bundle is at most {cap} bytes")
        fd, spool = tempfile.mkstemp(
            prefix="tufota-upload-", suffix=".bundle", dir=ctx.limits.upload_dir
        )
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > cap:
                        raise ApiError(413, "too_large", f"a release bundle is at most {cap} bytes")
                    out.write(chunk)
            if size == 0:
                raise ApiError(400, "empty_body", "the request body must be a release bundle")
            async with verifying:
                result = await asyncio.to_thread(
                    publish_bundle, ctx.publisher, Path(spool), ctx.limits
                )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool)
        if result.published:
            logger.info(
                "release bundle from %s published: %s",
                principal.name,
                ", ".join(f"{r} v{v}" for r, v in sorted(result.roles.items())) or "root/targets",
            )
        else:
            response.status_code = 200
        return result.to_json()

    return router
