#!/usr/bin/env python3
"""Benchmark: signing one more release, and what a device downloads, as product lines grow.

For each layout (10 and 100 product lines, 10,000 firmware targets in total,
measured in the same run) the script builds a real embedded repository
through the verifying publisher, then:

* signs one more release of line 0 the offline way (``add_release``, sign,
  ``write_bundle``) and publishes the bundle (``read_bundle`` +
  ``Publisher.publish``), timing each half;
* counts the metadata bytes a device of line 0 downloads with tuf.ngclient:
  cold (fresh device, trusted root only) and warm (a device that was current
  before the new release), both including the delegation walk to its own
  product line's role and the rollout document lookup.

Usage: .venv/bin/python scripts/bench_signing.py [--targets 10000] [--lines 10,100]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repo_server import Blob, Repository
from signing import (
    Expiry,
    add_product_line,
    add_release,
    empty_delegated,
    load_signer,
    read_bundle,
    sign_all,
    write_bundle,
)
from tufota_core import FirmwareInfo, firmware_target_path, product_role, utcnow

PASSPHRASE = "benchmark passphrase"  # noqa: S105 - a throw-away repository


class CountingFetcher(FetcherInterface):
    """Reads metadata files from the repository's public tree and counts the bytes."""

    def __init__(self, public: Path) -> None:
        self.public = public
        self.bytes = 0
        self.files = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = self.public / url.split("://", 1)[1]
        if not path.is_file():
            raise tuf_exceptions.DownloadHTTPError(f"{url} not found", 404)
        data = path.read_bytes()
        self.bytes += len(data)
        self.files += 1
        yield data


def _ask() -> str:
    return PASSPHRASE


def build(workdir: Path, lines: int, total: int) -> tuple[Repository, dict[str, CryptoSigner]]:
    repo = Repository.create(workdir / "repo", PASSPHRASE)
    now, expiry = utcnow(), Expiry()
    state = repo.state()
    targets = state.targets
    signers = {f"hw{n}": CryptoSigner.generate_ed25519() for n in range(lines)}
    for hw, signer in signers.items():
        targets = add_product_line(targets, hw, [signer.public_key], 1, now, expiry)
    targets.signed.version = state.targets.signed.version + 1
    sign_all(targets, [load_signer(repo.key(k), _ask) for k in repo.config.targets_keys])
    roles: dict[str, Metadata[Targets]] = {}
    blobs: list[Blob] = []
    per_line = total // lines
    for hw, signer in signers.items():
        role = empty_delegated(now, expiry.product)
        for i in range(per_line):
            version = f"1.{i // 100}.{i % 100}"
            data = f"{hw} {version}".encode()
            path = firmware_target_path(hw, version, "fw.img")
            target = TargetFile.from_data(path, io.BytesIO(data), ["sha256"])
            target.unrecognized_fields["custom"] = FirmwareInfo(
                hw, version, severity="low", fixes=("CVE-2026-1234",)
            ).to_custom()
            role.signed.targets[path] = target
            blobs.append(Blob(target, data=data))
        role.sign(signer)
        roles[product_role(hw)] = role
    repo.publisher(_ask).publish(roles, blobs, targets)
    return repo, signers


def device_bytes(repo: Repository, cache: Path, new_path: str) -> tuple[int, int]:
    fetcher = CountingFetcher(repo.path / "public")
    cache.mkdir(exist_ok=True)
    updater = Updater(
        metadata_dir=str(cache),
        metadata_base_url="bench://metadata/",
        target_base_url="bench://targets/",
        fetcher=fetcher,
        config=UpdaterConfig(prefix_targets_with_hash=True),
        bootstrap=repo.trusted_root(),
    )
    updater.refresh()
    updater.get_targetinfo("rollouts/hw0.json")
    updater.get_targetinfo(new_path)
    return fetcher.bytes, fetcher.files


def measure(lines: int, total: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix=f"tufota-bench-{lines}-"))
    try:
        repo, signers = build(work, lines, total)
        warm_cache = work / "warm"
        device_bytes(repo, warm_cache, "firmware/hw0/1.0.0/fw.img")  # current before the release

        image = work / "new.img"
        image.write_bytes(b"new firmware\n" * 4096)
        role_name = product_role("hw0")
        started = time.perf_counter()
        role = Metadata[Targets].from_bytes(repo.state().roles[role_name].to_bytes())
        role, target = add_release(role, image, FirmwareInfo("hw0", "9.0.0"), utcnow(), Expiry())
        role.sign(signers["hw0"])
        bundle = work / "release.tar.gz"
        write_bundle(bundle, roles={role_name: role}, blobs=[(target, image)])
        sign_s = time.perf_counter() - started

        started = time.perf_counter()
        with read_bundle(bundle) as b:
            repo.publisher(_ask).publish(b.roles, [Blob(t, path=p) for t, p in b.blobs], b.targets)
        publish_s = time.perf_counter() - started

        cold_bytes, cold_files = device_bytes(repo, work / "cold", target.path)
        warm_bytes, warm_files = device_bytes(repo, warm_cache, target.path)
        return {
            "lines": lines,
            "targets_per_line": total // lines,
            "sign_s": sign_s,
            "publish_s": publish_s,
            "bundle_bytes": bundle.stat().st_size,
            "cold_bytes": cold_bytes,
            "cold_files": cold_files,
            "warm_bytes": warm_bytes,
            "warm_files": warm_files,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--lines", default="10,100")
    args = parser.parse_args()
    results = [measure(int(n), args.targets) for n in args.lines.split(",")]
    header = (
        f"{'lines':>6} {'targets/line':>12} {'sign s':>8} {'publish s':>10} "
        f"{'bundle B':>9} {'cold B':>9} {'files':>5} {'warm B':>8} {'files':>5}"
    )
    print(header)
    for r in results:
        print(
            f"{r['lines']:>6} {r['targets_per_line']:>12} {r['sign_s']:>8.3f} "
            f"{r['publish_s']:>10.3f} {r['bundle_bytes']:>9} {r['cold_bytes']:>9} "
            f"{r['cold_files']:>5} {r['warm_bytes']:>8} {r['warm_files']:>5}"
        )
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(f"ratios {b['lines']} lines / {a['lines']} lines:")
        for key in ("sign_s", "publish_s", "cold_bytes", "warm_bytes"):
            print(f"  {key:<10} {b[key] / a[key]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
