#!/usr/bin/env python3
"""Benchmark: conditional-GET polls of ``timestamp.json`` per second, ``tufota serve`` vs nginx.

A device's idle poll is ``GET /metadata/timestamp.json`` with the ETag it
already has, answered ``304 Not Modified``. This script builds a real
embedded repository (one release), then in the same run:

* starts ``tufota serve`` (the real CLI, one uvicorn process) on loopback;
* starts nginx (one worker unless ``--nginx-workers``) serving the very same
  ``public/`` directory with the cache headers docs/serving.md recommends;
* checks that both answer the conditional GET with 304 and the same body for
  a plain GET;
* drives each with the same load (``wrk`` with several connections, or a
  Python thread pool when wrk is absent), in alternating rounds;
* prints polls/s for each, the best round of each, and the ratio.

nginx and wrk are installed with apt-get when missing (root only).

Usage: .venv/bin/python scripts/bench_polls.py [--seconds 10] [--rounds 3]
       [--connections 32] [--threads 2] [--nginx-workers 1] [--python-load]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repo_server import Repository, add_release_locally
from tufota_core import FirmwareInfo

ROOT = Path(__file__).resolve().parent.parent
TIMESTAMP = "/metadata/timestamp.json"

NGINX_CONF = """\
worker_processes {workers};
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    types {{ application/json json; }}
    default_type application/octet-stream;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {public};
        location = /metadata/timestamp.json {{
            add_header Cache-Control "no-cache";
        }}
        location /metadata/ {{
            add_header Cache-Control "public, max-age=31536000, immutable";
        }}
        location /targets/ {{
            add_header Cache-Control "public, max-age=31536000, immutable";
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


def ensure_tool(name: str, package: str) -> str | None:
    """The tool's path, installing its Debian package when missing and allowed."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    print(f"==> installing {package} (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-q", package], check=False, env=env,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited: {proc.communicate()[1].decode(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not start")


def get(port: int, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", TIMESTAMP, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def wrk_rate(wrk: str, port: int, etag: str, seconds: int, threads: int, conns: int) -> float:
    out = subprocess.run(
        [wrk, f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "-H", f"If-None-Match: {etag}",
         f"http://127.0.0.1:{port}{TIMESTAMP}"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    if "Non-2xx or 3xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors against port {port}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    return float(match.group(1))


def python_rate(port: int, etag: str, seconds: int, conns: int) -> float:
    """Fallback load: ``conns`` threads, each a keep-alive connection."""
    stop = time.monotonic() + seconds
    counts = [0] * conns
    failures: list[str] = []

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            while time.monotonic() < stop:
                conn.request("GET", TIMESTAMP, headers={"If-None-Match": etag})
                response = conn.getresponse()
                response.read()
                if response.status != 304:
                    failures.append(str(response.status))
                    return
                counts[i] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"port {port} answered {failures[0]} instead of 304")
    return sum(counts) / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per server")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive clients")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--nginx-workers", default="1", help="nginx worker_processes (or auto)")
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()

    nginx = ensure_tool("nginx", "nginx")
    if nginx is None:
        raise SystemExit("nginx is missing and cannot be installed here (run as root with apt-get)")
    wrk = None if args.python_load else ensure_tool("wrk", "wrk")
    load = "wrk" if wrk else "python threads"

    work = Path(tempfile.mkdtemp(prefix="tufota-bench-polls-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        passphrase = secrets.token_urlsafe(16)
        repo = Repository.create(work / "repo", passphrase)
        image = work / "fw.img"
        image.write_bytes(b"benchmark firmware\n" * 1000)
        add_release_locally(repo, image, FirmwareInfo("gw-100", "1.0.0"), lambda: passphrase)
        # nginx workers may run as another user: let them traverse to public/.
        for path in (work, repo.path):
            path.chmod(0o755)
        public = repo.path / "public"

        tufota_port, nginx_port = free_port(), free_port()
        env = {**os.environ, "TUFOTA_PASSPHRASE": passphrase}
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tufota_cli.main",
                    "serve",
                    "--repo",
                    str(repo.path),
                    "--port",
                    str(tufota_port),
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
        conf = work / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                workers=args.nginx_workers,
                work=work,
                port=nginx_port,
                public=public,
                user="user root;" if os.geteuid() == 0 else "",
            )
        )
        procs.append(
            subprocess.Popen(
                [nginx, "-c", str(conf), "-p", str(work)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
        wait_for(tufota_port, procs[0], "tufota serve")
        wait_for(nginx_port, procs[1], "nginx")

        etags = {}
        bodies = {}
        for name, port in (("tufota serve", tufota_port), ("nginx", nginx_port)):
            status, headers, body = get(port)
            assert status == 200, (name, status)
            etags[name] = headers["etag"]
            bodies[name] = body
            status, _h, _b = get(port, {"If-None-Match": headers["etag"]})
            if status != 304:
                raise SystemExit(f"{name} answered {status} to a conditional GET, not 304")
            if headers.get("cache-control") != "no-cache":
                raise SystemExit(f"{name} sends Cache-Control {headers.get('cache-control')!r}")
        if bodies["tufota serve"] != bodies["nginx"]:
            raise SystemExit("the two servers serve different timestamp.json bytes")

        ports = {"tufota serve": tufota_port, "nginx": nginx_port}
        rates: dict[str, list[float]] = {name: [] for name in ports}
        print(
            f"==> {args.rounds} rounds x {args.seconds}s, {args.connections} keep-alive "
            f"connections, load by {load}, {os.cpu_count()} CPUs, nginx workers "
            f"{args.nginx_workers}",
            flush=True,
        )
        for round_ in range(args.rounds):
            for name, port in ports.items():
                if wrk:
                    rate = wrk_rate(
                        wrk, port, etags[name], args.seconds, args.threads, args.connections
                    )
                else:
                    rate = python_rate(port, etags[name], args.seconds, args.connections)
                rates[name].append(rate)
                print(f"    round {round_ + 1}: {name:<13} {rate:>10,.0f} polls/s", flush=True)

        best = {name: max(values) for name, values in rates.items()}
        median = {name: statistics.median(values) for name, values in rates.items()}
        ratio = best["tufota serve"] / best["nginx"]
        print()
        print(f"{'server':<14}{'best polls/s':>14}{'median polls/s':>16}")
        for name in ports:
            print(f"{name:<14}{best[name]:>14,.0f}{median[name]:>16,.0f}")
        print(f"ratio tufota serve / nginx (best rounds): {ratio:.3f}")
        print(
            f"idle polls every 5 minutes per device: tufota serve keeps up with "
            f"~{best['tufota serve'] * 300:,.0f} devices, nginx ~{best['nginx'] * 300:,.0f}"
        )
        if args.json:
            print(json.dumps({"best": best, "median": median, "ratio": ratio, "load": load}))
        return 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
