"""``tufota rollout status --watch``: redraws until the rollout ends; ``--json`` for scripts."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dashboard.conftest import HW, Plant
from tufota_cli._watch import render, watch
from tufota_cli.main import main

BIN = Path(sys.executable).parent


def _fleet(plant: Plant) -> str:
    for i in range(4):
        plant.add_device(f"dev-{i}", tags=("canary",) if i == 0 else ())
    return plant.start(waves="canary:tag=canary,100%")


def test_watch_redraws_until_the_rollout_completes(plant: Plant) -> None:
    rollout_id = _fleet(plant)
    out = io.StringIO()
    sleeps: list[float] = []

    def fetch() -> list[dict[str, object]]:
        return [plant.ctx.controller.status(rollout_id).to_json()]

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:  # nothing changed since the first frame until now
            for device_id in plant.signers:
                plant.report(
                    device_id,
                    "succeeded",
                    installed_version="1.2.0",
                    target_version="1.2.0",
                    rollout_id=rollout_id,
                )
            plant.ctx.controller.tick()
            plant.ctx.controller.tick()

    code = watch(fetch, interval=0.5, out=out, sleep=sleep, now=lambda: "=frame=")
    assert code == 0
    assert sleeps == [0.5, 0.5]
    frames = [f for f in out.getvalue().split("=frame=\n") if f.strip()]
    # Not a terminal: a frame only when something changed (3 fetches, 2 frames).
    assert len(frames) == 2
    assert "ACTIVE" in frames[0]
    assert "COMPLETED" in frames[-1]
    assert f"{rollout_id}  {HW} -> 1.2.0" in frames[-1]
    total = next(line for line in frames[-1].splitlines() if line.lstrip().startswith("total"))
    assert total.split()[1:8] == ["4", "4", "0", "0", "4", "0", "0"]
    assert "100.0%" in total


def test_watch_json_prints_the_status_data_and_exits_4_when_aborted(plant: Plant) -> None:
    rollout_id = _fleet(plant)
    command = [
        str(BIN / "tufota"),
        "rollout",
        "status",
        rollout_id,
        "--repo",
        str(plant.repo.path),
        "--watch",
        "--json",
        "--interval",
        "0.2",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        assert p.stdout is not None
        first = json.loads(p.stdout.readline())
        assert first["rollouts"][0]["state"] == "active"
        assert first == {"rollouts": [plant.ctx.controller.status(rollout_id).to_json()]}
        plant.ctx.controller.abort(rollout_id, "bad batch")  # another operator, elsewhere
        rest, errors = p.communicate(timeout=60)
    assert p.returncode == 4, errors  # not 2, argparse's code for bad usage
    last = json.loads(rest.strip().splitlines()[-1])
    assert last["rollouts"][0]["state"] == "aborted"
    assert last["rollouts"][0]["reason"] == "bad batch"


def test_watch_of_an_unknown_rollout_fails_with_one_line(
    plant: Plant, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["rollout", "status", "nope", "--repo", str(plant.repo.path), "--watch", "--interval", "1"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "nope" in err


def test_bad_interval_is_refused() -> None:
    assert main(["rollout", "status", "--repo", "/nonexistent", "--watch", "--interval", "0"]) == 1


def test_render_marks_the_open_wave_and_falls_back_to_ascii() -> None:
    wave = {"eligible": 10, "checked_in": 5, "succeeded": 5}
    rollout = {
        "rollout_id": "r1",
        "hardware_id": HW,
        "version": "2.0.0",
        "state": "paused",
        "current_wave": 1,
        "current_wave_name": "b",
        "waves": [{"name": "a", **wave}, {"name": "b", "eligible": 10}],
        "total": {"eligible": 20, "succeeded": 5},
        "gate": "paused: operator",
        "stalls": {"silent": 2, "never_checked_in": 0},
    }
    text = render([rollout], unicode=False)
    lines = text.splitlines()
    assert lines[0] == f"r1  {HW} -> 2.0.0  PAUSED  wave 2/2 'b'"
    assert lines[3].startswith("* b")
    assert "#" * 10 + "-" * 10 + "  50.0%" in lines[2]
    assert "  stalled: silent 2" in lines
    assert lines[-1] == "  gate: paused: operator"
    assert render([]) == "no rollouts"
