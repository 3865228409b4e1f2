"""Latency on a reused connection: no Nagle delay between a response's writes."""

from __future__ import annotations

import http.client
import statistics
import time
from collections.abc import Iterator

import pytest

from repo_server import Repository, ServerContext, ServerThread, create_app
from staging import RolloutController, SqliteTrackerStore
from tests.conftest import ask


@pytest.fixture
def thread(released_repo: Repository) -> Iterator[ServerThread]:
    publisher = released_repo.publisher(ask)
    store = SqliteTrackerStore(released_repo.tracker_path)
    ctx = ServerContext(publisher, store, RolloutController(store, publisher))
    with ServerThread(create_app(ctx, background=False)) as running:
        yield running
    store.close()


def test_sequential_requests_on_one_connection_answer_within_milliseconds(
    thread: ServerThread,
) -> None:
    conn = http.client.HTTPConnection(thread.host, thread.port, timeout=5)
    times = []
    try:
        for path in ["/metadata/timestamp.json", "/api/v1/health"] * 10:
            start = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            times.append(time.perf_counter() - start)
            assert response.status == 200
            assert not response.will_close
    finally:
        conn.close()
    # With Nagle on, each answer after the first waited ~40 ms for the
    # client's delayed ACK.
    assert statistics.median(times[1:]) < 0.010, [round(t * 1000, 1) for t in times]
