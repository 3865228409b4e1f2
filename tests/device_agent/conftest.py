"""A real TUF repository on disk, served over loopback HTTP, with a report endpoint.

The repository is built with ``tuf.api.metadata`` only (no repo_server), with
the layout the agent's contract fixes: consistent snapshots, hash-prefixed
targets, ``targets`` delegating ``rollouts/*`` to ``rollouts`` and
``firmware/<hw>/*`` to ``firmware-<hw>`` (both terminating). The HTTP server
verifies each report's signature with ``tufota_core.verify_report`` and applies
the server's seq rule (409 for a seq at or below the last accepted).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner, Key
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from device_agent import Agent, AgentConfig, init_slots, render_agent_config
from tufota_core import (
    FirmwareInfo,
    InputError,
    Report,
    RolloutDoc,
    VerificationError,
    Wave,
    firmware_target_path,
    product_paths,
    product_role,
    rollout_target_path,
    verify_report,
)

HW = "gw-100"
DEVICE = "dev-001"
FACTORY = "1.0.0"


def _expiry() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)


class TufRepo:
    """A small, real TUF repository written to ``root_dir``."""

    def __init__(self, root_dir: Path) -> None:
        self.dir = root_dir
        self.metadata_dir = root_dir / "metadata"
        self.targets_dir = root_dir / "targets"
        self.metadata_dir.mkdir(parents=True)
        self.targets_dir.mkdir()
        self.firmware_role = product_role(HW)
        roles = ("root", "timestamp", "snapshot", "targets", "rollouts", self.firmware_role)
        self.signers = {role: CryptoSigner.generate_ed25519() for role in roles}
        self.root = Metadata(Root(expires=_expiry(), consistent_snapshot=True))
        for role in ("root", "timestamp", "snapshot", "targets"):
            self.root.signed.add_key(self.signers[role].public_key, role)
        delegations = Delegations(
            keys={
                self.signers[r].public_key.keyid: self.signers[r].public_key
                for r in ("rollouts", self.firmware_role)
            },
            roles={
                "rollouts": DelegatedRole(
                    "rollouts",
                    [self.signers["rollouts"].public_key.keyid],
                    1,
                    True,
                    ["rollouts/*"],
                ),
                self.firmware_role: DelegatedRole(
                    self.firmware_role,
                    [self.signers[self.firmware_role].public_key.keyid],
                    1,
                    True,
                    product_paths(HW),
                ),
            },
        )
        self.targets = Metadata(Targets(expires=_expiry(), delegations=delegations))
        self.delegated = {
            "rollouts": Metadata(Targets(expires=_expiry())),
            self.firmware_role: Metadata(Targets(expires=_expiry())),
        }
        self.snapshot = Metadata(Snapshot(expires=_expiry()))
        self.timestamp = Metadata(Timestamp(expires=_expiry()))
        self.root.sign(self.signers["root"])
        self._write(self.metadata_dir / "1.root.json", self.root.to_bytes())
        self.blobs: dict[str, Path] = {}
        self._first = True
        self.publish()

    @property
    def root_bytes(self) -> bytes:
        return (self.metadata_dir / "1.root.json").read_bytes()

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def _add_target(self, role: str, path: str, data: bytes, custom: Any = None) -> None:
        info = TargetFile.from_data(path, data, ["sha256"])
        if custom is not None:
            info.unrecognized_fields["custom"] = custom
        self.delegated[role].signed.targets[path] = info
        dirname, _, name = path.rpartition("/")
        blob = self.targets_dir / dirname / f"{info.hashes['sha256']}.{name}"
        self._write(blob, data)
        self.blobs[path] = blob

    def add_firmware(
        self, version: str, data: bytes | None = None, custom: dict[str, Any] | None = None
    ) -> str:
        """Sign firmware ``version`` (custom defaults to matching FirmwareInfo); return its path."""
        path = firmware_target_path(HW, version, "fw.bin")
        image = data if data is not None else f"firmware {version}\n".encode() * 500
        info = custom if custom is not None else FirmwareInfo(HW, version).to_custom()
        self._add_target(self.firmware_role, path, image, info)
        return path

    def set_rollout(
        self,
        version: str,
        *,
        waves: tuple[Wave, ...] = (Wave("all", 100.0),),
        current_wave: int = 0,
        state: str = "active",
        rollout_id: str = "r-1",
        maintenance_window: str | None = None,
        retry: int = 0,
    ) -> RolloutDoc:
        doc = RolloutDoc(
            rollout_id=rollout_id,
            hardware_id=HW,
            version=version,
            target_path=firmware_target_path(HW, version, "fw.bin"),
            waves=waves,
            current_wave=current_wave,
            state=state,
            maintenance_window=maintenance_window,
            retry=retry,
        )
        self._add_target("rollouts", rollout_target_path(HW), doc.to_bytes())
        return doc

    def tamper(self, target_path: str) -> None:
        """Flip bytes of a published blob, keeping its length."""
        blob = self.blobs[target_path]
        data = bytearray(blob.read_bytes())
        data[0] ^= 0xFF
        blob.write_bytes(bytes(data))

    def publish(self) -> None:
        """Sign and write new versions of targets, delegated roles, snapshot, timestamp."""
        snapshot = self.snapshot.signed
        for role, md in [*self.delegated.items(), ("targets", self.targets)]:
            if not self._first:
                md.signed.version += 1
            md.signed.expires = _expiry()
            md.sign(self.signers[role])
            self._write(self.metadata_dir / f"{md.signed.version}.{role}.json", md.to_bytes())
            snapshot.meta[f"{role}.json"] = MetaFile(md.signed.version)
        if not self._first:
            snapshot.version += 1
        self.snapshot.sign(self.signers["snapshot"])
        snapshot_file = self.metadata_dir / f"{snapshot.version}.snapshot.json"
        self._write(snapshot_file, self.snapshot.to_bytes())
        self.timestamp.signed.snapshot_meta = MetaFile(snapshot.version)
        if not self._first:
            self.timestamp.signed.version += 1
        self.timestamp.sign(self.signers["timestamp"])
        self._write(self.metadata_dir / "timestamp.json", self.timestamp.to_bytes())
        self._first = False


@dataclass
class ReportServer:
    """State shared with the HTTP handler."""

    repo_dir: Path
    device_keys: dict[str, Key] = field(default_factory=dict)
    reports: list[Report] = field(default_factory=list)
    last_seq: dict[str, int] = field(default_factory=dict)
    gets: Counter[str] = field(default_factory=Counter)
    bytes_sent: Counter[str] = field(default_factory=Counter)
    ranges: list[str] = field(default_factory=list)
    cuts: dict[str, int] = field(default_factory=dict)  # path suffix -> bytes before a cut
    force_status: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def states(self) -> list[str]:
        return [r.state for r in self.reports]

    def downloads_of(self, target_path: str) -> int:
        name = target_path.rpartition("/")[2]
        return sum(n for path, n in self.gets.items() if path.endswith("." + name))

    def handle_report(self, device_id: str, body: bytes) -> int:
        if self.force_status is not None:
            return self.force_status
        key = self.device_keys.get(device_id)
        if key is None:
            return 403
        try:
            report = verify_report(json.loads(body), key)
        except (ValueError, InputError):
            return 422
        except VerificationError:
            return 401
        with self.lock:
            if report.device_id != device_id:
                return 400
            if report.seq <= self.last_seq.get(device_id, 0):
                return 409
            self.last_seq[device_id] = report.seq
            self.reports.append(report)
        return 202


def _handler(state: ReportServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            state.gets[path] += 1
            parts = [p for p in path.split("/") if p]
            if not parts or parts[0] not in ("metadata", "targets") or ".." in parts:
                self._send(404)
                return
            file = state.repo_dir.joinpath(*parts)
            if not file.is_file():
                self._send(404)
                return
            data = file.read_bytes()
            etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
            start, status = 0, 200
            wanted = self.headers.get("Range")
            if wanted and self.headers.get("If-Range", etag) == etag:
                state.ranges.append(wanted)
                first = int(wanted.removeprefix("bytes=").split("-")[0])
                if first >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, status = first, 206
            body = data[start:]
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            suffix = next((k for k in state.cuts if path.endswith(k)), None)
            cut = state.cuts.pop(suffix) if suffix is not None else None
            if cut is not None and cut < len(body):
                body = body[:cut]
                self.close_connection = True
            self.wfile.write(body)
            state.bytes_sent[path] += len(body)

        def do_POST(self) -> None:
            parts = [p for p in self.path.split("/") if p]
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if len(parts) != 5 or parts[:3] != ["api", "v1", "devices"] or parts[4] != "reports":
                self._send(404)
                return
            status = state.handle_report(parts[3], body)
            self._send(status, json.dumps({"status": status}).encode())

    return Handler


@dataclass
class Env:
    """Everything one test needs: repository, server, device config."""

    repo: TufRepo
    server: ReportServer
    url: str
    device_dir: Path
    config: AgentConfig
    agents: list[Agent]

    def agent(self, config: AgentConfig | None = None) -> Agent:
        """A fresh agent (as after a process restart); closed at teardown."""
        agent = Agent(config or self.config)
        self.agents.append(agent)
        return agent

    def boot_control(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.config.slots_dir / "boot.json").read_text())
        return data

    def write_config(self, **overrides: Any) -> AgentConfig:
        """Rewrite ``agent.toml`` with ``overrides`` and load it."""
        values: dict[str, Any] = {
            "device_id": DEVICE,
            "hardware_id": HW,
            "server_url": self.url,
            "tags": ["canary"],
            "poll_interval": 1,
        }
        values.update(overrides)
        path = self.device_dir / "agent.toml"
        path.write_text(render_agent_config(**values))
        self.config = AgentConfig.load(path)
        return self.config


def failing_command(code: int = 1) -> str:
    """A command line that exits with ``code`` (stderr says so)."""
    script = f"import sys; sys.stderr.write('unhealthy\\n'); sys.exit({code})"
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    repo = TufRepo(tmp_path / "repo")
    server_state = ReportServer(repo.dir)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server_state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"

    device_dir = tmp_path / "device"
    device_dir.mkdir()
    signer = CryptoSigner.generate_ed25519()
    key_file = device_dir / "device.key"
    key_file.write_bytes(signer.private_bytes)
    os.chmod(key_file, 0o600)
    public = {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}
    (device_dir / "device.pub").write_text(json.dumps(public))
    server_state.device_keys[DEVICE] = signer.public_key
    (device_dir / "root.json").write_bytes(repo.root_bytes)
    init_slots(device_dir / "slots", FACTORY)

    environment = Env(repo, server_state, url, device_dir, None, [])  # type: ignore[arg-type]
    environment.write_config()
    try:
        yield environment
    finally:
        for agent in environment.agents:
            agent.close()
        httpd.shutdown()
        httpd.server_close()
        thread.join()
