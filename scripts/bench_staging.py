#!/usr/bin/env python3
"""Benchmarks of the staging issue; each figure is printed with a baseline from the same run.

1. ingest:   signed device reports accepted over HTTP per second by ``tufota serve``
             (a separate process), pre-signed, sent by an asyncio client over 32
             keep-alive connections. Baseline: ``GET /metadata/timestamp.json`` per
             second on the same server and client (the HTTP stack's ceiling here).
2. gate:     one gate evaluation (``RolloutController.status``: SQL aggregation) with
             N devices in the tracker. Baseline: the pure-Python evaluation of the
             same rollout (``staging.evaluate`` over every DeviceRecord).
3. simulate: wall time for N simulated devices (real agent code, real HTTP) to
             complete a 4-wave rollout with speedup. Baseline: the same with N/10 devices.

Usage: scripts/bench_staging.py [ingest|gate|simulate|all] [--gate-devices N] [--reports N]
       [--report-devices N] [--sim-devices N] [--speedup X]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from securesystemslib.signer import CryptoSigner  # noqa: E402

from repo_server import Repository, add_release_locally  # noqa: E402
from staging import (  # noqa: E402
    NewDevice,
    RolloutController,
    RolloutOptions,
    SqliteTrackerStore,
    evaluate,
)
from tufota_core import (  # noqa: E402
    FirmwareInfo,
    Report,
    parse_wave_spec,
    sign_report,
    utcnow,
)

HW = "gw-100"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _repo(
    work: Path, passphrase: str, versions: tuple[str, ...] = ("1.0.0", "1.1.0")
) -> Repository:
    repo = Repository.create(work / "repo", passphrase)
    for version in versions:
        image = work / f"fw-{version}.img"
        image.write_bytes(os.urandom(16 * 1024))
        add_release_locally(repo, image, FirmwareInfo(HW, version), lambda: passphrase)
    return repo


def _serve(
    repo: Repository, passphrase: str, port: int, tick: float = 1.0
) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        [
            str(BIN / "tufota"),
            "serve",
            "--repo",
            str(repo.path),
            "--port",
            str(port),
            "--tick-interval",
            str(tick),
        ],
        env={**os.environ, "TUFOTA_PASSPHRASE": passphrase},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{url}/api/v1/health", timeout=1).ok:
                return server
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit("server did not start")
        time.sleep(0.1)


async def _connection(host: str, port: int, requests_: list[bytes], codes: Counter[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for raw in requests_:
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            codes[status] += 1
    finally:
        writer.close()


def _blast(url: str, jobs: list[tuple[str, bytes]], connections: int) -> tuple[float, Counter[int]]:
    """Send pre-built requests over keep-alive connections; each device's stay in order."""
    host, port = url.removeprefix("http://").split(":")
    lanes: list[list[bytes]] = [[] for _ in range(connections)]
    lane_of: dict[str, int] = {}
    for n, (key, raw) in enumerate(jobs):
        lane = lane_of.setdefault(key or str(n), len(lane_of) % connections)
        lanes[lane].append(raw)
    codes: Counter[int] = Counter()

    async def run() -> None:
        await asyncio.gather(*(_connection(host, int(port), lane, codes) for lane in lanes))

    start = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - start, codes


def _post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def bench_ingest(reports: int, devices: int) -> dict[str, Any]:
    passphrase = secrets.token_urlsafe(12)
    with tempfile.TemporaryDirectory(prefix="tufota-bench-") as tmp:
        work = Path(tmp)
        repo = _repo(work, passphrase, ("1.0.0",))
        signers = []
        new = []
        for n in range(devices):
            signer = CryptoSigner.generate_ed25519()
            public = {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}
            device_id = f"bench-{n:05d}"
            signers.append((device_id, signer))
            new.append(NewDevice(device_id, HW, public, installed_version="1.0.0"))
        with SqliteTrackerStore(repo.tracker_path) as store:
            store.register_devices(new, at=utcnow())
        per_device = reports // devices
        jobs = []
        states = ("idle", "downloading", "idle", "idle")
        for seq in range(1, per_device + 1):
            for device_id, signer in signers:
                report = Report(
                    device_id=device_id,
                    hardware_id=HW,
                    seq=seq,
                    state=states[seq % len(states)],
                    installed_version="1.0.0",
                )
                body = json.dumps(sign_report(report, signer)).encode()
                jobs.append((device_id, _post(f"/api/v1/devices/{device_id}/reports", body)))
        port = _free_port()
        server = _serve(repo, passphrase, port)
        url = f"http://127.0.0.1:{port}"
        try:
            poll = b"GET /metadata/timestamp.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            health = [("", poll)] * len(jobs)
            base_s, base_codes = _blast(url, health, 32)
            seconds, codes = _blast(url, jobs, 32)
        finally:
            server.terminate()
            server.wait(timeout=20)
    base_ok = sum(n for c, n in base_codes.items() if c < 300)
    ok = sum(n for c, n in codes.items() if c < 300)
    bad = {c: n for c, n in codes.items() if c >= 300}
    baseline = base_ok / base_s
    rate = ok / seconds
    return {
        "reports": len(jobs),
        "accepted": ok,
        "refused_by_status": bad,
        "reports_per_second": round(rate),
        "baseline_timestamp_gets_per_second": round(baseline),
        "ratio_to_baseline": round(rate / baseline, 3),
    }


def bench_gate(devices: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tufota-bench-") as tmp:
        store = SqliteTrackerStore(Path(tmp) / "tracker.db")
        t0 = time.perf_counter()
        batch = 100_000
        for start in range(0, devices, batch):
            store.register_devices(
                (
                    NewDevice(
                        f"d{n:07d}",
                        HW,
                        {"k": n},
                        tags=("canary",) if n < 1000 else (),
                        installed_version="1.0.0",
                    )
                    for n in range(start, min(devices, start + batch))
                ),
                at=utcnow(),
            )
        load = time.perf_counter() - t0
        ctl = RolloutController(store, None)
        t0 = time.perf_counter()
        doc = ctl.start(
            HW,
            "1.1.0",
            f"firmware/{HW}/1.1.0/fw.img",
            parse_wave_spec("canary:tag=canary,10%,50%,100%"),
            RolloutOptions(),
        )
        start_s = time.perf_counter() - t0
        # Make the tracker look mid-rollout: a share succeeded, failed, downloading.
        conn = store._conn
        assert conn is not None
        now = "2026-01-01T00:00:00Z"
        conn.execute("BEGIN")
        conn.execute(
            "UPDATE devices SET installed_version = '1.1.0', state = 'succeeded', last_seen = ?"
            " WHERE cohort_wave <= 1 AND abs(random()) % 10 < 8",
            (now,),
        )
        conn.execute(
            "UPDATE devices SET state = 'failed', failed_state = 'failed',"
            " failed_version = '1.1.0', failed_at = ?, last_seen = ?"
            " WHERE cohort_wave = 1 AND installed_version = '1.0.0'"
            " AND abs(random()) % 10 < 2",
            (now, now),
        )
        conn.execute(
            "UPDATE devices SET state = 'downloading', target_version = '1.1.0', last_seen = ?,"
            " progress_at = ? WHERE cohort_wave = 2 AND abs(random()) % 10 < 3",
            (now, now),
        )
        conn.execute("COMMIT")
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            status = ctl.status(doc.rollout_id)
            runs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ctl.tick()
        tick_s = time.perf_counter() - t0
        rollout = store.get_rollout(doc.rollout_id)
        t0 = time.perf_counter()
        python_status, _ = evaluate(rollout, store.list_devices(HW), utcnow())
        python_s = time.perf_counter() - t0
        assert python_status.waves == status.waves, "SQL and Python counts differ"
        store.close()
    best = min(runs)
    return {
        "devices": devices,
        "bulk_register_seconds": round(load, 2),
        "start_rollout_seconds (cohort assignment)": round(start_s, 2),
        "gate_evaluation_seconds": round(best, 3),
        "full_tick_seconds (gate + stall scan + alerts)": round(tick_s, 3),
        "baseline_python_evaluation_seconds": round(python_s, 2),
        "speedup_over_baseline": round(python_s / best, 1),
    }


def _simulate_once(devices: int, speedup: float) -> dict[str, Any]:
    from tufota_cli.simulate_cmd import SimOptions, Simulation

    passphrase = secrets.token_urlsafe(12)
    with tempfile.TemporaryDirectory(prefix="tufota-bench-") as tmp:
        work = Path(tmp)
        repo = _repo(work, passphrase)
        port = _free_port()
        server = _serve(repo, passphrase, port, tick=1.0)
        url = f"http://127.0.0.1:{port}"
        try:
            sim = Simulation(
                repo,
                url,
                work / "devices",
                SimOptions(
                    hardware_id=HW,
                    devices=devices,
                    factory_version="1.0.0",
                    poll_interval=300,
                    reboot_seconds=60,
                    speedup=speedup,
                    workers=16,
                ),
            )
            t0 = time.perf_counter()
            sim.provision()
            provision_s = time.perf_counter() - t0
            env = {**os.environ, "TUFOTA_PASSPHRASE": passphrase}
            subprocess.run(
                [
                    str(BIN / "tufota"),
                    "rollout",
                    "start",
                    "--repo",
                    str(repo.path),
                    "--hardware",
                    HW,
                    "--version",
                    "1.1.0",
                    "--waves",
                    "canary:1%,10%,50%,100%",
                    "--success-threshold",
                    "99%",
                ],
                check=True,
                env=env,
                capture_output=True,
            )
            result = sim.run(3600, check_every=1.0)
            sim.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    return {
        "devices": devices,
        "provision_seconds": round(provision_s, 1),
        "rollout_wall_seconds": round(result.seconds, 1),
        "state": result.rollout_state,
        "agent_cycles": result.cycles,
        "cycles_per_second": round(result.cycles / result.seconds, 1),
        "versions": result.versions,
    }


def bench_simulate(devices: int, speedup: float) -> dict[str, Any]:
    baseline = _simulate_once(max(10, devices // 10), speedup)
    full = _simulate_once(devices, speedup)
    return {
        "baseline": baseline,
        "full": full,
        "wall_time_ratio": round(
            full["rollout_wall_seconds"] / baseline["rollout_wall_seconds"], 2
        ),
        "device_ratio": round(devices / baseline["devices"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what", choices=("ingest", "gate", "simulate", "all"), default="all", nargs="?"
    )
    parser.add_argument("--gate-devices", type=int, default=1_000_000)
    parser.add_argument("--reports", type=int, default=20_000)
    parser.add_argument("--report-devices", type=int, default=2_000)
    parser.add_argument("--sim-devices", type=int, default=10_000)
    parser.add_argument("--speedup", type=float, default=600.0)
    args = parser.parse_args()
    out: dict[str, Any] = {"cpus": os.cpu_count()}
    if args.what in ("ingest", "all"):
        out["ingest"] = bench_ingest(args.reports, args.report_devices)
        print(json.dumps({"ingest": out["ingest"]}, indent=1), flush=True)
    if args.what in ("gate", "all"):
        out["gate"] = bench_gate(args.gate_devices)
        print(json.dumps({"gate": out["gate"]}, indent=1), flush=True)
    if args.what in ("simulate", "all"):
        out["simulate"] = bench_simulate(args.sim_devices, args.speedup)
        print(json.dumps({"simulate": out["simulate"]}, indent=1), flush=True)


if __name__ == "__main__":
    main()
