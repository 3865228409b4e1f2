#!/usr/bin/env python3
"""Scale-out benchmarks (PostgreSQL tracker, server replicas); each figure is a ratio
against a baseline measured in the same run.

1. gate:      one gate evaluation (``store.rollout_counts``: what the controller runs
              each tick) with N devices (default 1,000,000) on PostgreSQL. Baseline:
              the same fleet, rollout and reports on SQLite. Devices are bulk
              registered (COPY on PostgreSQL), a rollout is created and moved to its
              third wave, and every device reports once through ``record_reports``
              (batches of 5,000) so the fleet holds a mid-rollout mix of states.
              On PostgreSQL the gate is then measured again after ``VACUUM ANALYZE``
              and with a larger ``work_mem``, and EXPLAIN ANALYZE shows the plan.
              Goal: < 1 s on PostgreSQL.
2. ingest:    signed reports accepted over HTTP per second by one ``tufota serve
              --database postgresql://...`` vs one ``tufota serve`` on SQLite (the
              baseline), same repository, same pre-signed reports, same wrk load
              (bench_staging's Lua script). Both engines commit durably (PostgreSQL
              runs with fsync on here; SQLite with synchronous=FULL). Each server is
              SIGKILLed afterwards and its tracker must hold every acknowledged report.
              ``--rounds`` (3) interleaved rounds on fresh trackers; the median of the
              rounds' ratios is the figure (this shared box drifts between runs).
              Goal: >= 0.8x.
3. replicas:  two replicas (``--replica-name``, same REPO, same database, two ports)
              vs one, on PostgreSQL. The load is the same in both runs: two wrk
              processes (1 thread, half the connections each); the baseline sends
              both to one replica, the measured run one to each. Prints the CPU
              seconds of each replica, the PostgreSQL backends and the load generator
              (this box has 2 cores: the ratio says where they went).
4. failover:  three replicas on one database with ``--tick-interval 1``; find the
              leader on /metrics (``tufota_leader 1``), SIGKILL it, and time until
              another replica reports ``tufota_leader 1`` and a controller tick
              (``tufota_controller_last_tick_timestamp_seconds``) newer than the kill.
              Baseline: the gap between two ticks of the leader before the kill.
              Repeated ``--rounds`` times (the killed replica restarts in between).
              Goal: < 10 s.

PostgreSQL is started for the run with tests._postgres (initdb + pg_ctl in a temporary
directory); the ingest, replicas and failover runs restart it with fsync on.

Usage: scripts/bench_scaleout.py {gate,ingest,replicas,failover} [--devices N] [...]
       (run under ``flock /tmp/tufota-bench.lock``: benchmarks on this box must not overlap;
       wrk comes from Debian: apt-get install -y wrk)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import secrets
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import requests  # noqa: E402
from bench_staging import BIN, HW, _free_port, _repo, _wrk, _wrk_reports  # noqa: E402
from securesystemslib.signer import CryptoSigner  # noqa: E402

from repo_server import Repository  # noqa: E402
from staging import NewDevice, RolloutOptions, SqliteTrackerStore, open_tracker  # noqa: E402
from staging._sqlstore import SqlTrackerStore  # noqa: E402
from tufota_core import Report, Wave, parse_wave_spec, sign_report, utcnow, wave_index  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
GATE_WAVES = "canary:tag=canary,10%,50%,100%"
GATE_ROLLOUT = "gw-100-1.1.0-bench001"
REPORT_BATCH = 5_000


# -- output ------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(row, widths, strict=True))).rstrip())  # fmt: skip
        if n == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def _summary(name: str, text: str, met: bool) -> None:
    print(f"SUMMARY {name}: {text}; goal {'met' if met else 'MISSED'}", flush=True)


# -- PostgreSQL --------------------------------------------------------------------------


@contextmanager
def _postgres(durable: bool) -> Iterator[Any]:
    """tests._postgres's server; ``durable`` restarts it with fsync and synchronous_commit on.

    The test server runs with fsync=off (fast tests); a benchmark that compares commit
    throughput with SQLite (synchronous=FULL) must pay for its fsyncs too.
    """
    from tests._postgres import postgres_server

    with postgres_server() as server:
        if durable:
            from tests._postgres import _tool, _wait_ready

            pg_ctl = _tool("pg_ctl")
            assert pg_ctl is not None
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={server.port}"
                f" -c unix_socket_directories={server.root} -c fsync=on"
                " -c synchronous_commit=on -c max_connections=200 -c shared_buffers=128MB"
            )
            subprocess.run(
                [*server._run_as, pg_ctl, "-D", str(server.root / "data"), "-l",
                 str(server.root / "log"), "-o", options, "-m", "fast", "-w", "restart"],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            _wait_ready(server)
        yield server


def _pg_setting(url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
        assert row is not None
        return str(row[0])


def _scalar(location: str, sql: str) -> Any:
    """One value from the tracker at ``location`` (a file path or a postgresql:// URL)."""
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location) as conn:
            row = conn.execute(sql).fetchone()
    else:
        with sqlite3.connect(location) as db:
            row = db.execute(sql).fetchone()
    assert row is not None
    return row[0]


def _postmaster_pid(server: Any) -> int:
    return int((server.root / "data" / "postmaster.pid").read_text().split()[0])


# -- CPU accounting ----------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def _cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of ``pid`` (and of its reaped children when ``children``), seconds."""
    fields = _proc_stat(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def _postgres_cpu(postmaster: int) -> float:
    """CPU of the postmaster, its live children (backends, workers) and reaped ones."""
    total = _cpu_seconds(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and int(fields[1]) == postmaster:
                total += _cpu_seconds(int(entry.name))
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- servers -----------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    name: str
    port: int
    log: Path
    args: list[str] = field(default_factory=list)


def _serve(
    repo: Repository,
    passphrase: str,
    *,
    database: str | None = None,
    replica: str | None = None,
    tick: float = 3600.0,
    port: int | None = None,
    log_dir: Path,
) -> Server:
    """``tufota serve`` in its own process, answering health checks."""
    port = port or _free_port()
    name = replica or f"serve-{port}"
    args = [str(BIN / "tufota"), "serve", "--repo", str(repo.path), "--port", str(port),
            "--tick-interval", str(tick), "--local-viewer"]  # fmt: skip
    if database is not None:
        args += ["--database", database]
    if replica is not None:
        args += ["--replica-name", replica]
    log = log_dir / f"{name}.log"
    env = {**os.environ, "TUFOTA_PASSPHRASE": passphrase}
    env.pop("TUFOTA_DATABASE_URL", None)
    with log.open("ab") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{url}/api/v1/health", timeout=1).ok:
                return Server(proc, url, name, port, log, args)
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            tail = log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"server {name} did not start:\n{tail}")
        time.sleep(0.1)


def _kill(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.kill()
    server.proc.wait(timeout=30)


def _need_flag(flag: str) -> None:
    out = subprocess.run(
        [str(BIN / "tufota"), "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    if flag not in out:
        raise SystemExit(f"this benchmark needs `tufota serve {flag}`, which this checkout lacks")


# -- signed reports ----------------------------------------------------------------------


def _signed_devices(prefix: str, count: int) -> list[tuple[str, CryptoSigner]]:
    return [(f"{prefix}-{n:05d}", CryptoSigner.generate_ed25519()) for n in range(count)]


def _register(location: str, devices: Sequence[tuple[str, CryptoSigner]]) -> None:
    store = open_tracker(location)
    try:
        store.register_devices(
            (
                NewDevice(
                    device_id,
                    HW,
                    {"keyid": s.public_key.keyid, **s.public_key.to_dict()},
                    status="accepted",
                    installed_version="1.0.0",
                )
                for device_id, s in devices
            ),
            at=utcnow(),
        )
    finally:
        store.close()


def _write_reports(
    path: Path, devices: Sequence[tuple[str, CryptoSigner]], per_device: int, threads: int
) -> int:
    """bench_staging's wrk input: ``thread<TAB>path<TAB>body``, seq-major, each a transition."""
    with path.open("w") as f:
        for seq in range(1, per_device + 1):
            for n, (device_id, signer) in enumerate(devices):
                report = Report(
                    device_id=device_id,
                    hardware_id=HW,
                    seq=seq,
                    state="downloading" if seq % 2 else "idle",
                    installed_version="1.0.0",
                    bytes_done=seq * 1000,
                    bytes_total=per_device * 1000,
                )
                body = json.dumps(sign_report(report, signer), separators=(",", ":"))
                f.write(f"{n % threads}\t/api/v1/devices/{device_id}/reports\t{body}\n")
    return per_device * len(devices)


def _committed(location: str, prefix: str) -> tuple[int, int]:
    """(report events, sum of last_seq) of the devices whose id starts with ``prefix``."""
    events = _scalar(
        location,
        f"SELECT count(*) FROM events WHERE kind = 'report' AND device_id LIKE '{prefix}-%'",  # noqa: S608
    )
    seqs = _scalar(
        location,
        f"SELECT coalesce(sum(last_seq), 0) FROM devices WHERE device_id LIKE '{prefix}-%'",  # noqa: S608
    )
    return int(events), int(seqs)


# -- 1. gate -----------------------------------------------------------------------------


def _gate_report(device_id: str, wave: int | None, r: float, seq: int) -> Report:
    """A mid-rollout mix: waves 0-1 mostly done, wave 2 under way, the rest idle on 1.0.0."""

    def on(state: str, installed: str, code: str | None = None, done: int = 0) -> Report:
        return Report(device_id, HW, seq, state, installed, target_version="1.1.0",
                      rollout_id=GATE_ROLLOUT, error_code=code, bytes_done=done,
                      bytes_total=16384 if done else 0)  # fmt: skip

    if wave is not None and wave <= 1:
        if r < 0.90:
            return on("idle", "1.1.0")
        if r < 0.93:
            return on("failed", "1.0.0", "health_check")
        if r < 0.95:
            return on("rolled_back", "1.0.0", "boot")
    elif wave == 2:
        if r < 0.40:
            return on("idle", "1.1.0")
        if r < 0.60:
            return on("downloading", "1.0.0", done=4096)
        if r < 0.70:
            return on("installing", "1.0.0")
        if r < 0.72:
            return on("failed", "1.0.0", "install")
    return Report(device_id, HW, seq, "idle", "1.0.0")


def _gate_device_id(n: int) -> str:
    return f"d{n:07d}"


def _gate_tags(n: int) -> tuple[str, ...]:
    return ("canary",) if n < 1000 else ()


def _load_fleet(store: SqlTrackerStore, devices: int, waves: list[Wave]) -> dict[str, float]:
    """Register ``devices``, create the rollout at its third wave, and apply one report each."""
    now = utcnow()
    t0 = time.perf_counter()
    for start in range(0, devices, 100_000):
        store.register_devices(
            (
                NewDevice(_gate_device_id(n), HW, {"k": n}, tags=_gate_tags(n),
                          status="accepted", installed_version="1.0.0")
                for n in range(start, min(devices, start + 100_000))
            ),
            at=now,
        )  # fmt: skip
    register_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rollout = store.create_rollout(
        GATE_ROLLOUT, HW, "1.1.0", f"firmware/{HW}/1.1.0/fw.img", waves, RolloutOptions(), at=now
    )
    store.update_rollout_state(
        GATE_ROLLOUT, expected_revision=rollout.revision, state="active", current_wave=2,
        kind="wave_advanced", reason="benchmark", at=now,
    )  # fmt: skip
    create_s = time.perf_counter() - t0
    rng = random.Random(11)  # noqa: S311 - a reproducible mix, not a secret
    t0 = time.perf_counter()
    applied = 0
    for start in range(0, devices, REPORT_BATCH):
        batch = []
        for n in range(start, min(devices, start + REPORT_BATCH)):
            device_id = _gate_device_id(n)
            wave = wave_index(GATE_ROLLOUT, waves, device_id, _gate_tags(n))
            batch.append(_gate_report(device_id, wave, rng.random(), 1))
        applied += sum(o.applied for o in store.record_reports(batch, utcnow()))
    reports_s = time.perf_counter() - t0
    assert applied == devices, f"{applied} of {devices} reports applied"
    return {"register": register_s, "rollout": create_s, "reports": reports_s}


def _time_gate(store: SqlTrackerStore, runs: int = 5) -> tuple[float, float, float, Any]:
    """(first, best, median) seconds of ``rollout_counts``, and the counts."""
    rollout = store.get_rollout(GATE_ROLLOUT)
    times = []
    counts = None
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        counts = store.rollout_counts(rollout)
        times.append(time.perf_counter() - t0)
    return times[0], min(times[1:]), statistics.median(times[1:]), counts


def _same(a: Any, b: Any) -> bool:
    """The same per-wave counts (failure times differ: each backend loaded at its own time)."""
    return bool(a.waves == b.waves and a.recent_failures == b.recent_failures)


@contextmanager
def _captured_gate_query() -> Iterator[list[tuple[str, Any]]]:
    """Record the SQL and parameters of the gate's aggregation as the store sends them."""
    from staging import _postgres as pg

    seen: list[tuple[str, Any]] = []
    original = pg._PgConn.execute

    def execute(self: Any, sql: str, params: Any = None, /) -> Any:
        if "GROUP BY cohort_wave" in sql:
            seen.append((pg.translate(sql), params))
        return original(self, sql, params)

    pg._PgConn.execute = execute  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        pg._PgConn.execute = original  # type: ignore[method-assign]


def _explain(url: str, sql: str, params: Any, settings: str = "") -> list[str]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if settings:
            conn.execute(settings)
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()
    return [str(r[0]) for r in rows]


def bench_gate(devices: int, explain: bool) -> dict[str, Any]:
    waves = parse_wave_spec(GATE_WAVES)
    rows: list[tuple[str, ...]] = []
    out: dict[str, Any] = {"devices": devices}
    with tempfile.TemporaryDirectory(prefix="tufota-bench-") as tmp:
        sqlite = SqliteTrackerStore(Path(tmp) / "tracker.db")
        load = _load_fleet(sqlite, devices, waves)
        first, best, median, base_counts = _time_gate(sqlite)
        sqlite.close()
    base = best
    rows.append(("SQLite (baseline)", f"{load['register']:.1f}", f"{load['reports']:.1f}",
                 f"{first:.3f}", f"{best:.3f}", f"{median:.3f}", "1.00"))  # fmt: skip
    out["sqlite"] = {"load": load, "first": first, "best": best, "median": median}
    with _postgres(durable=False) as server:
        url = server.new_database()
        pg = open_tracker(url)
        assert isinstance(pg, SqlTrackerStore)
        load = _load_fleet(pg, devices, waves)
        analyzed = _scalar(
            url,
            "SELECT coalesce(last_autoanalyze, last_analyze) IS NOT NULL"
            " FROM pg_stat_user_tables WHERE relname = 'devices'",
        )
        with _captured_gate_query() as seen:
            first, best, median, counts = _time_gate(pg)
        assert _same(counts, base_counts), f"PostgreSQL and SQLite differ:\n{counts}\n{base_counts}"
        label = "PostgreSQL, as loaded" + (" (autoanalyzed)" if analyzed else " (no statistics)")
        rows.append((label, f"{load['register']:.1f}", f"{load['reports']:.1f}", f"{first:.3f}",
                     f"{best:.3f}", f"{median:.3f}", f"{best / base:.2f}"))  # fmt: skip
        out["postgres"] = {"load": load, "first": first, "best": best, "median": median}
        sql, params = seen[-1]
        plans = {"as loaded": _explain(url, sql, params)}
        pg.close()
        # The same query after VACUUM ANALYZE (statistics, and the visibility map that lets
        # an index-only scan skip the heap), then with more memory for the aggregation.
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            t0 = time.perf_counter()
            conn.execute("VACUUM ANALYZE devices")
            vacuum_s = time.perf_counter() - t0
        pg = open_tracker(url)
        assert isinstance(pg, SqlTrackerStore)
        first, best2, median, counts = _time_gate(pg)
        assert _same(counts, base_counts)
        pg.close()
        rows.append((f"PostgreSQL, after VACUUM ANALYZE ({vacuum_s:.1f} s)", "", "", f"{first:.3f}",
                     f"{best2:.3f}", f"{median:.3f}", f"{best2 / base:.2f}"))  # fmt: skip
        out["postgres_vacuum_analyze"] = {"vacuum_s": vacuum_s, "best": best2, "median": median}
        plans["after VACUUM ANALYZE"] = _explain(url, sql, params)
        dbname = url.rsplit("/", 1)[1]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE \"{dbname}\" SET work_mem = '64MB'")
        pg = open_tracker(url)
        assert isinstance(pg, SqlTrackerStore)
        first, best3, median, counts = _time_gate(pg)
        assert _same(counts, base_counts)
        pg.close()
        rows.append(("PostgreSQL, + work_mem 64MB", "", "", f"{first:.3f}", f"{best3:.3f}",
                     f"{median:.3f}", f"{best3 / base:.2f}"))  # fmt: skip
        out["postgres_work_mem"] = {"best": best3, "median": median}
        plans["work_mem 64MB"] = _explain(url, sql, params)
        size = _scalar(url, "SELECT pg_size_pretty(pg_relation_size('devices_by_cohort_cover3'))")
        out["cover_index_size"] = size
    print(f"\ngate: rollout_counts with {devices:,} devices, rollout at wave 3 of 4 "
          f"({GATE_WAVES}); times in seconds (5 runs after a first one)")  # fmt: skip
    _table(
        ("backend", "register", "reports", "first", "best", "median", "x SQLite"),
        rows,
    )
    print(f"covering index devices_by_cohort_cover3 on PostgreSQL: {out['cover_index_size']}")
    if explain:
        for name, lines in plans.items():
            print(f"\nEXPLAIN ANALYZE, {name}:")
            print("\n".join("  " + line for line in lines))
    else:
        for name, lines in plans.items():
            top = next((ln for ln in lines if "Scan" in ln), lines[0]).strip()
            total = next((ln for ln in lines if ln.startswith("Execution Time")), "").strip()
            print(f"plan, {name}: {top[:110]} ... {total}")
    pg_best = out["postgres"]["best"]
    _summary(
        "gate",
        f"PostgreSQL {pg_best:.3f} s as loaded, {best2:.3f} s after VACUUM ANALYZE, vs SQLite "
        f"{base:.3f} s at {devices:,} devices = {pg_best / base:.2f}x / {best2 / base:.2f}x "
        "the baseline; goal < 1 s as loaded",
        pg_best < 1.0,
    )
    return out


# -- 2. ingest ---------------------------------------------------------------------------


def _ingest_run(
    name: str,
    server: Server,
    lines: Path,
    location: str,
    prefix: str,
    seconds: int,
    conns: int,
    postmaster: int | None,
) -> dict[str, Any]:
    try:
        cpu0 = (_cpu_seconds(server.proc.pid), _postgres_cpu(postmaster) if postmaster else 0.0)
        wrk0 = _children_cpu()
        result = _wrk_reports(server.url, lines, seconds, 2, conns)
        wrk = _children_cpu() - wrk0
        cpu1 = (_cpu_seconds(server.proc.pid), _postgres_cpu(postmaster) if postmaster else 0.0)
    finally:
        _kill(server)  # no graceful shutdown: every 202 must already be committed
    events, seqs = _committed(location, prefix)
    accepted = int(result["accepted"])
    return {
        "name": name,
        "rate": accepted / result["seconds"],
        "accepted": accepted,
        "refused": result["refused"],
        "exhausted": bool(result["exhausted"]),
        "p50": result["p50_ms"],
        "p99": result["p99_ms"],
        "intact": accepted <= events <= accepted + conns and events == seqs,
        "events": events,
        "seqs": seqs,
        "cpu": {"server": cpu1[0] - cpu0[0], "postgres": cpu1[1] - cpu0[1], "wrk": wrk},
    }


def bench_ingest(
    devices: int, reports: int, seconds: int, conns: int, rounds: int = 3
) -> dict[str, Any]:
    _wrk()
    _need_flag("--database")
    passphrase = secrets.token_urlsafe(12)
    per_device = max(1, reports // devices)
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tufota-bench-")))
        server_pg = stack.enter_context(_postgres(durable=True))
        repo = _repo(work, passphrase, ("1.0.0",))
        fleet = _signed_devices("bench", devices)
        lines = work / "reports.txt"
        total = _write_reports(lines, fleet, per_device, 2)
        results = []
        # Interleaved rounds, each on a fresh tracker: this box is shared and its load
        # drifts, so a ratio is taken within a round and the median round is reported.
        for round_no in range(1, rounds + 1):
            for name, location in (
                ("SQLite (baseline)", str(repo.tracker_path)),
                ("PostgreSQL", server_pg.new_database()),
            ):
                if not location.startswith("postgresql://"):  # a fresh SQLite tracker
                    for suffix in ("", "-wal", "-shm"):
                        Path(location + suffix).unlink(missing_ok=True)
                _register(location, fleet)
                on_pg = location.startswith("postgresql://")
                server = _serve(
                    repo, passphrase, log_dir=work, database=location if on_pg else None
                )
                postmaster = _postmaster_pid(server_pg) if on_pg else None
                run = _ingest_run(
                    name, server, lines, location, "bench", seconds, conns, postmaster
                )
                results.append({**run, "round": round_no})
        fsync = _pg_setting(server_pg.new_database(), "fsync")
    pairs = list(zip(results[::2], results[1::2], strict=True))
    ratios = [pg["rate"] / base["rate"] for base, pg in pairs]
    for base, pg, ratio in zip(results[::2], results[1::2], ratios, strict=True):
        pg["ratio"], base["ratio"] = ratio, 1.0
    print(f"\ningest: signed reports over HTTP, {total:,} prepared for {devices:,} devices, "
          f"wrk 2 threads x {conns} connections, {seconds} s each, {rounds} interleaved rounds "
          f"on fresh trackers; PostgreSQL fsync={fsync}")  # fmt: skip
    _table(
        ("round", "server", "reports/s", "x SQLite", "p50 ms", "p99 ms", "accepted", "refused",
         "cpu server", "cpu postgres", "cpu wrk", "cpu ms/report", "every 202 kept"),
        [(r["round"], r["name"], f"{r['rate']:.0f}", f"{r['ratio']:.2f}", f"{r['p50']:.1f}",
          f"{r['p99']:.1f}", r["accepted"], r["refused"] or "-",
          *(f"{r['cpu'][k]:.1f}" for k in ("server", "postgres", "wrk")),
          f"{1000 * (r['cpu']['server'] + r['cpu']['postgres']) / max(1, r['accepted']):.2f}",
          r["intact"] or f"no: {r['events']} events, sum of seqs {r['seqs']}"
          ) for r in results],
    )  # fmt: skip
    if any(r["exhausted"] for r in results):
        print("note: every prepared report was sent before the end: rates are lower bounds")
    ratio = statistics.median(ratios)
    pg_rate = statistics.median(r["rate"] for r in results[1::2])
    base_rate = statistics.median(r["rate"] for r in results[::2])
    _summary(
        "ingest",
        f"PostgreSQL {pg_rate:.0f} reports/s vs SQLite {base_rate:.0f} reports/s (medians); "
        f"median of the rounds' ratios {ratio:.2f}x the baseline "
        f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}; goal >= 0.8x)",
        ratio >= 0.8 and all(r["intact"] for r in results),
    )
    return {"results": results, "ratio": ratio, "ratios": ratios}


# -- 3. replicas -------------------------------------------------------------------------


def _wrk_pair(
    targets: Sequence[tuple[str, Path]], seconds: int, conns: int
) -> tuple[list[dict[str, Any]], float]:
    """Two wrk processes at once (1 thread, ``conns`` connections each); their CPU seconds."""
    from bench_staging import _WRK_INGEST_LUA

    before = _children_cpu()
    procs = []
    for url, lines in targets:
        script = lines.with_suffix(".lua")
        script.write_text(_WRK_INGEST_LUA)
        procs.append(subprocess.Popen(
            [_wrk(), "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(script), url,
             "--", str(lines)],
            stdout=subprocess.PIPE, text=True,
        ))  # fmt: skip
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 120)
        found = re.search(r"^RESULT (.*)$", out, re.MULTILINE)
        if found is None or "Socket errors" in out:
            raise SystemExit(f"wrk failed on the reports:\n{out}")
        results.append(json.loads(found.group(1)))
    return results, _children_cpu() - before


def bench_replicas(devices: int, reports: int, seconds: int, conns: int) -> dict[str, Any]:
    _wrk()
    _need_flag("--replica-name")
    passphrase = secrets.token_urlsafe(12)
    per_device = max(1, reports // devices)
    half = max(1, conns // 2)
    runs: list[dict[str, Any]] = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tufota-bench-")))
        pg = stack.enter_context(_postgres(durable=True))
        url = pg.new_database()
        postmaster = _postmaster_pid(pg)
        repo = _repo(work, passphrase, ("1.0.0",))
        # Two fleets (one per run, so no report is a replay), each in two halves (one per wrk).
        plan = {}
        for run in ("one", "two"):
            fleet = _signed_devices(run, devices)
            _register(url, fleet)
            halves = []
            for h in range(2):
                lines = work / f"{run}-{h}.txt"
                _write_reports(lines, fleet[h::2], per_device, 1)
                halves.append(lines)
            plan[run] = halves
        servers = [
            _serve(repo, passphrase, database=url, replica=f"r{n}", log_dir=work) for n in (1, 2)
        ]
        try:
            for run, label in (("one", "1 replica (baseline)"), ("two", "2 replicas")):
                urls = [servers[0].url, servers[0].url if run == "one" else servers[1].url]
                cpu0 = [_cpu_seconds(s.proc.pid) for s in servers] + [_postgres_cpu(postmaster)]
                wall0 = time.perf_counter()
                results, wrk_cpu = _wrk_pair(list(zip(urls, plan[run], strict=True)), seconds,
                                             half)  # fmt: skip
                wall = time.perf_counter() - wall0
                cpu1 = [_cpu_seconds(s.proc.pid) for s in servers] + [_postgres_cpu(postmaster)]
                accepted = sum(int(r["accepted"]) for r in results)
                duration = max(float(r["seconds"]) for r in results)
                runs.append({
                    "label": label, "run": run, "accepted": accepted,
                    "rate": accepted / duration, "wall": wall,
                    "p99": max(float(r["p99_ms"]) for r in results),
                    "exhausted": any(r["exhausted"] for r in results),
                    "cpu": {"r1": cpu1[0] - cpu0[0], "r2": cpu1[1] - cpu0[1],
                            "postgres": cpu1[2] - cpu0[2], "wrk": wrk_cpu},
                })  # fmt: skip
        finally:
            for s in servers:
                _kill(s)
        for r in runs:
            events, seqs = _committed(url, r["run"])
            r["intact"] = r["accepted"] <= events <= r["accepted"] + conns and events == seqs
    base = runs[0]["rate"]
    print(f"\nreplicas: signed reports over HTTP on one PostgreSQL (fsync on), two wrk x 1 thread"
          f" x {half} connections, {seconds} s; CPU seconds per process during the run "
          f"({os.cpu_count()} cores: at most {os.cpu_count()} x wall)")  # fmt: skip
    _table(
        ("run", "reports/s", "x 1 replica", "p99 ms", "cpu r1", "cpu r2", "cpu postgres",
         "cpu wrk", "cpu total", "wall", "every 202 kept"),
        [(r["label"], f"{r['rate']:.0f}", f"{r['rate'] / base:.2f}", f"{r['p99']:.1f}",
          *(f"{r['cpu'][k]:.1f}" for k in ("r1", "r2", "postgres", "wrk")),
          f"{sum(r['cpu'].values()):.1f}", f"{r['wall']:.1f}", r["intact"]) for r in runs],
    )  # fmt: skip
    for r in runs:
        total = sum(r["cpu"].values()) or 1.0
        shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in r["cpu"].items())
        print(f"CPU share, {r['label']}: {shares}; "
              f"{1000 * total / max(1, r['accepted']):.2f} ms CPU per accepted report")  # fmt: skip
    if any(r["exhausted"] for r in runs):
        print("note: every prepared report was sent before the end: rates are lower bounds")
    ratio = runs[1]["rate"] / base
    _summary(
        "replicas",
        f"2 replicas {runs[1]['rate']:.0f} reports/s vs 1 replica {base:.0f} reports/s = "
        f"{ratio:.2f}x the baseline on {os.cpu_count()} cores (goal: every 202 kept)",
        all(r["intact"] for r in runs),
    )
    return {"runs": runs, "ratio": ratio}


# -- 4. failover -------------------------------------------------------------------------


_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", re.MULTILINE)


def _metrics(server: Server) -> dict[str, float] | None:
    """The unlabelled samples on /metrics, plus the replica's name; None when it is down."""
    try:
        response = requests.get(f"{server.url}/metrics", timeout=0.5)
    except requests.RequestException:
        return None
    if not response.ok:
        return None
    found: dict[str, float] = {}
    for name, labels, value in _SAMPLE.findall(response.text):
        if labels and name != "tufota_replica_info":
            continue
        try:
            found[name] = float(value)
        except ValueError:
            continue
    return found


def _leader_of(servers: Sequence[Server]) -> tuple[Server | None, dict[str, dict[str, float]]]:
    seen = {}
    leader = None
    for s in servers:
        m = _metrics(s)
        if m is None:
            continue
        seen[s.name] = m
        if m.get("tufota_leader") == 1:
            leader = s
    return leader, seen


def _wait(what: str, timeout: float, check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def _tick_gap(leader: Server, samples: int = 3) -> float:
    """Seconds between consecutive controller ticks of the leader, median of ``samples``."""
    gaps: list[float] = []
    last = None
    deadline = time.monotonic() + 30
    while len(gaps) < samples and time.monotonic() < deadline:
        m = _metrics(leader) or {}
        tick = m.get("tufota_controller_last_tick_timestamp_seconds")
        if tick is not None and last is not None and tick > last:
            gaps.append(tick - last)
        if tick is not None:
            last = tick
        time.sleep(0.05)
    if not gaps:
        raise SystemExit(f"the leader {leader.name} reported no controller tick in 30 s")
    return statistics.median(gaps)


def _start_rollout(repo: Repository, passphrase: str, url: str, devices: int) -> str:
    """Devices and a live rollout, so each tick has real gates to evaluate."""
    _register(url, _signed_devices("fleet", devices))
    proc = subprocess.run(
        [str(BIN / "tufota"), "rollout", "start", "--repo", str(repo.path), "--database", url,
         "--hardware", HW, "--version", "1.1.0", "--waves", "canary:1%,10%,50%,100%",
         "--soak", "60m"],
        env={**os.environ, "TUFOTA_PASSPHRASE": passphrase}, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"none (rollout start failed: {last})"
    return f"{HW} 1.1.0 over {devices:,} devices"


def bench_failover(devices: int, rounds: int) -> dict[str, Any]:
    _need_flag("--replica-name")
    passphrase = secrets.token_urlsafe(12)
    results = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tufota-bench-")))
        pg = stack.enter_context(_postgres(durable=True))
        url = pg.new_database()
        repo = _repo(work, passphrase)
        rollout = _start_rollout(repo, passphrase, url, devices)
        servers = [
            _serve(repo, passphrase, database=url, replica=f"r{n}", tick=1.0, log_dir=work)
            for n in (1, 2, 3)
        ]
        try:
            for n in range(rounds):
                leader = _wait("a leader on /metrics", 30, lambda: _leader_of(servers)[0])
                gap = _tick_gap(leader)
                killed_at = time.time()
                t0 = time.perf_counter()
                os.kill(leader.proc.pid, signal.SIGKILL)
                leader.proc.wait(timeout=10)
                others = [s for s in servers if s is not leader]

                def took_over(others: list[Server] = others, since: float = killed_at) -> Any:
                    for s in others:
                        m = _metrics(s) or {}
                        tick = m.get("tufota_controller_last_tick_timestamp_seconds", 0.0)
                        if m.get("tufota_leader") == 1 and tick > since:
                            return s
                    return None

                successor: Server = _wait("a new leader's tick", 60, took_over)
                elapsed = time.perf_counter() - t0
                results.append({"round": n + 1, "killed": leader.name, "new": successor.name,
                                "seconds": elapsed, "gap": gap})  # fmt: skip
                # The killed replica comes back (same name and port) as a follower.
                index = servers.index(leader)
                servers[index] = _serve(repo, passphrase, database=url, replica=leader.name,
                                        tick=1.0, port=leader.port, log_dir=work)  # fmt: skip
        finally:
            for s in servers:
                _kill(s)
    gap = statistics.median(r["gap"] for r in results)
    print(f"\nfailover: 3 replicas on one PostgreSQL, --tick-interval 1, leader SIGKILLed "
          f"{rounds} times; rollout: {rollout}")  # fmt: skip
    _table(
        ("round", "killed", "new leader", "kill -> new leader's tick (s)", "tick gap before (s)",
         "x tick gap"),
        [(r["round"], r["killed"], r["new"], f"{r['seconds']:.2f}", f"{r['gap']:.2f}",
          f"{r['seconds'] / r['gap']:.1f}") for r in results],
    )  # fmt: skip
    worst = max(r["seconds"] for r in results)
    median = statistics.median(r["seconds"] for r in results)
    _summary(
        "failover",
        f"median {median:.2f} s, worst {worst:.2f} s from SIGKILL to the next leader's tick "
        f"= {median / gap:.1f}x the leader's tick gap of {gap:.2f} s (goal < 10 s)",
        worst < 10.0,
    )
    return {"results": results}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    gate = sub.add_parser("gate", help="gate evaluation with N devices, PostgreSQL vs SQLite")
    gate.add_argument("--devices", type=int, default=1_000_000)
    gate.add_argument("--explain", action="store_true", help="print the full EXPLAIN ANALYZE")
    for name, helptext in (
        ("ingest", "signed report ingest over HTTP, PostgreSQL vs SQLite"),
        ("replicas", "two replicas vs one on one PostgreSQL, with CPU per process"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--devices", type=int, default=4_000, help="devices sending reports")
        p.add_argument("--reports", type=int, default=80_000, help="reports prepared (per run)")
        p.add_argument("--seconds", type=int, default=10, help="each wrk run")
        p.add_argument("--connections", type=int, default=32, help="wrk connections in all")
        if name == "ingest":
            p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    fail = sub.add_parser("failover", help="leader SIGKILL to the next tick on another replica")
    fail.add_argument("--devices", type=int, default=2_000, help="devices in the live rollout")
    fail.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"bench_scaleout {args.what}: {os.cpu_count()} cores, Python {sys.version.split()[0]}",
          flush=True)  # fmt: skip
    if args.what == "gate":
        bench_gate(args.devices, args.explain)
    elif args.what == "ingest":
        bench_ingest(args.devices, args.reports, args.seconds, args.connections, args.rounds)
    elif args.what == "replicas":
        bench_replicas(args.devices, args.reports, args.seconds, args.connections)
    else:
        bench_failover(args.devices, args.rounds)


if __name__ == "__main__":
    main()
