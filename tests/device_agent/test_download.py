"""Resume after a cut, bandwidth cap, data budget, progress reports; bundles; tuf-client."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from device_agent import (
    ACTION_REBOOTING,
    ACTION_SUCCEEDED,
    ACTION_UNREACHABLE,
    AgentLimits,
)
from device_agent._download import Downloader, Expected, HttpSource
from device_agent.cli import main
from tests.device_agent.conftest import FACTORY, Env
from tufota_core import VerificationError

SIZE = 256 * 1024


def _release(env: Env, version: str = "1.1.0", size: int = SIZE) -> tuple[str, str]:
    path = env.repo.add_firmware(version, os.urandom(size))
    env.repo.set_rollout(version)
    env.repo.publish()
    blob = "/" + env.repo.blobs[path].relative_to(env.repo.dir).as_posix()
    return path, blob


def _small_chunks(env: Env, **changes: Any) -> None:
    limits = AgentLimits(download_chunk_size=16 * 1024, download_writeback_bytes=32 * 1024)
    env.config = dataclasses.replace(env.config, limits=limits, **changes)


@pytest.mark.parametrize("depth", [1, 4])  # hashed inline, or on a second thread
def test_interrupted_download_resumes_where_it_stopped(env: Env, depth: int) -> None:
    _, blob = _release(env)
    env.config = dataclasses.replace(
        env.config, limits=AgentLimits(download_chunk_size=64 * 1024, download_queue_depth=depth)
    )
    env.server.cuts[blob] = SIZE * 9 // 10

    first = env.agent().run_once()

    assert (first.action, first.error_code) == (ACTION_UNREACHABLE, "server_unreachable")
    assert env.agent().status()["agent"]["state"] == "downloading"
    assert (env.config.slots_dir / "b" / "image.bin.part").stat().st_size == SIZE * 9 // 10

    second = env.agent().run_once()  # as after a restart

    assert second.action == ACTION_REBOOTING
    assert env.server.ranges == [f"bytes={SIZE * 9 // 10}-"]
    assert env.server.bytes_sent[blob] == SIZE  # nothing fetched twice
    assert env.agent().run_once().action == ACTION_SUCCEEDED
    resumed = [r for r in env.server.reports if r.state == "downloading"][-1]
    assert resumed.bytes_done == SIZE * 9 // 10


def test_partial_of_another_target_is_never_continued(env: Env) -> None:
    _, blob = _release(env)
    part = env.config.slots_dir / "b" / "image.bin.part"
    part.write_bytes(b"x" * 1000)
    part.with_name("image.bin.part.json").write_text(
        json.dumps({"expected": {"length": SIZE, "hashes": {"sha256": "0" * 64}}, "etag": None})
    )

    assert env.agent().run_once().action == ACTION_REBOOTING
    assert env.server.ranges == []
    assert env.server.bytes_sent[blob] == SIZE


def test_bandwidth_cap_paces_the_download(env: Env) -> None:
    path, blob = _release(env, size=96 * 1024)
    rate = 256 * 1024
    session = requests.Session()
    limits = AgentLimits(download_chunk_size=8 * 1024)
    info = env.repo.delegated[env.repo.firmware_role].signed.targets[path]
    started = time.monotonic()

    Downloader(HttpSource(session, limits), limits, rate_limit=rate).fetch(
        env.url + blob, Expected.from_target(info), env.device_dir / "fw.bin"
    )

    assert time.monotonic() - started >= 0.9 * (96 * 1024) / rate
    session.close()


def test_data_budget_pauses_the_download_and_it_resumes_next_period(env: Env) -> None:
    _release(env)
    _small_chunks(env, data_budget=SIZE // 2)

    first = env.agent().run_once()

    assert (first.action, first.error_code) == (ACTION_UNREACHABLE, "data_budget_exhausted")
    failed = [r for r in env.server.reports if r.state == "failed"]
    assert [r.error_code for r in failed] == ["data_budget_exhausted"]
    budget_file = env.config.state_dir / "budget.json"
    used = json.loads(budget_file.read_text())["used"]
    assert used == SIZE // 2  # no read asks for more than the budget leaves
    assert env.boot_control()["pending"] is None

    budget_file.unlink()  # a new period starts
    second = env.agent().run_once()

    assert second.action == ACTION_REBOOTING
    assert used + json.loads(budget_file.read_text())["used"] == SIZE  # nothing fetched twice
    assert env.server.ranges == [f"bytes={used}-"]


def test_progress_is_reported_without_a_terminal(env: Env) -> None:
    _release(env)
    _small_chunks(env, progress_step=25)

    assert env.agent().run_once().action == ACTION_REBOOTING

    progress = [r.bytes_done for r in env.server.reports if r.state == "downloading"]
    assert progress[0] == 0
    assert progress[1:] == sorted(progress[1:])
    assert len(progress) == 4  # 0 %, then 25, 50 and 75 %
    assert all(r.bytes_total == SIZE for r in env.server.reports if r.state == "downloading")


def test_overlong_stream_is_discarded_by_the_downloader(env: Env) -> None:
    path, blob = _release(env, size=4096)
    info = env.repo.delegated[env.repo.firmware_role].signed.targets[path]
    short = Expected(info.length - 1, dict(info.hashes))
    session = requests.Session()
    limits = AgentLimits()
    dest = env.device_dir / "fw.bin"

    with pytest.raises(VerificationError) as caught:
        Downloader(HttpSource(session, limits), limits).fetch(env.url + blob, short, dest)

    assert caught.value.code == "target_length_mismatch"
    assert not dest.exists()
    assert not dest.with_name("fw.bin.part").exists()
    session.close()


@contextlib.contextmanager
def _chunked_server(body: bytes) -> Iterator[str]:
    """A server that sends ``body`` with ``Transfer-Encoding: chunked`` (no Content-Length)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 5000):
                piece = body[i : i + 5000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/fw.bin"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(("signed_length", "code"), [(0, None), (-1, "target_length_mismatch")])
def test_chunked_body_is_verified_like_a_plain_one(
    tmp_path: Path, signed_length: int, code: str | None
) -> None:
    body = os.urandom(100_000)
    expected = Expected(len(body) + signed_length, {"sha256": hashlib.sha256(body).hexdigest()})
    limits = AgentLimits(download_chunk_size=16 * 1024)
    dest = tmp_path / "fw.bin"

    with _chunked_server(body) as url, requests.Session() as session:
        downloader = Downloader(HttpSource(session, limits), limits)
        if code is None:
            result = downloader.fetch(url, expected, dest)
            assert (result.fetched, dest.read_bytes()) == (len(body), body)
        else:
            with pytest.raises(VerificationError) as caught:
                downloader.fetch(url, expected, dest)
            assert caught.value.code == code
            assert not dest.exists()
            assert not dest.with_name("fw.bin.part").exists()


# -- offline bundles ------------------------------------------------------------


def _bundle(env: Env, tmp_path: Path, target: str | None) -> Path:
    bundle = tmp_path / "usb"
    shutil.copytree(env.repo.metadata_dir, bundle / "metadata")
    shutil.copytree(env.repo.targets_dir, bundle / "targets")
    if target is not None:
        (bundle / "bundle.json").write_text(
            json.dumps({"schema": "tufota.bundle/1", "target": target})
        )
    return bundle


def _install_bundle(env: Env, bundle: Path) -> int:
    return main(["install-bundle", str(bundle), "--config", str(env.device_dir / "agent.toml")])


def test_bundle_installs_offline_and_is_reported_when_online(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _release(env, size=4096)
    bundle = _bundle(env, tmp_path, path)
    env.write_config(server_url="http://127.0.0.1:9")  # offline

    assert _install_bundle(env, bundle) == 0
    assert "reboot pending: 1.1.0" in capsys.readouterr().out
    assert env.boot_control()["pending"] == "b"
    assert env.server.reports == []

    env.write_config()  # back online: boot, verify, commit, report
    result = env.agent().run_once()

    assert result.action == ACTION_SUCCEEDED
    assert [r.state for r in env.server.reports][:4] == [
        "downloading",
        "downloaded",
        "installing",
        "rebooting",
    ]
    assert env.server.reports[-1].installed_version == "1.1.0"


def test_bundle_without_description_installs_its_rollout_target(env: Env, tmp_path: Path) -> None:
    _release(env, size=4096)
    assert _install_bundle(env, _bundle(env, tmp_path, None)) == 0
    assert env.boot_control()["slots"]["b"]["version"] == "1.1.0"


@pytest.mark.parametrize(
    ("attack", "code"),
    [
        ("tampered", "target_hash_mismatch"),
        ("downgrade", "downgrade_refused"),
        ("stale", "metadata_rollback"),
        ("foreign", "target_not_found"),
    ],
)
def test_bad_bundle_is_refused_and_nothing_installed(
    env: Env, tmp_path: Path, attack: str, code: str
) -> None:
    path, _ = _release(env, size=4096)
    target = path
    if attack == "downgrade":
        target = env.repo.add_firmware("0.9.0")
        env.repo.publish()
    if attack == "foreign":
        target = "firmware/gw-100/1.1.0/other.bin"
    bundle = _bundle(env, tmp_path, target)
    if attack == "tampered":
        blob = next((bundle / "targets").rglob("*.fw.bin"))
        blob.write_bytes(os.urandom(4096))
    if attack == "stale":
        env.repo.publish()
        assert env.agent().run_once().action == ACTION_REBOOTING  # the device saw newer metadata
        env.agent().run_once()
        env.repo.add_firmware("1.2.0")
        shutil.rmtree(bundle)
        bundle = _bundle(env, tmp_path, target)
        for name in ("timestamp.json",):
            (bundle / "metadata" / name).write_bytes((bundle / "metadata" / name).read_bytes())
        env.repo.publish()
        env.agent().run_once()
        env.server.reports.clear()
    before = env.boot_control()

    assert _install_bundle(env, bundle) == 3

    agent = env.agent()
    status = agent.status()
    assert status["agent"]["state"] == "failed"
    assert env.boot_control()["pending"] is None
    assert env.boot_control()["active"] == before["active"]
    queued = agent._outbox.read(agent._outbox.seqs()[-1])
    assert queued is not None
    assert queued["report"]["error_code"] == code


# -- tuf-client -------------------------------------------------------------------


def test_tuf_client_init_refresh_download(env: Env, tmp_path: Path) -> None:
    path, _ = _release(env, size=4096)
    root = tmp_path / "root.json"
    root.write_bytes(env.repo.root_bytes)
    md, out = tmp_path / "md", tmp_path / "out"
    common = ["tuf-client", "--metadata-dir", str(md)]
    url = ["--metadata-url", env.url + "/metadata"]
    gets_before = sum(env.server.gets.values())

    assert main([*common, "init", str(root)]) == 0
    assert sum(env.server.gets.values()) == gets_before
    assert (md / "root.json").read_bytes() == env.repo.root_bytes

    assert main([*common, *url, "refresh"]) == 0
    assert (md / "timestamp.json").read_bytes() == (
        env.repo.metadata_dir / "timestamp.json"
    ).read_bytes()
    snapshot_version = env.repo.snapshot.signed.version
    assert (md / "snapshot.json").read_bytes() == (
        env.repo.metadata_dir / f"{snapshot_version}.snapshot.json"
    ).read_bytes()

    download = [
        *common,
        *url,
        "--target-name",
        path,
        "--target-dir",
        str(out),
        "--target-base-url",
        env.url + "/targets",
        "download",
    ]
    assert main(download) == 0
    saved = out / path.replace("/", "%2F")
    assert saved.read_bytes() == env.repo.blobs[path].read_bytes()
    blob_gets = env.server.downloads_of(path)

    assert main(download) == 0  # already there and verified: not fetched again
    assert env.server.downloads_of(path) == blob_gets

    missing = [*download]
    missing[missing.index(path)] = "firmware/gw-100/9.9.9/fw.bin"
    assert main(missing) == 1
    assert main(["tuf-client", "refresh"]) == 1
    assert FACTORY  # the device itself is untouched by tuf-client
