"""A delta through the real commands: ``release add --delta-from``, a server process, the agent.

The release engineer publishes 1.1.0 with a delta from 1.0.0 on the command
line, a ``tufota serve`` process serves it over HTTP, and a ``tufota-agent``
process that runs 1.0.0 rebuilds 1.1.0 from the delta: it fetches fewer
bytes than the image, and the tracker hears that a delta was used.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.delta.test_deflate_tokens import _changelog
from tests.delta.test_delta import _binary, _shift, _tar
from tests.integration.test_end_to_end import (
    BIN,
    _agent_status,
    _env,
    _free_port,
    agent,
    tufota,
    wait_until_healthy,
)

HW = "gw-100"


def _images(tmp: Path) -> tuple[Path, Path]:
    """Two releases of a tar image: recompiled code and a changelog.gz with a new entry."""
    lib, mod = _binary(31, 300_000), _binary(32, 100_000)
    old_log, new_log = _changelog(33, 60), _changelog(33, 61)
    for version in ("1.0.0", "1.1.0"):
        (tmp / version).mkdir()
    old = _tar(
        tmp / "1.0.0" / "fw.tar",
        {
            "lib/a.so": lib,
            "lib/m.ko": mod,
            "doc/changelog.gz": gzip.compress(old_log, compresslevel=9, mtime=0),
        },
    )
    new = _tar(
        tmp / "1.1.0" / "fw.tar",
        {
            "lib/a.so": _shift(lib, 34),
            "lib/m.ko": mod,
            "doc/changelog.gz": gzip.compress(new_log, compresslevel=9, mtime=0),
        },
    )
    return old, new


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    repo = tmp_path / "repo"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    tufota("init", str(repo), "--server-url", url)
    process = subprocess.Popen(
        [str(BIN / "tufota"), "serve", "--repo", str(repo), "--port", str(port)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_healthy(process, url)
        yield repo, url
    finally:
        process.terminate()
        process.communicate(timeout=20)


def _update(repo: Path, config: Path, version: str) -> list[str]:
    """Roll ``version`` out to the canary and run its agent twice (install, then boot)."""
    tufota("rollout", "start", "--repo", str(repo), "--hardware", HW, "--version", version,
           "--waves", "canary:tag=canary,100%")  # fmt: skip
    logs = []
    for _ in range(2):
        run = agent(config)
        assert run.returncode == 0, run.stdout + run.stderr
        logs.append(run.stdout + run.stderr)
    assert _agent_status(config)["installed_version"] == version
    return logs


def _published_delta(repo: Path) -> tuple[str, dict[str, object]]:
    role = max(
        (repo / "public" / "metadata").glob(f"*.firmware-{HW}.json"),
        key=lambda p: int(p.name.split(".", 1)[0]),
    )
    targets = json.loads(role.read_text())["signed"]["targets"]
    [(path, target)] = [(p, t) for p, t in targets.items() if p.endswith(".tfdelta")]
    return path, target


def test_a_delta_published_on_the_command_line_is_applied_by_the_agent(
    server: tuple[Path, str], tmp_path: Path
) -> None:
    repo, _url = server
    old, new = _images(tmp_path)
    release = ["release", "add", "--repo", str(repo), "--hardware", HW]
    tufota(*release, str(old), "--version", "1.0.0")
    device = tmp_path / "dev-001"
    tufota("device", "provision", "dev-001", "--repo", str(repo), "--hardware", HW,
           "--out", str(device), "--tags", "canary")  # fmt: skip
    config = device / "agent.toml"
    _update(repo, config, "1.0.0")  # a full download: the device had no release before

    out = tufota(*release, str(new), "--version", "1.1.0", "--delta-from", "1.0.0")
    path, target = _published_delta(repo)
    assert path == f"firmware/{HW}/1.1.0/fw.tar.from-1.0.0.tfdelta"
    assert f"delta from 1.0.0: {path}" in out
    custom = target["custom"]
    assert isinstance(custom, dict)
    # The changelog.gz travelled as a token diff, so the CLI made a /2 delta.
    assert custom["delta_format"] == "tufota-delta/2"
    delta_length = target["length"]
    assert isinstance(delta_length, int)
    image_length = new.stat().st_size
    assert delta_length < image_length // 4

    installed, _booted = _update(repo, config, "1.1.0")

    assert f"from a {delta_length}-byte delta" in installed
    assert f"{delta_length} bytes fetched" in installed
    slots = json.loads((device / "slots" / "boot.json").read_text())
    assert (device / "slots" / slots["active"] / "image.bin").read_bytes() == new.read_bytes()
    # The tracker heard it: fetched is the delta, saved the rest of the image.
    status = json.loads(tufota("rollout", "status", "--repo", str(repo), "--json"))
    [rollout] = [r for r in status["rollouts"] if r["version"] == "1.1.0"]
    assert (rollout["delta_downloads"], rollout["bytes_fetched"], rollout["bytes_saved"]) == (
        1,
        delta_length,
        image_length - delta_length,
    )
