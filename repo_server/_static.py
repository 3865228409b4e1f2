"""Serving the static TUF tree: metadata and targets, with HTTP caching and ranges.

Invariants: only keys under ``metadata/`` and ``targets/`` are reachable, each
validated by ``check_key`` (no traversal, no dot files); everything else under
the repository directory, keys above all, has no route. Responses carry
``ETag`` and ``Last-Modified``; ``If-None-Match`` / ``If-Modified-Since`` give
304; a single ``Range`` gives 206 (resumable downloads), an unsatisfiable one
416.
"""

from __future__ import annotations

import re
from email.utils import formatdate, parsedate_to_datetime

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from repo_server._errors import ApiError
from repo_server._storage import ObjectInfo, Storage, cache_control, check_key
from tufota_core import InputError, NotFoundError

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _not_modified(request: Request, info: ObjectInfo) -> bool:
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        return (
            info.etag in [t.strip() for t in if_none_match.split(",")]
            or if_none_match.strip() == "*"
        )
    since = request.headers.get("if-modified-since")
    if since:
        try:
            return int(info.mtime) <= parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError):
            return False
    return False


def serve_object(storage: Storage, request: Request, key: str) -> Response:
    """Answer a GET or HEAD for ``key``."""
    try:
        check_key(key)
        info = storage.stat(key)
    except NotFoundError:  # before InputError: it is a subclass
        raise ApiError(404, "not_found", f"{key} does not exist") from None
    except InputError:
        raise ApiError(400, "bad_path", f"invalid path {key!r}") from None
    headers = {
        "ETag": info.etag,
        "Last-Modified": formatdate(info.mtime, usegmt=True),
        "Accept-Ranges": "bytes",
        "Cache-Control": cache_control(key),
    }
    if _not_modified(request, info):
        return Response(status_code=304, headers=headers)
    media = "application/json" if key.endswith(".json") else "application/octet-stream"
    start, end, status = 0, info.size - 1, 200
    range_header = request.headers.get("range")
    if range_header and request.headers.get("if-range", info.etag) == info.etag:
        match = _RANGE.match(range_header.strip())
        if match is None or match.groups() == ("", ""):
            raise ApiError(
                416,
                "bad_range",
                f"unsupported Range {range_header!r}",
                headers={"Content-Range": f"bytes */{info.size}"},
            )
        first, last = match.groups()
        if first == "":
            start = max(info.size - int(last), 0)
        else:
            start = int(first)
            end = min(int(last), info.size - 1) if last else info.size - 1
        if start >= info.size or start > end:
            raise ApiError(
                416,
                "bad_range",
                f"Range {range_header!r} is outside 0-{info.size - 1}",
                headers={"Content-Range": f"bytes */{info.size}"},
            )
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    headers["Content-Length"] = str(end - start + 1 if info.size else 0)
    if request.method == "HEAD" or info.size == 0:
        return Response(status_code=status, headers=headers, media_type=media)
    return StreamingResponse(
        storage.iter_range(key, start, end), status_code=status, headers=headers, media_type=media
    )
