"""S3 storage: the repository's served tree in a bucket, for serving through a CDN.

Objects live at ``<prefix>/<key>`` (``metadata/...``, ``targets/...``), the
same keys as on a local directory, so a CDN in front of the bucket serves
exactly what ``tufota serve`` serves.

Invariants:

* ``put`` and ``put_file`` are atomic per object: S3 makes an object visible
  only when its (single or multipart) upload completes, so a reader sees the
  old bytes or the new bytes, never a mix.
* Every write asks for server-side encryption (``AES256`` by default,
  ``aws:kms`` with an optional key id, or ``none`` for stores without it).
* The publishing lock is an object, ``<prefix>/.tufota/publish.lock``, created
  with a conditional write (``If-None-Match: *``), so two servers or CLIs
  against one bucket exclude each other. It is a short lease
  (``ServerLimits.lock_lease_seconds``, 30 s by default) that the holder
  renews every ``lock_heartbeat_seconds`` while it publishes; a lock not
  renewed within its lease is presumed abandoned by a crashed writer and
  taken over with ``If-Match`` on its ETag, so exactly one of several
  waiting writers wins. Release deletes it with ``If-Match``, so a writer
  whose lease was taken over never deletes the new owner's lock. A waiter
  that gives up names the holder, the time left on its lease and the object
  to delete. The remaining limitation (docs/decisions/0005): a writer whose
  heartbeat cannot reach S3 for longer than its lease can overlap the writer
  that took over.
* Keys with a dot segment (the lock) are never listed and never served:
  ``check_key`` refuses them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from repo_server._config import ServerLimits
from repo_server._storage import ObjectInfo, Storage, cache_control, check_key
from tufota_core import (
    ConflictError,
    InputError,
    NotFoundError,
    RepositoryError,
    TransportError,
)

logger = logging.getLogger(__name__)


class LockBusyError(ConflictError):
    """Another live (or recently dead) writer holds the publishing lock."""


class _Lease:
    """The lock this writer holds: its current ETag, renewed by the heartbeat."""

    def __init__(self, etag: str) -> None:
        self.etag = etag
        self.stop = threading.Event()


SSE_CHOICES = ("AES256", "aws:kms", "none")
LOCK_KEY = ".tufota/publish.lock"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CHUNK = 64 * 1024
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


@dataclass(frozen=True)
class S3Location:
    """``s3://BUCKET/PREFIX``: a bucket and a key prefix (without slashes at either end)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Parse an ``s3://`` URL.

        Raises:
            InputError: not an ``s3://`` URL, a bad bucket name or an unsafe prefix.
        """
        if not url.startswith("s3://"):
            raise InputError(f"{url!r} is not an s3:// URL")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise InputError(f"{url!r}: {bucket!r} is not a valid S3 bucket name")
        prefix = prefix.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except InputError:
                raise InputError(f"{url!r}: prefix {prefix!r} is not a safe key prefix") from None
        return cls(bucket, prefix)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def is_s3_url(value: str) -> bool:
    return value.startswith("s3://")


class S3Storage(Storage):
    """Repository objects in an S3 bucket (or any S3-compatible store)."""

    def __init__(
        self,
        location: S3Location,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        sse: str = "AES256",
        kms_key_id: str | None = None,
        limits: ServerLimits | None = None,
        client: Any = None,
    ) -> None:
        """Connect lazily; credentials come from boto3's usual chain, never from config.

        Raises:
            InputError: an unknown ``sse`` mode, or a KMS key id without ``aws:kms``.
        """
        if sse not in SSE_CHOICES:
            raise InputError(f"server-side encryption {sse!r} is not one of {SSE_CHOICES}")
        if kms_key_id and sse != "aws:kms":
            raise InputError("a KMS key id needs server-side encryption 'aws:kms'")
        self.location = location
        self.limits = limits or ServerLimits()
        self._base = f"{location.prefix}/" if location.prefix else ""
        self._sse: dict[str, str] = {}
        if sse != "none":
            self._sse["ServerSideEncryption"] = sse
        if kms_key_id:
            self._sse["SSEKMSKeyId"] = kms_key_id
        self._client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"}),
        )
        self._thread_lock = threading.Lock()
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def __repr__(self) -> str:
        return f"S3Storage({self.location.url})"

    def close(self) -> None:
        self._client.close()

    def _key(self, key: str) -> str:
        return self._base + check_key(key)

    def _fail(self, key: str, e: Exception) -> Exception:
        """The project error for a boto failure on ``key``."""
        if isinstance(e, ClientError):
            code = _code(e)
            if code in _NOT_FOUND:
                return NotFoundError(f"{key} does not exist")
            if code == "NoSuchBucket":
                return RepositoryError(f"bucket {self.location.bucket} does not exist")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return RepositoryError(f"access to {self.location.url}/{key} denied ({code})")
            return TransportError(f"S3 refused {key}: {code or e}")
        return TransportError(f"cannot reach S3 for {key}: {e}")

    # -- Storage -------------------------------------------------------------

    def get(self, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.location.bucket, Key=self._key(key))
            with contextlib.closing(response["Body"]) as body:
                data: bytes = body.read()
                return data
        except (ClientError, BotoCoreError) as e:
            raise self._fail(key, e) from e

    def put(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(
                Bucket=self.location.bucket,
                Key=self._key(key),
                Body=data,
                ContentType=_content_type(key),
                CacheControl=cache_control(key),
                **self._sse,
            )
        except (ClientError, BotoCoreError) as e:
            raise self._fail(key, e) from e

    def put_file(self, key: str, path: Path) -> None:
        # upload_file switches to a multipart upload for large files; S3 shows
        # the object only once CompleteMultipartUpload succeeds.
        try:
            self._client.upload_file(
                str(path),
                self.location.bucket,
                self._key(key),
                ExtraArgs={
                    "ContentType": _content_type(key),
                    "CacheControl": cache_control(key),
                    **self._sse,
                },
                Config=TransferConfig(use_threads=False),
            )
        except (ClientError, BotoCoreError) as e:
            raise self._fail(key, e) from e
        except boto3.exceptions.S3UploadFailedError as e:
            raise TransportError(f"uploading {key} to S3 failed: {e}") from e

    def stat(self, key: str) -> ObjectInfo:
        try:
            head = self._client.head_object(Bucket=self.location.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as e:
            raise self._fail(key, e) from e
        return ObjectInfo(
            size=int(head["ContentLength"]),
            mtime=head["LastModified"].timestamp(),
            etag=str(head["ETag"]),
        )

    def iter_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        try:
            response = self._client.get_object(
                Bucket=self.location.bucket, Key=self._key(key), Range=f"bytes={start}-{end}"
            )
        except (ClientError, BotoCoreError) as e:
            raise self._fail(key, e) from e
        body = response["Body"]

        def chunks() -> Iterator[bytes]:
            with contextlib.closing(body):
                try:
                    yield from body.iter_chunks(_CHUNK)
                except BotoCoreError as e:
                    raise self._fail(key, e) from e

        return chunks()

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=self._base + prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key = str(item["Key"])[len(self._base) :]
                    try:
                        keys.append(check_key(key))
                    except InputError:
                        continue  # the lock and anything else hidden
        except (ClientError, BotoCoreError) as e:
            raise self._fail(prefix or "/", e) from e
        return sorted(keys)

    # -- the publishing lock ---------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the bucket-wide publishing lock (see the module docstring).

        While held, a heartbeat thread renews the lease every
        ``lock_heartbeat_seconds``, so a live publisher keeps it however long it
        takes and a dead one loses it ``lock_lease_seconds`` after its last renewal.

        Raises:
            ConflictError: another writer held the lock for ``lock_timeout_seconds``;
                the message names it, the time left on its lease and how to clear it.
        """
        with self._thread_lock:
            lease = _Lease(self._acquire())
            beat = threading.Thread(target=self._heartbeat, args=(lease,), daemon=True)
            beat.start()
            try:
                yield
            finally:
                lease.stop.set()
                beat.join()
                self._release(lease.etag)

    def _heartbeat(self, lease: _Lease) -> None:
        while not lease.stop.wait(self.limits.heartbeat_seconds):
            try:
                lease.etag = self._put_lock(IfMatch=lease.etag)
            except ClientError as e:
                if _code(e) in _PRECONDITION | _NOT_FOUND:
                    logger.error(
                        "the publishing lock of %s was taken over or deleted while this "
                        "writer held it; another writer may publish concurrently",
                        self.location.url,
                    )
                    return
                logger.warning("cannot renew the publishing lock, retrying: %s", e)
            except BotoCoreError as e:
                logger.warning("cannot renew the publishing lock, retrying: %s", e)

    @property
    def lock_url(self) -> str:
        """Where the publishing lock object lives (for an operator who must clear it)."""
        return f"s3://{self.location.bucket}/{self._base}{LOCK_KEY}"

    def _lock_body(self, owner: str) -> bytes:
        now = time.time()
        return json.dumps(
            {"owner": owner, "renewed": now, "expires": now + self.limits.lock_lease_seconds}
        ).encode()

    def _put_lock(self, **condition: str) -> str:
        response = self._client.put_object(
            Bucket=self.location.bucket,
            Key=self._base + LOCK_KEY,
            Body=self._lock_body(self._owner),
            ContentType="application/json",
            **condition,
            **self._sse,
        )
        return str(response["ETag"])

    def _acquire(self) -> str:
        deadline = time.monotonic() + self.limits.lock_timeout_seconds
        holder = "another writer"
        expires = 0.0
        while True:
            try:
                try:
                    return self._put_lock(IfNoneMatch="*")
                except ClientError as e:
                    if _code(e) not in _PRECONDITION:
                        raise
                # Someone holds it: take it over when its lease ran out.
                try:
                    current = self._client.get_object(
                        Bucket=self.location.bucket, Key=self._base + LOCK_KEY
                    )
                    with contextlib.closing(current["Body"]) as body:
                        info = json.loads(body.read())
                    etag = str(current["ETag"])
                except ClientError as e:
                    if _code(e) in _NOT_FOUND:
                        continue  # released meanwhile: try again at once
                    raise
                except ValueError:
                    info, etag = {"owner": "unreadable lock", "expires": 0}, str(current["ETag"])
                if not isinstance(info, dict):
                    info = {"owner": "unreadable lock", "expires": 0}
                holder = str(info.get("owner", holder))[:200]
                try:
                    expires = float(info.get("expires", 0))
                except (TypeError, ValueError):
                    expires = 0.0
                if expires < time.time():
                    try:
                        new_etag = self._put_lock(IfMatch=etag)
                    except ClientError as e:
                        if _code(e) not in _PRECONDITION | _NOT_FOUND:
                            raise
                    else:
                        logger.warning("took over the publishing lock abandoned by %s", holder)
                        return new_etag
            except (ClientError, BotoCoreError) as e:
                raise self._fail(LOCK_KEY, e) from e
            if time.monotonic() > deadline:
                left = max(0.0, expires - time.time())
                raise LockBusyError(
                    f"{self.location.url} is being published by {holder}; its lease ends in "
                    f"{left:.0f}s unless renewed (a live publisher renews it every "
                    f"{self.limits.heartbeat_seconds:.0f}s); gave up after "
                    f"{self.limits.lock_timeout_seconds:.0f}s. If {holder} is dead, retry "
                    f"after the lease ends or delete {self.lock_url} to clear it now"
                )
            time.sleep(self.limits.lock_poll_seconds)

    def _release(self, etag: str) -> None:
        try:
            self._client.delete_object(
                Bucket=self.location.bucket, Key=self._base + LOCK_KEY, IfMatch=etag
            )
        except ClientError as e:
            if _code(e) in _PRECONDITION | _NOT_FOUND:
                logger.warning("the publishing lock was taken over before this writer released it")
            else:
                logger.error("cannot release the publishing lock: %s", e)
        except BotoCoreError as e:
            logger.error("cannot release the publishing lock: %s", e)


def _content_type(key: str) -> str:
    return "application/json" if key.endswith(".json") else "application/octet-stream"
