"""``tufota demo``: the whole story on the embedded default, in one command.

A throw-away workspace gets a repository, two signed releases, a server on
loopback, N provisioned devices running the real agent code over real HTTP,
a two-wave rollout driven by the real controller, and a summary at the end.
The exit status is 0 only when every device ended on the new version.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from device_agent import Agent, AgentConfig
from repo_server import Repository, ServerThread, add_release_locally, create_app
from staging import RolloutOptions
from tufota_cli._common import table
from tufota_cli.device_cmds import provision_device
from tufota_cli.repo_cmds import build_context
from tufota_cli.rollout_cmds import find_release, render_status
from tufota_core import FirmwareInfo, parse_wave_spec

logger = logging.getLogger(__name__)

HARDWARE = "gw-100"
OLD, NEW = "1.0.0", "1.1.0"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run the whole signed-update story on a throw-away workspace")
    p.add_argument("--devices", type=int, default=20, help="simulated devices (default 20)")
    p.add_argument("--canaries", type=int, default=3, help="devices in the canary wave")
    p.add_argument("--workspace", default=None, help="directory to use (default: a temporary one)")
    p.add_argument("--serve", action="store_true", help="keep the server running at the end")
    p.add_argument("--port", type=int, default=0, help="server port (default: any free port)")
    p.add_argument("--timeout", type=float, default=110.0, help="give up after this many seconds")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if not 1 <= args.devices <= 500:
        raise SystemExit("tufota: error: --devices must be between 1 and 500")
    if not 0 <= args.canaries <= args.devices:
        raise SystemExit("tufota: error: --canaries must be between 0 and --devices")
    if args.workspace:
        workspace = Path(args.workspace)
        keep = True
    else:
        workspace = Path(tempfile.mkdtemp(prefix="tufota-demo-"))
        keep = args.serve
    try:
        return _run(args, workspace)
    finally:
        if not keep:
            shutil.rmtree(workspace, ignore_errors=True)


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _run(args: argparse.Namespace, workspace: Path) -> int:
    started = time.monotonic()
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Twenty agents narrating each step drown the story; -v brings them back.
        logging.getLogger("device_agent").setLevel(logging.WARNING)
    passphrase = secrets.token_urlsafe(16)

    def ask() -> str:
        return passphrase

    _step(f"creating repository in {workspace / 'repo'}")
    repo = Repository.create(workspace / "repo", passphrase)
    firmware = workspace / "firmware"
    firmware.mkdir()
    for version, extra in (
        (OLD, {}),
        (NEW, {"severity": "high", "cvss": 8.1, "fixes": ("CVE-2026-1234",)}),
    ):
        image = firmware / f"gw-100-{version}.img"
        image.write_bytes(f"tufota demo image {version}\n".encode() * 4096)
        info = FirmwareInfo(hardware_id=HARDWARE, version=version, **extra)  # type: ignore[arg-type]
        result = add_release_locally(repo, image, info, ask)
        _step(f"signed and published {result.target_path} ({result.length} bytes)")

    ctx = build_context(repo, ask, tick_interval=1.0)
    server = ServerThread(create_app(ctx, background=args.serve), port=args.port).start()
    _step(f"serving on {server.url}")
    try:
        configs = []
        for n in range(args.devices):
            device_id = f"dev-{n + 1:03d}"
            tags = ["canary"] if n < args.canaries else []
            path = provision_device(
                repo,
                device_id,
                HARDWARE,
                workspace / "devices" / device_id,
                tags,
                server_url=server.url,
                factory_version=OLD,
                poll_interval=5,
            )
            configs.append(path)
        _step(f"provisioned {len(configs)} devices ({args.canaries} canaries) on {OLD}")

        waves = parse_wave_spec("canary:tag=canary,fleet:100%")
        doc = ctx.controller.start(
            HARDWARE,
            NEW,
            find_release(repo, HARDWARE, NEW),
            waves,
            RolloutOptions(success_threshold=1.0, failure_threshold=0.2),
        )
        _step(f"started rollout {doc.rollout_id}: waves canary (tag) then fleet (100%)")

        agents = [Agent(AgentConfig.load(c)) for c in configs]
        deadline = started + args.timeout
        rounds = 0
        with ThreadPoolExecutor(max_workers=8) as pool:
            while time.monotonic() < deadline:
                rounds += 1
                list(pool.map(lambda a: a.run_once(), agents))
                ctx.controller.tick()
                record = ctx.store.get_rollout(doc.rollout_id)
                status = ctx.controller.status(doc.rollout_id).to_json()
                done = sum(w["succeeded"] for w in status["waves"])
                print(
                    f"    round {rounds}: wave {record.current_wave + 1}/{len(waves)} "
                    f"{record.state}, {done}/{len(agents)} devices on {NEW}",
                    flush=True,
                )
                if record.state in ("completed", "paused", "aborted"):
                    break
        # One more cycle so every agent reports its final state.
        for agent in agents:
            agent.run_once()
        return _summary(ctx, doc.rollout_id, len(agents), started, args.serve, server)
    finally:
        if not args.serve:
            server.stop()


def _summary(
    ctx: object, rollout_id: str, total: int, started: float, serve: bool, server: ServerThread
) -> int:
    from repo_server import ServerContext

    assert isinstance(ctx, ServerContext)
    status = ctx.controller.status(rollout_id)
    devices = ctx.store.list_devices(HARDWARE)
    by_state: dict[str, int] = {}
    by_version: dict[str, int] = {}
    for device in devices:
        by_state[device.state or "unknown"] = by_state.get(device.state or "unknown", 0) + 1
        by_version[device.installed_version or "none"] = (
            by_version.get(device.installed_version or "none", 0) + 1
        )
    print()
    print(render_status(status))
    print()
    print(table(["device state", "devices"], sorted(by_state.items())))
    print()
    print(table(["version", "devices"], sorted(by_version.items())))
    print()
    on_new = by_version.get(NEW, 0)
    ok = on_new == total and status.state == "completed"
    print(
        f"{on_new}/{total} devices on {NEW}; rollout {status.state}; "
        f"{time.monotonic() - started:.1f}s"
    )
    if serve:
        print(f"server running at {server.url}  (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            server.stop()
    return 0 if ok else 1
