#!/usr/bin/env python3
"""Benchmarks of the staging issue; each figure is printed with a baseline from the same run.

1. ingest:   signed device reports accepted over HTTP per second by ``tufota serve``
             (a separate process), one report per request, pre-signed (each a new
             device/seq: no replays), sent by wrk (2 threads, 32 keep-alive
             connections, a Lua script cycling through the bodies). Baseline:
             conditional ``GET /metadata/timestamp.json`` (304) per second on the
             same server with the same wrk settings. Afterwards the server is killed
             and the tracker must hold exactly the acknowledged reports.
2. gate:     one gate evaluation (``RolloutController.status``: SQL aggregation) with
             N devices in the tracker. Baseline: the pure-Python evaluation of the
             same rollout (``staging.evaluate`` over every DeviceRecord).
3. simulate: wall time for N simulated devices (real agent code, real HTTP) to
             complete a 4-wave rollout with speedup. Baseline: the same with N/10 devices.

Usage: scripts/bench_staging.py [ingest|gate|simulate|all] [--gate-devices N] [--reports N]
       [--report-devices N] [--seconds S] [--sim-devices N] [--speedup X]
       (run under ``flock /tmp/tufota-bench.lock``: benchmarks on this box must not overlap)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
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


_WRK_INGEST_LUA = r"""
-- Each wrk thread sends its own pre-signed reports (file lines tagged with its
-- id), in file order, once each, for the run's duration; should they all be
-- sent before the end, the rest of the run sends GETs (answered 200, not
-- counted) and the rate is a lower bound (the script says so).
local threads, next_id = {}, 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
function init(args)
  reqs, sent, answered, accepted, refused = {}, 0, 0, 0, {}
  for line in io.lines(args[1]) do
    local tid, path, body = line:match("^(%d+)\t([^\t]+)\t(.*)$")
    if tonumber(tid) == id then
      reqs[#reqs + 1] = wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
    end
  end
  nreqs = #reqs
  filler = wrk.format("GET", "/api/v1/health")
  -- wrk calls request() of thread 0 once before the run to check it: give it the filler.
  if id == 0 then sent = -1 end
end
function request()
  sent = sent + 1
  if sent < 1 or sent > #reqs then return filler end
  return reqs[sent]
end
function response(status, headers, body)
  if status == 200 then return end
  answered = answered + 1
  if status >= 200 and status < 300 then
    accepted = accepted + 1
  else
    refused[status] = (refused[status] or 0) + 1
  end
end
function done(summary, latency, requests)
  local acc, ref, exhausted = 0, {}, 0
  for _, t in ipairs(threads) do
    acc = acc + t:get("accepted")
    if t:get("sent") >= t:get("nreqs") then exhausted = 1 end
    for k, v in pairs(t:get("refused")) do ref[#ref + 1] = string.format('"%d":%d', k, v) end
  end
  local fmt = 'RESULT {"seconds":%f,"accepted":%d,"refused":{%s},"exhausted":%d,'
    .. '"p50_ms":%f,"p99_ms":%f}\n'
  io.write(string.format(fmt,
    summary.duration / 1e6, acc, table.concat(ref, ","), exhausted,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def _wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("the ingest benchmark needs wrk: apt-get install -y wrk")
    return wrk


def _wrk_polls(url: str, etag: str, seconds: int, threads: int, conns: int) -> dict[str, Any]:
    """Conditional GETs of timestamp.json (304s): what an idle device costs; the baseline."""
    out = subprocess.run(
        [_wrk(), f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency",
         "-H", f"If-None-Match: {etag}", f"{url}/metadata/timestamp.json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "Non-2xx or 3xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors on the baseline:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    return {"per_second": float(match.group(1))}


def _wrk_reports(url: str, lines: Path, seconds: int, threads: int, conns: int) -> dict[str, Any]:
    script = lines.with_suffix(".lua")
    script.write_text(_WRK_INGEST_LUA)
    out = subprocess.run(
        [_wrk(), f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(script),
         url, "--", str(lines)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = re.search(r"^RESULT (.*)$", out, re.MULTILINE)
    if found is None or "Socket errors" in out:
        raise SystemExit(f"wrk failed on the reports:\n{out}")
    result: dict[str, Any] = json.loads(found.group(1))
    return result


def bench_ingest(
    reports: int, devices: int, seconds: int, threads: int = 2, conns: int = 32
) -> dict[str, Any]:
    """Signed reports per second over HTTP, one report per request, each verified and committed.

    Every report is a state transition (an event row each), so afterwards the
    tracker must hold one ``report`` event per 202 (plus at most one per
    connection: requests in flight when wrk stopped) and the devices' ``last_seq``
    must sum to the events; the server is SIGKILLed before the count, so an
    acknowledged report that was not committed would show.
    """
    passphrase = secrets.token_urlsafe(12)
    per_device = max(1, reports // devices)
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
        # Seq-major order: a device's next report comes `devices / threads` requests
        # after its previous one, long after that one was answered.
        lines = work / "reports.txt"
        with lines.open("w") as f:
            for seq in range(1, per_device + 1):
                for n, (device_id, signer) in enumerate(signers):
                    report = Report(
                        device_id=device_id,
                        hardware_id=HW,
                        seq=seq,
                        state="downloading" if seq % 2 else "idle",  # every report a transition
                        installed_version="1.0.0",
                        bytes_done=seq * 1000,
                        bytes_total=per_device * 1000,
                    )
                    body = json.dumps(sign_report(report, signer), separators=(",", ":"))
                    f.write(f"{n % threads}\t/api/v1/devices/{device_id}/reports\t{body}\n")
        total = per_device * devices
        port = _free_port()
        server = _serve(repo, passphrase, port, tick=3600.0)
        url = f"http://127.0.0.1:{port}"
        try:
            etag = requests.get(f"{url}/metadata/timestamp.json", timeout=5).headers["ETag"]
            baseline = _wrk_polls(url, etag, seconds, threads, conns)
            result = _wrk_reports(url, lines, seconds, threads, conns)
        finally:
            server.kill()  # no graceful shutdown: every 202 must already be on disk
            server.wait(timeout=20)
        with sqlite3.connect(repo.tracker_path) as db:
            events = db.execute(
                "SELECT count(*) FROM events WHERE kind = 'report' AND device_id LIKE 'bench-%'"
            ).fetchone()[0]
            seqs = db.execute(
                "SELECT sum(last_seq) FROM devices WHERE device_id LIKE 'bench-%'"
            ).fetchone()[0]
    accepted = result["accepted"]
    rate = accepted / result["seconds"]
    return {
        "reports_prepared": total,
        "all_sent_early (rate is a lower bound; raise --reports)": bool(result["exhausted"]),
        "accepted_202": accepted,
        "refused_by_status": result["refused"],
        "tracker_report_events": events,
        "tracker_sum_last_seq": seqs,
        # Every 202 committed (a report in flight when wrk stopped may be committed
        # unacknowledged), and each device's committed reports are seq 1..last_seq.
        "tracker_holds_every_acknowledged": accepted <= events <= accepted + conns
        and events == seqs,
        "seconds": round(result["seconds"], 2),
        "latency_ms_p50_p99": [round(result["p50_ms"], 1), round(result["p99_ms"], 1)],
        "reports_per_second": round(rate),
        "baseline_conditional_timestamp_gets_per_second": round(baseline["per_second"]),
        "ratio_to_baseline": round(rate / baseline["per_second"], 3),
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
    parser.add_argument("--reports", type=int, default=80_000)
    parser.add_argument("--report-devices", type=int, default=4_000)
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run (ingest)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (ingest)")
    parser.add_argument("--sim-devices", type=int, default=10_000)
    parser.add_argument("--speedup", type=float, default=600.0)
    args = parser.parse_args()
    out: dict[str, Any] = {"cpus": os.cpu_count()}
    if args.what in ("ingest", "all"):
        out["ingest"] = bench_ingest(
            args.reports, args.report_devices, args.seconds, conns=args.connections
        )
        print(json.dumps({"ingest": out["ingest"]}, indent=1), flush=True)
    if args.what in ("gate", "all"):
        out["gate"] = bench_gate(args.gate_devices)
        print(json.dumps({"gate": out["gate"]}, indent=1), flush=True)
    if args.what in ("simulate", "all"):
        out["simulate"] = bench_simulate(args.sim_devices, args.speedup)
        print(json.dumps({"simulate": out["simulate"]}, indent=1), flush=True)


if __name__ == "__main__":
    main()
