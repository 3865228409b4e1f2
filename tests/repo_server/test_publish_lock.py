"""The S3 publishing lock against moto's server over HTTP: a short lease kept alive while
publishing, a dead holder's lock gone within one lease, clear messages, and operator
actions that say whether devices see them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
import requests

from repo_server import (
    LOCK_KEY,
    Repository,
    S3Location,
    S3Storage,
    ServerContext,
    ServerLimits,
    ServerThread,
    create_app,
)
from repo_server._watchdog import published_rollouts
from staging import RolloutController, RolloutOptions, SqliteTrackerStore
from tests.conftest import ask
from tests.repo_server.conftest import HW
from tufota_core import ConflictError, parse_wave_spec


def _s3(bucket: str, endpoint: str, **limits: float) -> S3Storage:
    return S3Storage(
        S3Location(bucket, "p"),
        endpoint_url=endpoint,
        limits=ServerLimits(lock_poll_seconds=0.05, **limits),  # type: ignore[arg-type]
    )


def test_a_live_holder_keeps_its_short_lease_while_it_publishes(
    bucket: str, moto_endpoint: str
) -> None:
    holder = _s3(bucket, moto_endpoint, lock_lease_seconds=1.0)
    waiter = _s3(bucket, moto_endpoint, lock_timeout_seconds=2.5, lock_lease_seconds=1.0)
    try:
        with holder.lock():
            # Three leases long: without renewal the waiter would take the lock over.
            start = time.monotonic()
            with pytest.raises(ConflictError) as refused, waiter.lock():
                pass
            assert time.monotonic() - start >= 2.5
        message = str(refused.value)
        assert "is being published by" in message
        assert "lease ends in" in message
        assert f"s3://{bucket}/p/{LOCK_KEY}" in message  # how to clear it
        with waiter.lock():  # released: free at once
            pass
    finally:
        holder.close()
        waiter.close()


def test_a_dead_holders_lock_is_taken_over_within_one_lease_by_default(
    bucket: str, moto_endpoint: str
) -> None:
    limits = ServerLimits()
    assert limits.lock_lease_seconds <= 30
    assert limits.lock_timeout_seconds > limits.lock_lease_seconds
    crashed = _s3(bucket, moto_endpoint, lock_lease_seconds=1.5)
    survivor = _s3(bucket, moto_endpoint, lock_timeout_seconds=5)
    survivor.list("")
    crashed._acquire()  # and never renewed or released: the process died
    start = time.monotonic()
    try:
        with survivor.lock():
            assert 1.0 <= time.monotonic() - start < 4
    finally:
        crashed.close()
        survivor.close()


@dataclass
class Running:
    url: str
    repo: Repository
    ctx: ServerContext
    operator: dict[str, str]


@pytest.fixture
def s3_server(repo_on: Repository) -> Iterator[Running]:
    assert isinstance(repo_on.storage, S3Storage)
    repo_on.storage.limits = ServerLimits(lock_timeout_seconds=1.0, lock_poll_seconds=0.05)
    publisher = repo_on.publisher(ask)
    store = SqliteTrackerStore(repo_on.tracker_path)
    tokens = repo_on.token_store()
    ctx = ServerContext(publisher, store, RolloutController(store, publisher), tokens=tokens)
    operator = {"Authorization": f"Bearer {tokens.create('ops', 'operator')}"}
    with ServerThread(create_app(ctx, background=False)) as thread:
        yield Running(thread.url, repo_on, ctx, operator)
    store.close()


@pytest.mark.parametrize("backend", ["s3"])
def test_a_pause_while_the_lock_is_held_says_it_is_recorded_and_is_published_later(
    s3_server: Running,
) -> None:
    ctx = s3_server.ctx
    doc = ctx.controller.start(
        HW,
        "1.1.0",
        f"firmware/{HW}/1.1.0/gw-1.1.0.img",
        parse_wave_spec("100%"),
        RolloutOptions(),
    )
    storage = s3_server.repo.storage
    assert isinstance(storage, S3Storage)
    # Another publisher died holding the lock, with most of its lease left.
    dead = S3Storage(
        storage.location,
        endpoint_url=storage._client.meta.endpoint_url,
        limits=ServerLimits(lock_lease_seconds=300),
    )
    dead._acquire()
    dead.close()
    start = time.monotonic()
    response = requests.post(
        f"{s3_server.url}/api/v1/rollouts/{doc.rollout_id}/pause",
        json={"reason": "line 3 maintenance"},
        headers=s3_server.operator,
        timeout=30,
    )
    assert time.monotonic() - start < 10
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["published"] is False
    assert "pause recorded but not yet published" in body["message"]
    assert "lease ends in" in body["message"]
    assert ctx.store.get_rollout(doc.rollout_id).state == "paused"
    published = published_rollouts(storage)[HW]
    assert not isinstance(published, str)
    assert published.state == "active"  # devices still see the old document
    # The operator clears the lock as the message says; the next tick publishes.
    client = boto3.client("s3", endpoint_url=storage._client.meta.endpoint_url)
    client.delete_object(
        Bucket=storage.location.bucket, Key=f"{storage.location.prefix}/{LOCK_KEY}"
    )
    client.close()
    ctx.controller.tick()
    published = published_rollouts(storage)[HW]
    assert not isinstance(published, str)
    assert published.state == "paused"
    record = ctx.store.get_rollout(doc.rollout_id)
    assert record.published_revision == record.revision
    # With the lock free an action takes effect at once and says so.
    resumed = requests.post(
        f"{s3_server.url}/api/v1/rollouts/{doc.rollout_id}/resume",
        json={},
        headers=s3_server.operator,
        timeout=30,
    )
    assert resumed.status_code == 200
    assert resumed.json()["published"] is True
