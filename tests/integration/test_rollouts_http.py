"""Staged rollouts over real HTTP: a server on loopback, simulated devices running the real agent.

Each test runs the server (with its background controller ticking every 0.2 s)
and the simulated devices in this process, talking HTTP on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from securesystemslib.signer import CryptoSigner

from repo_server import Repository, ServerContext, ServerThread, create_app
from staging import AlertSettings, SinkSpec
from tests.conftest import ask
from tests.staging.helpers import WebhookReceiver
from tufota_cli.main import main as tufota
from tufota_cli.repo_cmds import build_context
from tufota_cli.simulate_cmd import SimOptions, Simulation

HW = "gw-100"


class Server:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.ctx: ServerContext = build_context(repo, ask, tick_interval=0.2)
        self.thread = ServerThread(create_app(self.ctx)).start()
        self.url = self.thread.url
        tokens = repo.token_store()
        self.operator = {"Authorization": f"Bearer {tokens.create('ops', 'operator')}"}
        self.viewer = {"Authorization": f"Bearer {tokens.create('dash', 'viewer')}"}

    def post(self, path: str, body: dict[str, Any] | None = None, **kw: Any) -> Any:
        headers = kw.pop("headers", self.operator)
        return requests.post(f"{self.url}{path}", json=body or {}, headers=headers, timeout=30)

    def get(self, path: str) -> Any:
        response = requests.get(f"{self.url}{path}", headers=self.viewer, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def start(self, **body: Any) -> dict[str, Any]:
        response = self.post("/api/v1/rollouts", {"hardware_id": HW, "version": "1.1.0", **body})
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.thread.stop()
        self.ctx.store.close()


@pytest.fixture
def server(released_repo: Repository) -> Iterator[Server]:
    s = Server(released_repo)
    yield s
    s.close()


@pytest.fixture
def receiver(server: Server) -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    server.ctx.store.set_alert_settings(
        AlertSettings(sinks=(SinkSpec("ops", "webhook", url=r.url, allow_private=True),))
    )
    yield r
    r.close()


def _sim(server: Server, tmp_path: Path, devices: int, **options: Any) -> Simulation:
    sim = Simulation(
        server.repo,
        server.url,
        tmp_path / "devices",
        SimOptions(
            hardware_id=HW,
            devices=devices,
            factory_version="1.0.0",
            poll_interval=30,
            reboot_seconds=6,
            speedup=60,
            workers=4,
            **options,
        ),
    )
    sim.provision()
    return sim


def _wait(predicate: Any, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_rollout_without_failures_walks_every_wave_to_completion(
    server: Server, tmp_path: Path
) -> None:
    sim = _sim(server, tmp_path, 12, canaries=3)
    try:
        started = server.start(
            waves="canary:tag=canary,half:50%,all:100%", success_threshold="100%"
        )
        result = sim.run(60, rollout_id=started["rollout_id"])
    finally:
        sim.close()
    assert result.rollout_state == "completed"
    assert result.versions == {"1.1.0": 12}
    rid = started["rollout_id"]
    history = server.get(f"/api/v1/rollouts/{rid}/history")["events"]
    assert [(e["kind"], e["wave"]) for e in history] == [
        ("started", 0),
        ("wave_advanced", 1),
        ("wave_advanced", 2),
        ("completed", 2),
    ]
    status = server.get(f"/api/v1/rollouts/{rid}")
    assert status["total"]["succeeded"] == 12
    assert status["published"] is True


def test_failures_above_the_threshold_pause_at_the_canary_wave_and_alert_the_webhook(
    server: Server, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    sim = _sim(
        server,
        tmp_path,
        10,
        canaries=3,
        fail_devices=frozenset({f"sim-{HW}-00001", f"sim-{HW}-00002"}),
    )
    try:
        started = server.start(waves="canary:tag=canary,all:100%", failure_threshold="20%")
        result = sim.run(60, rollout_id=started["rollout_id"])
    finally:
        sim.close()
    assert result.rollout_state == "paused"
    status = server.get(f"/api/v1/rollouts/{started['rollout_id']}")
    assert status["current_wave_name"] == "canary"
    assert status["waves"][1]["succeeded"] == 0  # the fleet never got the release
    assert result.versions["1.0.0"] >= 9
    _wait(lambda: "rollout_paused" in receiver.kinds())
    assert receiver.kinds() == ["rollout_paused"]
    body = receiver.bodies[0]["alert"]
    assert body["rollout_id"] == started["rollout_id"]  # type: ignore[index]
    assert "failed or rolled back" in body["summary"]  # type: ignore[index]
    alerts = server.get("/api/v1/alerts?state=open")["alerts"]
    assert [a["kind"] for a in alerts] == ["rollout_paused"]


def test_a_device_killed_mid_download_is_reported_stalled_exactly_once(
    server: Server, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    sim = _sim(server, tmp_path, 4, stall_percent=25)
    try:
        started = server.start(
            waves="all:100%", success_threshold="100%", stall_timeout="2s", poll_interval="1s"
        )
        result = sim.run(6, rollout_id=started["rollout_id"])
    finally:
        sim.close()
    assert result.stalled == 1
    dead = next(d.device_id for d in sim.devices if d.session.dead)
    _wait(lambda: "download_stalled" in receiver.kinds())
    import time

    time.sleep(2.0)  # ten more ticks: still one alert
    assert receiver.kinds() == ["download_stalled"]
    assert receiver.bodies[0]["alert"]["device_id"] == dead  # type: ignore[index]
    alerts = server.get(f"/api/v1/alerts?rollout={started['rollout_id']}")["alerts"]
    assert [(a["kind"], a["device_id"], a["state"]) for a in alerts] == [
        ("download_stalled", dead, "open")
    ]
    status = server.get(f"/api/v1/rollouts/{started['rollout_id']}")
    assert status["stalls"]["download_stalled"] == 1
    assert status["total"]["downloading"] == 1


def test_the_documented_recipe_start_then_simulate_waits_for_the_devices(
    server: Server, tmp_path: Path
) -> None:
    started = server.start(waves="canary:10%,all:100%", soak="0s")
    rid = started["rollout_id"]
    import time

    time.sleep(1.0)  # five controller ticks on an empty fleet
    status = server.get(f"/api/v1/rollouts/{rid}")
    assert status["state"] == "active"
    assert "waiting for devices to register" in status["gate"]
    sim = _sim(server, tmp_path, 6)
    try:
        result = sim.run(60, rollout_id=rid)
    finally:
        sim.close()
    assert result.rollout_state == "completed"
    assert result.versions == {"1.1.0": 6}


def test_stalled_devices_block_the_simulation_honestly_and_an_operator_completes(
    server: Server, tmp_path: Path
) -> None:
    sim = _sim(server, tmp_path, 30, stall_percent=10)
    try:
        started = server.start(waves="canary:10%,half:50%,all:100%")
        rid = started["rollout_id"]
        result = sim.run(60, rollout_id=rid)
    finally:
        sim.close()
    assert not result.timed_out  # it ends by itself, well before the 60 s
    assert result.blocked
    assert result.rollout_state == "active"
    assert "more success" in result.gate
    status = server.get(f"/api/v1/rollouts/{rid}")
    while status["current_wave"] < len(status["waves"]) - 1:
        assert server.post(f"/api/v1/rollouts/{rid}/advance", {"reason": "known dead"}).ok
        status = server.get(f"/api/v1/rollouts/{rid}")
    refused = server.post(f"/api/v1/rollouts/{rid}/complete")
    assert refused.status_code == 400
    assert "needs a reason" in refused.json()["message"]
    done = server.post(f"/api/v1/rollouts/{rid}/complete", {"reason": "3 units died in test"})
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "completed"
    assert done.json()["gate"] == "completed by hand: 3 units died in test"
    assert server.ctx.controller.doc_for(rid).state == "completed"


def test_pause_resume_advance_and_abort_behave_as_documented(server: Server) -> None:
    started = server.start(waves="canary:10%,all:100%", reason="nightly")
    rid = started["rollout_id"]
    forbidden = server.post(f"/api/v1/rollouts/{rid}/pause", headers=server.viewer)
    assert forbidden.status_code == 403
    anonymous = server.post(f"/api/v1/rollouts/{rid}/pause", headers={})
    assert anonymous.status_code == 401

    paused = server.post(f"/api/v1/rollouts/{rid}/pause", {"reason": "investigating"}).json()
    assert (paused["state"], paused["reason"], paused["published"]) == (
        "paused",
        "investigating",
        True,
    )
    assert server.post(f"/api/v1/rollouts/{rid}/advance").status_code == 409  # not active
    again = server.post(f"/api/v1/rollouts/{rid}/pause", {"reason": "twice"})
    assert again.status_code == 200  # idempotent: still paused, nothing recorded
    assert (again.json()["state"], again.json()["reason"]) == ("paused", "investigating")
    resumed = server.post(f"/api/v1/rollouts/{rid}/resume").json()
    assert (resumed["state"], resumed["current_wave"]) == ("active", 0)
    advanced = server.post(f"/api/v1/rollouts/{rid}/advance").json()
    assert (advanced["state"], advanced["current_wave"]) == ("active", 1)
    last = server.post(f"/api/v1/rollouts/{rid}/advance")
    assert last.status_code == 409
    assert "last wave" in last.json()["message"]
    aborted = server.post(f"/api/v1/rollouts/{rid}/abort", {"reason": "bad build"}).json()
    assert aborted["state"] == "aborted"
    assert server.post(f"/api/v1/rollouts/{rid}/resume").status_code == 409
    assert server.post(f"/api/v1/rollouts/{rid}/launch").status_code == 404
    history = server.get(f"/api/v1/rollouts/{rid}/history")["events"]
    assert [e["kind"] for e in history] == [
        "started",
        "paused",
        "resumed",
        "wave_advanced",
        "aborted",
    ]
    assert history[0]["reason"] == "nightly"
    # The signed document devices read says the same.
    doc = server.ctx.controller.doc_for(rid)
    assert (doc.state, doc.current_wave) == ("aborted", 1)
    # Aborted is final, so the hardware id may start a new rollout.
    assert server.start(waves="all:100%")["state"] == "active"


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        ({"hardware_id": "gw-999"}, 404, "no signed releases"),
        ({"version": "9.9.9"}, 404, "no release 9.9.9"),
        ({"hardware_id": "GW 100"}, 400, "hardware id"),
        ({"waves": "canary:10%,5%"}, 400, "cumulative"),
        ({"waves": ";;"}, 400, "wave spec is empty"),
        ({"success_threshold": "150%"}, 400, "outside 0-100%"),
        ({"failure_threshold": 0}, 400, "outside 0-100%"),
        ({"soak": "-5m"}, 400, "not like 90s"),
        ({"soak": 1e12}, 400, "longer than the limit of 365d"),
        ({"soak": "9999999d"}, 400, "longer than the limit of 365d"),
        ({"retry_failed": 11}, 400, "retry count 11 is outside 0-10"),
        ({"retry_backoff": "400d"}, 400, "longer than the limit of 365d"),
        ({"maintenance_window": "Sat 02:00-04:00 CET"}, 400, "must be UTC"),
        ({"preset": "critical"}, 400, "only for releases signed as critical"),
        ({"colour": "red"}, 400, "unknown fields"),
    ],
)
def test_bad_rollout_requests_are_refused_and_change_nothing(
    server: Server, body: dict[str, Any], status: int, match: str
) -> None:
    before = server.repo.state().roles["rollouts"].signed.version
    response = server.post(
        "/api/v1/rollouts", {"hardware_id": HW, "version": "1.1.0", "waves": "100%", **body}
    )
    assert response.status_code == status, response.text
    assert match in response.json()["message"]
    assert server.get("/api/v1/rollouts")["rollouts"] == []
    assert server.repo.state().roles["rollouts"].signed.version == before


def test_a_second_live_rollout_for_the_same_hardware_is_refused(server: Server) -> None:
    first = server.start(waves="all:100%")
    server.post(f"/api/v1/rollouts/{first['rollout_id']}/pause")
    second = server.post(
        "/api/v1/rollouts", {"hardware_id": HW, "version": "1.1.0", "waves": "50%"}
    )
    assert second.status_code == 409
    assert "already has paused rollout" in second.json()["message"]
    assert [r["rollout_id"] for r in server.get("/api/v1/rollouts")["rollouts"]] == [
        first["rollout_id"]
    ]


def test_the_cli_refuses_bad_rollout_input_with_one_line(
    released_repo: Repository, capsys: pytest.CaptureFixture[str], passphrase_env: str
) -> None:
    repo = str(released_repo.path)
    base = ["rollout", "start", "--repo", repo, "--hardware", HW]
    cases = [
        ([*base, "--version", "1.1.0", "--waves", "a:10%,b:5%"], "cumulative"),
        ([*base, "--version", "7.0.0", "--waves", "100%"], "no release 7.0.0"),
        ([*base, "--version", "1.1.0"], "give a wave spec"),
        (
            [*base, "--version", "1.1.0", "--waves", "100%", "--maintenance-window", "soon"],
            "not like",
        ),
    ]
    for argv, match in cases:
        assert tufota(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("tufota: error: ")
        assert match in err
        assert err.count("\n") == 1
    assert tufota([*base, "--version", "1.1.0", "--waves", "100%"]) == 0
    capsys.readouterr()
    assert tufota([*base, "--version", "1.1.0", "--waves", "100%"]) == 1
    assert "already has active rollout" in capsys.readouterr().err


def test_simulate_against_a_remote_repository_registers_devices_through_the_api(
    server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = server.operator["Authorization"].removeprefix("Bearer ")
    # One silent device keeps the gate closed until the remote devices report:
    # without it the rollout (no eligible devices yet) would complete at the first tick.
    silent = CryptoSigner.generate_ed25519().public_key
    server.ctx.store.register_device(
        "silent-1", HW, public_key={"keyid": silent.keyid, **silent.to_dict()},
        status="accepted", installed_version="1.0.0",
    )  # fmt: skip
    started = server.start(waves="all:100%", success_threshold="80%")
    argv = ["simulate", "--server", server.url, "--hardware", HW, "--devices", "4",
            "--prefix", "remote", "--speedup", "60", "--poll-interval", "30",
            "--timeout", "60"]  # fmt: skip

    # Without --repo the operator token is required, and a viewer's token is refused.
    monkeypatch.delenv("TUFOTA_TOKEN", raising=False)
    assert tufota(argv) == 1
    assert "operator token" in capsys.readouterr().err
    viewer = server.viewer["Authorization"].removeprefix("Bearer ")
    assert tufota([*argv, "--token", viewer]) == 1
    assert "403" in capsys.readouterr().err
    assert not [d for d in server.ctx.store.list_devices(HW) if d.device_id.startswith("remote")]

    assert tufota([*argv, "--token", token]) == 0
    out = capsys.readouterr().out
    assert f"rollout {started['rollout_id']} completed" in out
    remote = [d for d in server.ctx.store.list_devices(HW) if d.device_id.startswith("remote")]
    assert len(remote) == 4
    assert {(d.status, d.installed_version) for d in remote} == {("accepted", "1.1.0")}
