#!/usr/bin/env python3
"""Benchmark: the agent's one-pass verified download vs curl vs stock ngclient.

    .venv/bin/python scripts/bench_download.py [--size 1GiB] [--repeat 3] [--dir DIR]

One static HTTP server (a separate process, ``sendfile``, ``Range``/``ETag``)
serves a random image and the TUF metadata that signs it, on 127.0.0.1. In
the same run, each client downloads the same file to the same disk:

* ``curl -o`` (no verification, no fsync: the floor to beat), and for
  reference ``curl -o`` followed by ``sync FILE`` (the same durability as the
  agent, which fsyncs before it renames);
* the agent: TUF refresh, then ``device_agent``'s ``Downloader`` (hash while
  writing, one pass, resumable), in its own process with the agent's
  dependency set (``boto3`` blocked, as on a device without the server extra);
* stock ``tuf.ngclient``: refresh, then ``Updater.download_target``.

The clients take turns, ``--repeat`` rounds; before every run the output
directory is emptied, ``sync`` flushes the previous run's writes, and the
served image is read once so that every client finds it in the page cache.
Reported: the median and the best throughput and their ratios to curl's
median and best, peak RSS of the client process
(VmHWM, sampled every 5 ms), peak extra disk used during the
download (1.00x = no second copy), and, for the agent, the share of the image
fetched again when a transfer cut at 90% is resumed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def parse_size(text: str) -> int:
    match = re.match(r"^(\d+)\s*([KMG]i?B?)?$", text.strip(), re.IGNORECASE)
    if not match:
        raise SystemExit(f"bad size {text!r}")
    unit = (match.group(2) or "").upper()[:1]
    return int(match.group(1)) * {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB}[unit]


# -- the static server (runs in its own process) ------------------------------------


def serve(root: Path, port_file: Path) -> None:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = root / self.path.lstrip("/").split("?")[0]
            if ".." in self.path or not path.is_file():
                self.send_error(404)
                return
            size = path.stat().st_size
            etag = f'"{path.stat().st_mtime_ns:x}-{size:x}"'
            start, status = 0, 200
            wanted = self.headers.get("Range")
            if wanted and self.headers.get("If-Range", etag) == etag:
                start, status = int(wanted.split("=")[1].split("-")[0]), 206
            count = size - start
            cut_file = root / ".cut"
            if cut_file.exists() and path.suffix == ".bin":
                count = min(count, int(cut_file.read_text()))
                cut_file.unlink()
            self.send_response(status)
            self.send_header("Content-Length", str(size - start))
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.end_headers()
            self.wfile.flush()
            with (
                path.open("rb") as f,
                contextlib.suppress(BrokenPipeError, ConnectionResetError),
            ):
                self.connection.sendfile(f, start, count)
            self.close_connection = True

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_file.write_text(str(httpd.server_address[1]))
    httpd.serve_forever()


# -- the repository: an image and TUF metadata signing it ----------------------------


def make_repo(root: Path, size: int) -> tuple[str, bytes]:
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

    (root / "metadata").mkdir(parents=True)
    (root / "targets").mkdir()
    image = root / "targets" / "image.bin"
    with image.open("wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.write(os.urandom(size % MiB))
    info = TargetFile.from_file("image.bin", str(image), ["sha256"])
    signer = CryptoSigner.generate_ed25519()
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    root_md = Metadata(Root(expires=expires, consistent_snapshot=False))
    for role in ("root", "timestamp", "snapshot", "targets"):
        root_md.signed.add_key(signer.public_key, role)
    targets = Metadata(Targets(expires=expires, targets={"image.bin": info}))
    snapshot = Metadata(Snapshot(expires=expires, meta={"targets.json": MetaFile(1)}))
    timestamp = Metadata(Timestamp(expires=expires, snapshot_meta=MetaFile(1)))
    for name, md in (
        ("1.root", root_md),
        ("targets", targets),
        ("snapshot", snapshot),
        ("timestamp", timestamp),
    ):
        md.sign(signer)
        (root / "metadata" / f"{name}.json").write_bytes(md.to_bytes())
    (root / "metadata" / "root.json").write_bytes(root_md.to_bytes())
    return info.hashes["sha256"], root_md.to_bytes()


# -- clients (each run in its own process) --------------------------------------------


def client(kind: str, url: str, root_file: Path, work: Path, dest: Path) -> None:
    """Download ``image.bin`` with ``kind``; print JSON {seconds, fetched, error}."""
    if kind == "agent":
        sys.modules["boto3"] = None  # type: ignore[assignment]  # the device install has none
    from tuf.ngclient import Updater

    md = work / "md"
    shutil.rmtree(md, ignore_errors=True)
    md.mkdir(parents=True)
    started = time.perf_counter()
    updater = Updater(
        str(md), f"{url}/metadata/", str(work), f"{url}/targets/", bootstrap=root_file.read_bytes()
    )
    info = updater.get_targetinfo("image.bin")
    assert info is not None
    out: dict[str, Any] = {}
    if kind == "stock":
        updater.download_target(info, str(dest))
        out["fetched"] = info.length
    else:
        import requests

        from device_agent._config import AgentLimits
        from device_agent._download import Downloader, Expected, HttpSource
        from tufota_core import TransportError

        limits = AgentLimits()
        with requests.Session() as session:
            downloader = Downloader(HttpSource(session, limits), limits)
            try:
                result = downloader.fetch(
                    f"{url}/targets/image.bin", Expected.from_target(info), dest
                )
                out["fetched"] = result.fetched
                out["resumed_from"] = result.resumed_from
            except TransportError as e:
                out["error"] = e.code
    out["seconds"] = time.perf_counter() - started
    print(json.dumps(out))


def _vm_hwm(pid: int) -> int:
    """Peak resident set of a live process (VmHWM; reset by exec, unlike ru_maxrss)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def run_measured(argv: list[str], disk_dir: Path) -> tuple[float, int, int, str]:
    """Run ``argv``; return (wall seconds, peak RSS bytes, peak extra disk bytes, stdout).

    The page cache is flushed first (``sync``) so every client starts from the
    same writeback state.
    """
    os.sync()
    base = shutil.disk_usage(disk_dir).used
    peak = [0, 0]
    done = threading.Event()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    def watch() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], shutil.disk_usage(disk_dir).used - base)
            peak[1] = max(peak[1], _vm_hwm(proc.pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, _ = proc.communicate()
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed: {stdout}")
    return seconds, peak[1], peak[0], stdout


def warm(path: Path) -> None:
    """Read ``path`` once so that the server sends it from the page cache."""
    buffer = bytearray(4 * MiB)
    with path.open("rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size", default="1GiB", help="image size, e.g. 64MiB or 1GiB")
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs per client (median and best reported)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="work directory (one disk)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dest", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port_file)
        return 0
    if args.client:
        client(args.client, args.url, args.root, args.dir, args.dest)
        return 0

    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="tufota-bench-", dir=args.dir))
    server = None
    try:
        repo = work / "repo"
        sha256, root_bytes = make_repo(repo, size)
        root_file = work / "root.json"
        root_file.write_bytes(root_bytes)
        port_file = work / "port"
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(repo), "--port-file", str(port_file)]
        )
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        dest = work / "out" / "image.bin"
        dest.parent.mkdir()
        curl = shutil.which("curl")
        results: dict[str, dict[str, Any]] = {}

        def once(name: str) -> None:
            for leftover in dest.parent.iterdir():
                leftover.unlink()
            warm(repo / "targets" / "image.bin")
            if name == "curl":
                argv = [str(curl), "-sS", "-o", str(dest), f"{url}/targets/image.bin"]
            elif name == "curl+sync":
                # sync FILE fsyncs it, as the agent does before its rename.
                command = '"$0" -sS -o "$1" "$2" && sync "$1"'
                argv = ["sh", "-c", command, str(curl), str(dest), f"{url}/targets/image.bin"]
            else:
                argv = [sys.executable, __file__, "--client", name, "--url", url]
                argv += ["--root", str(root_file), "--dir", str(work), "--dest", str(dest)]
            seconds, rss, disk, stdout = run_measured(argv, work)
            if not name.startswith("curl"):
                # In-process time (metadata refresh + download): a device's agent is
                # already running, so interpreter start-up is not part of it.
                seconds = json.loads(stdout)["seconds"]
            assert dest.stat().st_size == size
            runs = results.setdefault(name, {"seconds": [], "rss": 0, "disk": 0})
            runs["seconds"].append(seconds)
            runs["rss"] = max(runs["rss"], rss)
            runs["disk"] = max(runs["disk"], disk)

        names = (["curl", "curl+sync"] if curl else []) + ["agent", "stock"]
        for _ in range(args.repeat):
            for name in names:
                once(name)
        if sha256_of(dest) != sha256:
            raise SystemExit("the last download does not match the signed hash")

        # Resume: cut the transfer at 90%, then run the agent again.
        for leftover in dest.parent.iterdir():
            leftover.unlink()
        cut = size * 9 // 10
        (repo / ".cut").write_text(str(cut))
        argv = [sys.executable, __file__, "--client", "agent", "--url", url]
        argv += ["--root", str(root_file), "--dir", str(work), "--dest", str(dest)]
        first = json.loads(run_measured(argv, work)[3])
        second = json.loads(run_measured(argv, work)[3])
        assert first.get("error"), first
        assert not second.get("error"), second
        assert sha256_of(dest) == sha256

        print(f"image {size / MiB:.0f} MiB on 127.0.0.1, {args.repeat} runs per client")
        print(
            f"{'client':10} {'median MiB/s':>12} {'x curl':>7} {'best MiB/s':>11} {'x curl':>7} "
            f"{'peak RSS':>9} {'peak disk':>10}  all runs (MiB/s)"
        )
        medians = {name: statistics.median(r["seconds"]) for name, r in results.items()}
        bests = {name: min(r["seconds"]) for name, r in results.items()}
        for name in names:
            r = results[name]
            ratio = f"{medians['curl'] / medians[name]:.2f}" if curl else "-"
            best_ratio = f"{bests['curl'] / bests[name]:.2f}" if curl else "-"
            every = " ".join(f"{size / MiB / s:.0f}" for s in r["seconds"])
            # curl+sync runs under sh, whose peak RSS says nothing about curl.
            rss = "-" if name == "curl+sync" else f"{r['rss'] / MiB:.0f}Mi"
            print(
                f"{name:10} {size / MiB / medians[name]:12.0f} {ratio:>7} "
                f"{size / MiB / bests[name]:11.0f} {best_ratio:>7} "
                f"{rss:>9} {r['disk'] / size:9.2f}x  {every}"
            )
        again = max(0, cut - second["resumed_from"])
        print(
            f"resume after a cut at 90% ({first.get('error')}): resumed at byte "
            f"{second['resumed_from']} of {size}, fetched {second['fetched']} bytes; "
            f"bytes fetched twice: {again} ({again / size:.2%} of the image)"
        )
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
