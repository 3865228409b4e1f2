"""``tufota demo``: the whole story on the embedded default, in one command.

A throw-away workspace gets a repository with three signed releases, a server
on loopback with its background controller, an alert webhook receiver on
loopback, and N simulated devices running the real agent code over real HTTP
(``tufota_cli.simulate_cmd.Simulation``). The story:

1. Release 1.1.0 (fixes a CVSS 8.1 CVE) starts in two waves. Two of the
   canaries fail to install it (injected fault): the failure gate pauses the
   rollout at the canary wave, and the alert reaches the webhook.
2. The operator aborts it and rolls out 1.1.1 (critical, CVSS 9.8) with the
   ``critical`` preset; every device ends on 1.1.1, the rollout completes and
   the patch status shows no exposure left.

The workspace follows the key custody layout (docs/decisions/0008):
``repo/`` is the server's (online keys only) and ``repo-signing/`` holds the
root, targets and gw-100 keys. Every key has its own random passphrase; the
server is given only the online keys' passphrases.

The exit status is 0 only when every device ended on 1.1.1 and the first
rollout paused as it should.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from repo_server import (
    Repository,
    ServerContext,
    ServerThread,
    add_release_locally,
    create_app,
    release_catalog,
)
from signing import KeyPassphrases, passphrase_env_name, product_key_name
from staging import AlertSettings, SinkSpec, build_plan
from tufota_cli._common import table
from tufota_cli.repo_cmds import build_context
from tufota_cli.rollout_cmds import find_release, render_fleet, render_status
from tufota_cli.simulate_cmd import SimOptions, Simulation
from tufota_core import FirmwareInfo

logger = logging.getLogger(__name__)

HARDWARE = "gw-100"
OLD, BAD, GOOD = "1.0.0", "1.1.0", "1.1.1"
WAVES = "canary:tag=canary,fleet:100%"


class WebhookReceiver:
    """A loopback HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


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
    if not 2 <= args.canaries <= args.devices:
        raise SystemExit("tufota: error: --canaries must be between 2 and --devices")
    if args.workspace:
        workspace = Path(args.workspace)
        workspace.mkdir(parents=True, exist_ok=True)
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
        for name in ("device_agent", "staging", "repo_server", "tufota_cli.simulate_cmd"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("staging.alerts").setLevel(logging.ERROR)
    # A passphrase per key; the server gets only the online keys' ones.
    offline = {
        passphrase_env_name(Path(f"{name}.key")): secrets.token_urlsafe(16)
        for name in ("root", "targets", product_key_name(HARDWARE))
    }
    online = {
        passphrase_env_name(Path(f"{name}.key")): secrets.token_urlsafe(16)
        for name in ("online", "rollouts")
    }
    release_engineer = KeyPassphrases(env={**offline, **online})
    server_side = KeyPassphrases(env=online)

    _step(
        f"creating repository in {workspace / 'repo'} (server: online keys only) and "
        f"{workspace / 'repo-signing'} (root, targets, product-line keys)"
    )
    repo = Repository.create(workspace / "repo", release_engineer)
    firmware = workspace / "firmware"
    firmware.mkdir()
    releases: list[tuple[str, dict[str, Any]]] = [
        (OLD, {}),
        (BAD, {"severity": "high", "cvss": 8.1, "fixes": ("CVE-2026-1234",)}),
        (GOOD, {"severity": "critical", "cvss": 9.8, "fixes": ("CVE-2026-1234", "CVE-2026-2001")}),
    ]
    for version, extra in releases:
        image = firmware / f"gw-100-{version}.img"
        image.write_bytes(f"tufota demo image {version}\n".encode() * 4096)
        info = FirmwareInfo(hardware_id=HARDWARE, version=version, **extra)
        result = add_release_locally(repo, image, info, release_engineer)
        _step(f"signed and published {result.target_path} ({result.length} bytes)")

    receiver = WebhookReceiver()
    ctx = build_context(repo, server_side, tick_interval=0.3)
    ctx.store.set_alert_settings(
        AlertSettings(
            sinks=(SinkSpec("ops-webhook", "webhook", url=receiver.url, allow_private=True),)
        )
    )
    server = ServerThread(create_app(ctx), port=args.port).start()
    _step(f"serving on {server.url}; alerts go to the log and to webhook {receiver.url}")
    sim = Simulation(
        repo,
        server.url,
        workspace / "devices",
        SimOptions(
            hardware_id=HARDWARE,
            devices=args.devices,
            prefix="dev",
            factory_version=OLD,
            canaries=args.canaries,
            fail_devices=frozenset({"dev-00001", "dev-00002"}),
            fail_versions=frozenset({BAD}),
            poll_interval=30,
            reboot_seconds=10,
            speedup=60,
            workers=4,
        ),
    )
    try:
        sim.provision()
        _step(
            f"provisioned {args.devices} simulated devices on {OLD} "
            f"({args.canaries} canaries; dev-00001 and dev-00002 cannot install {BAD})"
        )
        deadline = started + args.timeout

        # Act 1: a release whose canaries fail.
        waves, options = build_plan(waves=WAVES, success_threshold="100%", failure_threshold="20%")
        doc = ctx.controller.start(
            HARDWARE,
            BAD,
            find_release(repo, HARDWARE, BAD).target_path,
            waves,
            options,
            reason="demo act 1",
        )
        _step(f"started rollout {doc.rollout_id}: {BAD} in waves canary (tag) then fleet (100%)")
        first = _play(sim, doc.rollout_id, deadline)
        print()
        print(render_status(ctx.controller.status(doc.rollout_id)))
        print()
        _wait_for_alert(ctx, receiver, "rollout_paused", deadline)
        for body in receiver.received:
            alert = body["alert"]
            print(f"    webhook received: {body['event']} [{alert['kind']}] {alert['summary']}")
        paused = first == "paused"

        # Act 2: the operator aborts and ships the fix with the critical preset.
        ctx.controller.abort(doc.rollout_id, "canaries failed to install 1.1.0; fixed in 1.1.1")
        _step(f"aborted {doc.rollout_id}; {GOOD} is signed as critical (CVSS 9.8)")
        good = find_release(repo, HARDWARE, GOOD)
        waves, options = build_plan(
            preset="critical",
            waves=WAVES,
            release=good.info,
            soak_seconds=1,
            min_devices=1,
        )
        doc = ctx.controller.start(HARDWARE, GOOD, good.target_path, waves, options, reason="act 2")
        _step(
            f"started rollout {doc.rollout_id}: {GOOD} with preset critical "
            f"(success {options.success_threshold:.0%}, failure {options.failure_threshold:.0%})"
        )
        second = _play(sim, doc.rollout_id, deadline)
        return _summary(ctx, repo, sim, doc.rollout_id, started, paused, second, args, server)
    finally:
        sim.close()
        receiver.stop()
        if not args.serve:
            server.stop()
            ctx.store.close()


def _play(sim: Simulation, rollout_id: str, deadline: float) -> str | None:
    seen: list[str] = []

    def show(status: dict[str, Any] | None) -> None:
        if status is None:
            return
        total = status["total"]
        line = (
            f"    wave {status['current_wave'] + 1}/{len(status['waves'])} "
            f"'{status['current_wave_name']}' {status['state']}: "
            f"{total['succeeded']}/{total['eligible']} on {status['version']}, "
            f"{total['failed'] + total['rolled_back']} failed"
        )
        if not seen or seen[-1] != line:
            seen.append(line)
            print(line, flush=True)

    result = sim.run(max(1.0, deadline - time.monotonic()), rollout_id=rollout_id, on_round=show)
    return result.rollout_state


def _wait_for_alert(
    ctx: ServerContext, receiver: WebhookReceiver, kind: str, deadline: float
) -> None:
    while time.monotonic() < deadline:
        if any(b["alert"]["kind"] == kind for b in receiver.received):
            return
        time.sleep(0.1)


def _summary(
    ctx: ServerContext,
    repo: Repository,
    sim: Simulation,
    rollout_id: str,
    started: float,
    paused: bool,
    state: str | None,
    args: argparse.Namespace,
    server: ServerThread,
) -> int:
    # One more cycle each, so every device has reported its final state.
    for device in sim.devices:
        device.agent.run_once()
    status = ctx.controller.status(rollout_id)
    fleet = ctx.controller.fleet_status(HARDWARE, catalog=release_catalog(repo.state()))
    print()
    print(render_status(status))
    print()
    print(render_fleet(fleet))
    print()
    alerts = ctx.store.list_alerts(limit=20)
    print(
        table(
            ["alert", "state", "kind", "summary"],
            [
                [a.alert_id, "open" if a.open else "resolved", a.kind, a.summary[:90]]
                for a in alerts
            ],
        )
    )
    print()
    on_new = fleet.by_version.get(GOOD, 0)
    total = len(sim.devices)
    ok = paused and on_new == total and status.state == "completed"
    print(
        f"first rollout {'paused at the canary wave' if paused else 'did NOT pause'}; "
        f"{on_new}/{total} devices on {GOOD}; rollout {state}; "
        f"{time.monotonic() - started:.1f}s"
    )
    if args.serve:
        with repo.token_store() as tokens:
            token = tokens.create("demo-operator", "operator")
        print(f"dashboard: {server.url}/dashboard  (Ctrl-C to stop)")
        print(f"operator token (the dashboard's 'Sign in'): {token}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            server.stop()
    return 0 if ok else 1
