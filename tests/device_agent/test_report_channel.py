"""The report channel is bounded: a hostile answer to a report never stops an update.

A hostile proxy on loopback forwards the repository faithfully but answers
every report POST itself: an answer far longer than any report answer, a body
that trickles one byte a second, or a status line that trickles. The agent's
cycle must end in bounded time and memory, still install the update, and keep
its reports queued for a later cycle.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from device_agent import ACTION_REBOOTING, AgentLimits, CycleResult
from tests.device_agent.conftest import Env
from tests.device_agent.mirror import Body, Mirror, endless_answer, trickle

_HEAD = b"HTTP/1.1 202 Accepted\r\nContent-Length: 100000\r\n\r\n"


def _trickled_body() -> Iterator[bytes]:
    yield _HEAD
    yield from trickle(b"x" * 100000, 1.0)()


ANSWERS: dict[str, Body] = {
    # 256 MiB stands in for "endless": enough to be noticed, not enough to
    # take the machine down when the channel is unbounded.
    "endless": endless_answer(256 * 1024 * 1024),
    "trickled-body": _trickled_body,
    "trickled-head": trickle(_HEAD, 1.0),
}


@pytest.fixture
def mirror(env: Env) -> Iterator[Mirror]:
    proxy = Mirror(env.url)
    try:
        yield proxy
    finally:
        proxy.close()


def _run_bounded(env: Env, limit: float) -> tuple[CycleResult | None, float, int]:
    """Run one cycle in a thread; return its result (None if it hung), seconds, peak bytes."""
    results: list[CycleResult] = []
    agent = env.agent()
    tracemalloc.start()
    start = time.monotonic()
    thread = threading.Thread(target=lambda: results.append(agent.run_once()), daemon=True)
    thread.start()
    thread.join(limit)
    elapsed = time.monotonic() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (results[0] if results else None), elapsed, peak


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_hostile_report_answers_cost_one_deadline_and_the_update_still_installs(
    env: Env, mirror: Mirror, answer: str
) -> None:
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    env.config = dataclasses.replace(
        env.config,
        server_url=mirror.url,
        limits=AgentLimits(report_deadline=2.0, flush_deadline=5.0),
    )
    mirror.rewrites.answers["/reports"] = ANSWERS[answer]

    result, elapsed, peak = _run_bounded(env, 30.0)

    assert result is not None, f"the cycle hung on a {answer} report answer"
    assert result.action == ACTION_REBOOTING
    assert elapsed < 10.0
    assert peak < 24 * 1024 * 1024  # one 4 MiB download buffer, not the answer
    assert result.reports_pending == 4  # downloading .. rebooting, all kept
    assert env.server.reports == []

    # The path heals: the next cycle delivers everything, in order.
    mirror.rewrites.answers.clear()
    follow = env.agent().run_once()

    assert follow.reports_pending == 0
    states = env.server.states()
    assert states[:4] == ["downloading", "downloaded", "installing", "rebooting"]
    assert states[-1] == "succeeded"
