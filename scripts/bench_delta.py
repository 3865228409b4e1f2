#!/usr/bin/env python3
"""Benchmark: tufota deltas vs zstd and bsdiff on real consecutive security updates.

    nice -n 19 .venv/bin/python scripts/bench_delta.py [--cache DIR] [--pairs libssl3,kernel]

Corpus: Debian bookworm vs bookworm-security packages, fetched with
``apt-get download`` into ``--cache`` (default ``~/.cache/tufota-bench``),
unpacked with ``dpkg-deb -x`` and packed as uncompressed tar images (sorted
names, owner root, the package's own mtimes), so each image is what a
tar-based firmware of that software would be. Nothing is committed.

Per pair, in the same run: ``zstd -19`` of the full image, ``zstd -19
--long --patch-from=OLD``, ``bsdiff4`` (whole images, BSDIFF4 format), and
tufota's delta (``signing._delta.make_delta``); then tufota's applier
(``device_agent._delta.apply_delta``, standard library only) rebuilding the
new image from the old, against a plain verified download of the full image
from a loopback HTTP server (``requests``, hash while writing, fsync).

Every measured step runs in its own child process; time is wall time and
peak RSS is the child's ``ru_maxrss`` from ``wait4``. Results are cached in
``DIR/results.json`` (keyed by the images and, for tufota, the delta code),
so a second run only prints; ``--fresh`` measures again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024

# (name, [(package, version) old, new]): consecutive releases, old in bookworm,
# new in bookworm-security (the libssl pair) or both security updates (kernel).
PAIRS: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "libssl3": (("libssl3", "3.0.20-1~deb12u2"), ("libssl3", "3.0.22-1~deb12u2")),
    "kernel": (
        ("linux-image-6.1.0-53-cloud-amd64", "6.1.187-1"),
        ("linux-image-6.1.0-54-cloud-amd64", "6.1.190-1"),
    ),
}


def deb_image(cache: Path, package: str, version: str) -> Path:
    """Download, unpack and tar one package version; cached."""
    stem = f"{package}_{version}".replace("~", "_")
    image = cache / "images" / f"{stem}.tar"
    if image.exists():
        return image
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = [p for p in debs.glob(f"{package}_*.deb") if version.replace(":", "%3a") in p.name]
    if not found:
        subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=debs, check=True)
        found = [p for p in debs.glob(f"{package}_*.deb") if version in p.name]
    tree = cache / "x" / stem
    if not tree.exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(found[0]), str(tree)], check=True)
    image.parent.mkdir(parents=True, exist_ok=True)
    part = image.with_suffix(".part")

    def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(part, "w", format=tarfile.GNU_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(tree):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                tar.add(path, arcname=str(path.relative_to(tree)), recursive=False, filter=owner)
    os.replace(part, image)
    return image


def run(argv: list[str], stdout: Any = None) -> dict[str, float]:
    """Run a child; wall seconds and peak RSS (MiB) from wait4."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=stdout)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed with {proc.returncode}")
    return {"seconds": round(seconds, 2), "rss_mib": round(usage.ru_maxrss / 1024, 1)}


def child(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


GEN = """
import json, sys
from pathlib import Path
from signing._delta import make_delta
s = make_delta(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
json.dump({"sections": s.sections, "copied": s.copied, "diffed": s.diffed,
           "stored": s.stored, "members": s.members, "tokenized": s.tokenized,
           "format": s.format}, open(sys.argv[4], "w"))
"""

APPLY = """
import hashlib, json, resource, sys, time
from pathlib import Path
from device_agent._delta import apply_delta
from tufota_core._delta import DeltaInfo
# The agent process has these modules loaded anyway: note what applying adds.
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()
old, new, delta, out = map(Path, sys.argv[1:5])
result = sys.argv[5]
info = DeltaInfo("bench", "1.0.0", old.stat().st_size, sha(old), result, "2.0.0",
                 new.stat().st_size, sha(new), sys.argv[7])
start = time.monotonic()
apply_delta(info, old, delta, out, hardware_id="bench", result_target=result,
            result_length=info.result_length, result_sha256=info.result_sha256)
json.dump({"apply_s": time.monotonic() - start, "rss_base_mib": round(base / 1024, 1)},
          open(sys.argv[6], "w"))
"""

BSDIFF = "import bsdiff4, sys; bsdiff4.file_diff(*sys.argv[1:4])"

DOWNLOAD = """
import hashlib, json, os, sys, time, requests
start = time.monotonic()
h = hashlib.sha256()
with requests.get(sys.argv[1], stream=True, timeout=30) as r, open(sys.argv[2], "wb") as f:
    r.raise_for_status()
    for chunk in r.iter_content(1 << 20):
        h.update(chunk)
        f.write(chunk)
    f.flush()
    os.fsync(f.fileno())
assert h.hexdigest() == sys.argv[3]
json.dump({"download_s": time.monotonic() - start}, open(sys.argv[4], "w"))
"""


APPLY_KEY = hashlib.sha256((APPLY + DOWNLOAD).encode()).hexdigest()[:6]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def code_key() -> str:
    h = hashlib.sha256()
    for rel in (
        "signing/_delta.py",
        "device_agent/_delta.py",
        "tufota_core/_delta.py",
        "tufota_core/_deflate.py",
    ):
        h.update((ROOT / rel).read_bytes())
    return h.hexdigest()[:12]


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def measure(cache: Path, name: str, old: Path, new: Path, results: dict[str, Any]) -> None:
    work = cache / "work" / name
    work.mkdir(parents=True, exist_ok=True)
    size = new.stat().st_size
    key = f"{name}:{old.stat().st_size}:{size}"
    got = results.setdefault(key, {})

    def once(method: str, fn: Any, *, tag: str = "") -> None:
        if f"{method}{tag}" in got:
            return
        print(f"  {name}: {method} ...", flush=True)
        got[f"{method}{tag}"] = fn()
        (cache / "results.json").write_text(json.dumps(results, indent=1))

    def zstd_full() -> dict[str, Any]:
        out = work / "full.zst"
        r = run(["zstd", "-q", "-f", "-19", "-T1", str(new), "-o", str(out)])
        return {**r, "bytes": out.stat().st_size}

    def zstd_patch() -> dict[str, Any]:
        out = work / "patch.zst"
        r = run(
            [
                "zstd",
                "-q",
                "-f",
                "-19",
                "-T1",
                "--long=28",
                f"--patch-from={old}",
                str(new),
                "-o",
                str(out),
            ]
        )
        return {**r, "bytes": out.stat().st_size}

    def bsdiff() -> dict[str, Any]:
        out = work / "patch.bsdiff4"
        r = run(child(BSDIFF, str(old), str(new), str(out)))
        return {**r, "bytes": out.stat().st_size}

    def tufota() -> dict[str, Any]:
        out, meta = work / "delta.tfdelta", work / "delta.json"
        r = run(child(GEN, str(old), str(new), str(out), str(meta)))
        return {**r, "bytes": out.stat().st_size, **json.loads(meta.read_text())}

    def apply() -> dict[str, Any]:
        out = work / "applied.img"
        out.unlink(missing_ok=True)
        subprocess.run(["sync"], check=True)
        r = run(
            child(
                APPLY,
                str(old),
                str(new),
                str(work / "delta.tfdelta"),
                str(out),
                "firmware/bench/2.0.0/image.tar",
                str(work / "apply.json"),
                got[f"tufota{tag}"].get("format", "tufota-delta/1"),
            )
        )
        out.unlink()
        timed = json.loads((work / "apply.json").read_text())
        # Throughput of the apply call alone (source check, replay, verify, fsync).
        return {**r, **timed, "mb_s": round(size / MiB / timed["apply_s"], 1)}

    def download() -> dict[str, Any]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(new.parent)))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        out = work / "downloaded.img"
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/{new.name}"
            subprocess.run(["sync"], check=True)
            r = run(child(DOWNLOAD, url, str(out), sha256(new), str(work / "download.json")))
            r.update(json.loads((work / "download.json").read_text()))
        finally:
            server.shutdown()
            out.unlink(missing_ok=True)
        return {**r, "mb_s": round(size / MiB / r["download_s"], 1)}

    once("zstd-19", zstd_full)
    once("zstd-patch-from", zstd_patch)
    once("bsdiff4", bsdiff)
    tag = f"@{code_key()}"
    once("tufota", tufota, tag=tag)
    once("apply", apply, tag=f"{tag}:{APPLY_KEY}")
    once("download", download, tag=f":{APPLY_KEY}")


def report(results: dict[str, Any], names: list[str]) -> None:
    tag = f"@{code_key()}"
    print("\n| pair | image | zstd -19 | zstd --patch-from | bsdiff4 | tufota delta |")
    print("|---|---|---|---|---|---|")
    rows = []
    for key, got in results.items():
        name, _, size_text = key.split(":")
        if name not in names or f"tufota{tag}" not in got:
            continue
        size = int(size_text)
        cells = [
            f"{got[m]['bytes'] / size:.2%} ({got[m]['bytes'] / MiB:.2f} MiB)"
            for m in ("zstd-19", "zstd-patch-from", "bsdiff4", f"tufota{tag}")
        ]
        print(f"| {name} | {size / MiB:.1f} MiB | " + " | ".join(cells) + " |")
        rows.append((name, got))
    print(
        "\n| pair | generation: bsdiff4 | tufota | zstd --patch-from "
        "| apply: tufota (peak RSS, MiB/s) | full download over loopback (peak RSS, MiB/s) |"
    )
    print("|---|---|---|---|---|---|")
    for name, got in rows:

        def cost(m: str, got: dict[str, Any] = got) -> str:
            return f"{got[m]['seconds']:.1f} s, {got[m]['rss_mib']:.0f} MiB"

        a, d = got[f"apply{tag}:{APPLY_KEY}"], got[f"download:{APPLY_KEY}"]
        print(
            f"| {name} | {cost('bsdiff4')} | {cost(f'tufota{tag}')} | "
            f"{cost('zstd-patch-from')} | {a['rss_mib']:.0f} MiB, {a['mb_s']} MiB/s | "
            f"{d['rss_mib']:.0f} MiB, {d['mb_s']} MiB/s |"
        )
        print(
            f"  ({name}: the applier's process held {a['rss_base_mib']:.0f} MiB before "
            "applying, with the agent's modules loaded)"
        )
    for name, got in rows:
        t = got[f"tufota{tag}"]
        print(
            f"\n{name}: {t['members']} members: {t['copied']} copied, {t['diffed']} diffed "
            f"({t.get('tokenized', 0)} gzip files by their tokens), {t['stored']} stored; "
            f"{t.get('format', 'tufota-delta/1')}; sections {t['sections']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "tufota-bench")
    parser.add_argument("--pairs", default=",".join(PAIRS))
    parser.add_argument("--fresh", action="store_true", help="measure again, ignore the cache")
    args = parser.parse_args()
    names = [n for n in args.pairs.split(",") if n]
    for n in names:
        if n not in PAIRS:
            raise SystemExit(f"unknown pair {n!r}; known: {', '.join(PAIRS)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    store = args.cache / "results.json"
    results: dict[str, Any] = (
        {} if args.fresh or not store.exists() else json.loads(store.read_text())
    )
    for n in names:
        (old_pkg, new_pkg) = PAIRS[n]
        old = deb_image(args.cache, *old_pkg)
        new = deb_image(args.cache, *new_pkg)
        print(f"{n}: {old.name} -> {new.name}", flush=True)
        measure(args.cache, n, old, new, results)
    report(results, names)


if __name__ == "__main__":
    main()
