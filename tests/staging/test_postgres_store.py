"""What only PostgreSQL has: query translation, URL redaction, locks across replicas."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from repo_server._errors import status_for
from repo_server._leader import Leadership
from staging import PostgresTrackerStore, StagingConfig, StoreError, redact
from staging._postgres import translate
from tufota_core import ConflictError


def test_queries_are_translated_outside_string_literals() -> None:
    assert translate("SELECT * FROM t WHERE a = ? AND b = :name") == (
        "SELECT * FROM t WHERE a = %s AND b = %(name)s"
    )
    assert translate("SELECT 'a?b:c%' || x::text, y % 2 FROM t WHERE z = ?") == (
        "SELECT 'a?b:c%%' || x::text, y %% 2 FROM t WHERE z = %s"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://ops:s3cret@db1:5432,db2:5432/tufota",
            "postgresql://ops:***@db1:5432,db2:5432/tufota",
        ),
        ("postgresql://ops@db/tufota", "postgresql://ops@db/tufota"),
        (
            "postgresql://db/tufota?sslmode=require&password=s3cret",
            "postgresql://db/tufota?sslmode=require&password=***",
        ),
    ],
)
def test_passwords_never_reach_messages(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_an_unreachable_database_is_one_clear_error_and_a_503() -> None:
    with pytest.raises(StoreError, match="cannot reach tracker database") as caught:
        PostgresTrackerStore(
            "postgresql://nobody:pw@127.0.0.1:9/none", StagingConfig(busy_timeout_seconds=1)
        )
    assert "pw" not in str(caught.value)
    assert status_for(caught.value) == 503


def test_one_leader_at_a_time_and_another_takes_over_when_it_dies(postgres_url: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from staging import PostgresTrackerStore\n"
            "lock = PostgresTrackerStore(sys.argv[1]).leader_lock('controller')\n"
            "assert lock.try_acquire()\n"
            "print('leading', flush=True)\n"
            "time.sleep(600)\n",
            postgres_url,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "leading"
        with PostgresTrackerStore(postgres_url) as store:
            follower = Leadership(store.leader_lock("controller"), "r2", store)
            assert not follower.check()
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
            killed = time.monotonic()
            while not follower.check():
                assert time.monotonic() - killed < 5, "no takeover within 5 s"
                time.sleep(0.1)
            assert follower.leader_name() == "r2"
            assert store.get_setting("leader")["replica"] == "r2"
            follower.release()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_a_publisher_waiting_for_another_is_told_who_holds_the_lock(postgres_url: str) -> None:
    first = PostgresTrackerStore(postgres_url, application_name="tufota serve r1")
    second = PostgresTrackerStore(postgres_url, application_name="tufota serve r2")
    held = threading.Event()
    done = threading.Event()

    def hold() -> None:
        with first.exclusive("publish", 5):
            held.set()
            done.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        with (
            pytest.raises(ConflictError, match=r"held by tufota serve r1"),
            second.exclusive("publish", 0.5),
        ):
            pass
    finally:
        done.set()
        thread.join()
    with second.exclusive("publish", 2):  # free again once the holder is done
        pass
    first.close()
    second.close()
