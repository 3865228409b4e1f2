"""One storage test suite, run against the local directory and S3 (moto over real HTTP)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from repo_server import LOCK_KEY, S3Location, S3Storage, ServerLimits, Storage
from tufota_core import ConflictError, InputError, NotFoundError

MakeStorage = Callable[..., Storage]


def test_put_get_stat_and_list(make_storage: MakeStorage) -> None:
    storage = make_storage()
    storage.put("metadata/1.root.json", b'{"a": 1}')
    storage.put("targets/firmware/gw/1.0.0/abc.fw.img", b"x" * 1000)
    assert storage.get("metadata/1.root.json") == b'{"a": 1}'
    info = storage.stat("targets/firmware/gw/1.0.0/abc.fw.img")
    assert info.size == 1000
    assert info.etag.startswith('"')
    assert info.mtime > time.time() - 3600
    assert storage.list("") == ["metadata/1.root.json", "targets/firmware/gw/1.0.0/abc.fw.img"]
    assert storage.list("metadata/") == ["metadata/1.root.json"]
    assert storage.exists("metadata/1.root.json")
    assert not storage.exists("metadata/2.root.json")


def test_overwrite_replaces_the_whole_object_and_changes_the_etag(
    make_storage: MakeStorage,
) -> None:
    storage = make_storage()
    storage.put("metadata/timestamp.json", b"old")
    first = storage.stat("metadata/timestamp.json").etag
    storage.put("metadata/timestamp.json", b"new bytes")
    assert storage.get("metadata/timestamp.json") == b"new bytes"
    assert storage.stat("metadata/timestamp.json").etag != first


def test_put_file_streams_a_large_file(make_storage: MakeStorage, tmp_path: Path) -> None:
    storage = make_storage()
    big = tmp_path / "big.img"
    big.write_bytes(bytes(range(256)) * 40_000)  # ~10 MB: a multipart upload on S3
    storage.put_file("targets/big.img", big)
    assert storage.stat("targets/big.img").size == big.stat().st_size
    assert b"".join(storage.iter_range("targets/big.img", 0, 9)) == bytes(range(10))


def test_ranges_are_inclusive(make_storage: MakeStorage) -> None:
    storage = make_storage()
    storage.put("targets/t.bin", bytes(range(100)))
    assert b"".join(storage.iter_range("targets/t.bin", 10, 19)) == bytes(range(10, 20))
    assert b"".join(storage.iter_range("targets/t.bin", 99, 99)) == bytes([99])


@pytest.mark.parametrize("op", ["get", "stat", "iter_range"])
def test_missing_objects_are_not_found(make_storage: MakeStorage, op: str) -> None:
    storage = make_storage()

    def call() -> object:
        if op == "iter_range":
            return b"".join(storage.iter_range("metadata/none.json", 0, 1))
        return getattr(storage, op)("metadata/none.json")

    with pytest.raises(NotFoundError, match="does not exist"):
        call()


@pytest.mark.parametrize(
    "key",
    ["", "/abs", "a//b", "../x", "metadata/../keys/root.key", ".hidden", "a/.lock", "a\\b", "a\0"],
)
def test_unsafe_keys_are_refused_before_any_io(make_storage: MakeStorage, key: str) -> None:
    storage = make_storage()
    with pytest.raises(InputError, match="invalid storage key"):
        storage.put(key, b"x")
    assert storage.list("") == []


def test_two_storages_never_see_each_others_objects(make_storage: MakeStorage) -> None:
    one, two = make_storage("one"), make_storage("two")
    one.put("metadata/timestamp.json", b"1")
    assert two.list("") == []
    assert not two.exists("metadata/timestamp.json")


def test_lock_excludes_a_second_publisher(make_storage: MakeStorage) -> None:
    first, second = make_storage("same"), make_storage("same")
    order: list[str] = []
    inside = threading.Event()

    def hold() -> None:
        with first.lock():
            order.append("first in")
            inside.set()
            time.sleep(0.4)
            order.append("first out")

    thread = threading.Thread(target=hold)
    thread.start()
    inside.wait(5)
    with second.lock():
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]


def test_lock_object_is_never_listed_or_served(make_storage: MakeStorage) -> None:
    storage = make_storage()
    with storage.lock():
        assert storage.list("") == []


# -- S3 only: the lease --------------------------------------------------------------


def _s3(bucket: str, endpoint: str, **limits: float) -> S3Storage:
    return S3Storage(
        S3Location(bucket, "p"),
        endpoint_url=endpoint,
        limits=ServerLimits(lock_poll_seconds=0.05, **limits),  # type: ignore[arg-type]
    )


def test_s3_lock_held_by_another_server_times_out_with_its_owner(
    bucket: str, moto_endpoint: str
) -> None:
    holder = _s3(bucket, moto_endpoint)
    waiter = _s3(bucket, moto_endpoint, lock_timeout_seconds=0.5)
    try:
        with (
            holder.lock(),
            pytest.raises(ConflictError, match="is being published by"),
            waiter.lock(),
        ):
            pass
    finally:
        holder.close()
        waiter.close()


def test_s3_lock_abandoned_by_a_crashed_writer_is_taken_over_after_its_lease(
    bucket: str, moto_endpoint: str
) -> None:
    crashed = _s3(bucket, moto_endpoint, lock_lease_seconds=1.0)
    survivor = _s3(bucket, moto_endpoint, lock_timeout_seconds=5)
    survivor.list("")  # connect first, so the timing below is the lock's alone
    acquired = time.time()
    crashed._acquire()  # and never released: the process died
    try:
        with survivor.lock():
            assert time.time() >= acquired + 1.0
        client = boto3.client("s3", endpoint_url=moto_endpoint)
        listed = client.list_objects_v2(Bucket=bucket, Prefix=f"p/{LOCK_KEY}")
        client.close()
        assert listed.get("KeyCount", 0) == 0  # released
    finally:
        crashed.close()
        survivor.close()


def test_s3_objects_ask_for_encryption_and_carry_cache_headers(
    bucket: str, moto_endpoint: str
) -> None:
    storage = _s3(bucket, moto_endpoint)
    storage.put("metadata/timestamp.json", b"{}")
    storage.put("metadata/2.snapshot.json", b"{}")
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    try:
        ts = client.head_object(Bucket=bucket, Key="p/metadata/timestamp.json")
        snap = client.head_object(Bucket=bucket, Key="p/metadata/2.snapshot.json")
    finally:
        client.close()
        storage.close()
    assert ts["ServerSideEncryption"] == "AES256"
    assert ts["CacheControl"] == "no-cache"
    assert "immutable" in snap["CacheControl"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://bucket/x", "not an s3:// URL"),
        ("s3://B/x", "not a valid S3 bucket name"),
        ("s3://ok-bucket/../x", "not a safe key prefix"),
        ("s3://ok-bucket/a/.hidden", "not a safe key prefix"),
    ],
)
def test_bad_s3_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        S3Location.parse(url)


def test_s3_url_round_trips() -> None:
    assert S3Location.parse("s3://my-bucket/fleet/eu/") == S3Location("my-bucket", "fleet/eu")
    assert S3Location.parse("s3://my-bucket").url == "s3://my-bucket"
