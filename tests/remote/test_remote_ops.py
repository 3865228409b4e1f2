"""Every operator command against a real server on loopback, from a directory with no repository.

The server is the real app on 127.0.0.1 port 0 with a real tracker, real
signed releases and real tokens. Local mode (``--repo``) and remote mode
(``--server``/``--token``) must print the same ``--json``; a token whose role
may not do something exits 3 and changes nothing (tracker, tokens and the
published tree compared byte for byte before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner

from repo_server import ServerContext, ServerThread, create_app
from staging import RolloutController, SqliteTrackerStore
from tests.conftest import ask
from tests.dashboard.conftest import HW, Plant, make_repo
from tufota_cli.main import main


@pytest.fixture
def plant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plant]:
    """Releases 1.0.0-1.2.0 of gw-100, two devices with reports, a rollout; cwd is empty."""
    repo = make_repo(tmp_path)
    publisher = repo.publisher(ask)
    store = SqliteTrackerStore(repo.tracker_path)
    ctx = ServerContext(
        publisher,
        store,
        RolloutController(store, publisher),
        tokens=repo.token_store(),
        storage_url=repo.storage_url,
    )
    p = Plant(repo, ctx, ServerThread(create_app(ctx, background=False)).start())
    p.add_device("dev-1", tags=("canary",))
    p.add_device("dev-2")
    rid = p.start()
    p.report("dev-1", "downloading", target_version="1.2.0", rollout_id=rid)
    empty = tmp_path / "laptop"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("TUFOTA_SERVER", "TUFOTA_TOKEN", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield p
    finally:
        p.thread.stop()
        store.close()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _rollout_id(p: Plant) -> str:
    return p.ctx.store.list_rollouts()[0].rollout_id


READS = (
    ("rollout", "status"),
    ("rollout", "status", "{rid}"),
    ("rollout", "history", "{rid}"),
    ("fleet", "status"),
    ("device", "list"),
    ("device", "show", "dev-1"),
    ("alert", "list"),
    ("token", "list"),
    ("release", "list"),
    ("release", "show", HW, "1.2.0"),
    ("repo", "status"),
)


def _without_clock(data: Any) -> Any:
    # Seconds left until expiry tick between the two calls; everything else must agree.
    if isinstance(data, dict):
        return {k: _without_clock(v) for k, v in data.items() if k != "seconds_left"}
    if isinstance(data, list):
        return [_without_clock(v) for v in data]
    return data


@pytest.mark.parametrize("command", READS, ids=lambda c: " ".join(c))
def test_local_and_remote_json_agree(
    plant: Plant, capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    argv = [w.format(rid=_rollout_id(plant)) for w in command]
    plant.auth("viewer")
    # Token management is an operator's; every other read a viewer's.
    role = "operator" if command[0] == "token" else "viewer"
    token = plant.auth(role)["Authorization"].split()[1]
    code, local, err = _run(capsys, *argv, "--repo", str(plant.repo.path), "--json")
    assert code == 0, err
    code, remote, err = _run(capsys, *argv, "--server", plant.url, "--token", token, "--json")
    assert code == 0, err
    assert _without_clock(json.loads(remote)) == _without_clock(json.loads(local))
    assert json.loads(remote), "an empty answer would agree trivially"
    # The human output is made from the same data, so it is the same text too.
    code, text, err = _run(capsys, *argv, "--server", plant.url, "--token", token)
    assert code == 0, err
    assert text.strip()
    if command != ("repo", "status"):  # its 'left' column moves with the clock
        assert text == _run(capsys, *argv, "--repo", str(plant.repo.path))[1]


def _state(p: Plant) -> dict[str, str]:
    """What a refused command must not change: tracker rows (tokens too), the published tree."""
    with sqlite3.connect(p.repo.tracker_path) as db:
        dump = "\n".join(db.iterdump())
    tree = {
        str(f.relative_to(p.repo.path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted((p.repo.path / "public").rglob("*"))
        if f.is_file()
    }
    return {
        "tracker": hashlib.sha256(dump.encode()).hexdigest(),
        "tree": json.dumps(tree, sort_keys=True),
    }


def _writes(p: Plant, pubkey: Path) -> list[list[str]]:
    rid = _rollout_id(p)
    return [
        ["rollout", "pause", rid],
        ["rollout", "resume", rid],
        ["rollout", "advance", rid],
        ["rollout", "complete", rid, "--reason", "enough"],
        ["rollout", "abort", rid],
        ["rollout", "start", "--hardware", HW, "--version", "1.1.0", "--waves", "100%"],
        ["device", "register", "dev-new", "--hardware", HW, "--pubkey", str(pubkey)],
        ["device", "accept", "dev-1"],
        ["device", "revoke", "dev-2"],
        ["device", "tags", "dev-2", "--add", "pilot", "--reason", "second wave"],
        ["alert", "resolve", "1"],
        ["alert", "sink", "add", "hook", "--webhook", "https://alerts.example.com/hook"],
        ["alert", "sink", "remove", "hook"],
        ["alert", "settings", "--min-cvss", "8"],
        ["alert", "test"],
        ["token", "create", "--name", "laptop", "--role", "viewer"],
        ["token", "revoke", "deadbeef"],
    ]


def _pubkey(tmp: Path) -> Path:
    signer = CryptoSigner.generate_ed25519()
    path = tmp / "device.pub"
    path.write_text(json.dumps({"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}))
    return path


@pytest.mark.parametrize("role", ["viewer", "uploader"])
def test_a_role_that_may_not_write_exits_3_and_changes_nothing(
    plant: Plant, capsys: pytest.CaptureFixture[str], tmp_path: Path, role: str
) -> None:
    token = plant.token(role)
    pubkey = _pubkey(tmp_path)
    before = _state(plant)
    for argv in _writes(plant, pubkey):
        code, out, err = _run(capsys, *argv, "--server", plant.url, "--token", token)
        assert code == 3, (argv, out, err)
        assert err.count("\n") == 1
        assert "needs an operator token" in err
        assert "HTTP 403" in err
        assert _state(plant) == before, argv


def test_an_uploader_token_may_not_read(plant: Plant, capsys: pytest.CaptureFixture[str]) -> None:
    token = plant.token("uploader")
    for command in READS:
        argv = [w.format(rid=_rollout_id(plant)) for w in command]
        code, _, err = _run(capsys, *argv, "--server", plant.url, "--token", token)
        assert code == 3, (argv, err)
        assert "refused by authorisation" in err


def test_an_operator_token_does_every_write(
    plant: Plant, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    token = plant.token("operator")
    server = ["--server", plant.url, "--token", token]
    rid = _rollout_id(plant)
    plant.ctx.controller.tick()  # opens alerts, if any, as the server would
    outputs = {}
    for argv in _writes(plant, _pubkey(tmp_path)):
        if argv[:2] == ["alert", "resolve"]:
            continue  # needs an open alert: below
        if argv[:2] == ["token", "revoke"]:
            continue  # needs the created token's id: below
        if argv[:2] == ["rollout", "abort"]:
            continue  # the rollout is completed by then
        code, out, err = _run(capsys, *argv, *server)
        assert code == 0, (argv, err)
        outputs[" ".join(argv[:2])] = out
    assert plant.store.get_rollout(rid).state == "completed"
    assert "paused" in outputs["rollout pause"]
    assert "active" in outputs["rollout resume"]
    assert plant.store.get_device("dev-new").status == "pending"
    assert plant.store.get_device("dev-2").status == "revoked"
    assert plant.store.get_device("dev-2").tags == ("pilot",)
    history = plant.store.device_history("dev-2")
    assert any(e.kind == "tags" and e.reason == "second wave" for e in history)
    assert plant.store.get_alert_settings().patch_min_cvss == 8.0
    assert plant.store.get_alert_settings().sinks == ()
    started = plant.store.active_rollout(HW)
    assert started is not None
    assert started.version == "1.1.0"
    # The new viewer token works, and an operator can revoke it.
    created = outputs["token create"].strip()
    assert _run(capsys, "rollout", "status", "--server", plant.url, "--token", created)[0] == 0
    token_id = created.split("_")[1]
    assert _run(capsys, "token", "revoke", token_id, *server)[0] == 0
    assert _run(capsys, "rollout", "status", "--server", plant.url, "--token", created)[0] == 3
    # An open alert is resolved remotely, with the reason kept.
    from staging import AlertDraft
    from tufota_core import utcnow

    draft = AlertDraft(key="test:remote", kind="test", severity="warning", summary="remote")
    plant.store.sync_alerts("test:", [draft], at=utcnow(), sinks=())
    alert_id = plant.store.list_alerts(open_only=True)[0].alert_id
    code, out, err = _run(capsys, "alert", "resolve", str(alert_id), "--reason", "seen", *server)
    assert code == 0, err
    assert not plant.store.list_alerts(open_only=True)
    code, out, err = _run(capsys, "rollout", "abort", started.rollout_id, *server)
    assert code == 0, err
    assert "aborted" in out
    # --watch keeps exit 4 for an aborted rollout in remote mode.
    watch = ["rollout", "status", started.rollout_id, "--watch", "--interval", "0.05"]
    assert _run(capsys, *watch, *server)[0] == 4


def test_an_operator_may_not_mint_an_uploader_token(
    plant: Plant, capsys: pytest.CaptureFixture[str]
) -> None:
    token = plant.token("operator")
    before = _state(plant)
    code, out, err = _run(
        capsys, "token", "create", "--name", "ci", "--role", "uploader",
        "--server", plant.url, "--token", token,
    )  # fmt: skip
    assert code == 3
    assert out == ""
    assert "server's host" in err
    assert _state(plant) == before


def test_an_unreachable_server_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with _closed_port() as port:
        url = f"http://127.0.0.1:{port}"
        code, out, err = _run(capsys, "rollout", "status", "--server", url, "--token", "t")
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert url in err
    assert "cannot reach" in err


class _closed_port:  # noqa: N801 - a context manager read as a phrase
    """A loopback port nobody listens on (bound, never listening, while in use)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_repo_and_server_together_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["rollout", "status", "--repo", "r", "--server", "http://x"])
    assert exit_.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_no_repository_and_no_server_says_how_to_give_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("TUFOTA_SERVER", raising=False)
    code, _, err = _run(capsys, "fleet", "status")
    assert code == 1
    assert "tufota login" in err
    assert err.count("\n") == 1


def test_login_saves_a_0600_profile_and_flags_beat_env_beat_profile(
    plant: Plant, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = plant.token("viewer")
    code, out, err = _run(capsys, "login", "--server", plant.url, "--token", token)
    assert code == 0, err
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "tufota" / "profiles.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token in path.read_text()
    # The active profile alone is enough.
    code, out, err = _run(capsys, "rollout", "status", "--json")
    assert code == 0, err
    assert json.loads(out)["rollouts"]
    code, out, _ = _run(capsys, "profile", "list")
    assert plant.url in out
    assert token not in out
    # The environment beats the profile: a dead server named there is what fails.
    with _closed_port() as port:
        dead = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("TUFOTA_SERVER", dead)
        code, _, err = _run(capsys, "rollout", "status")
        assert code == 1
        assert dead in err
        # A flag beats the environment; the profile's token goes with its own server only.
        code, _, err = _run(capsys, "rollout", "status", "--server", plant.url)
        assert code == 0, err
        code, _, err = _run(
            capsys, "rollout", "status", "--server", plant.url.replace("127.0.0.1", "localhost")
        )
        assert code == 3
        assert "refused the token" in err
        code, _, err = _run(capsys, "rollout", "status", "--profile", "default")
        assert code == 0, err
    # Switching to a profile that does not exist changes nothing.
    code, _, err = _run(capsys, "profile", "use", "prod")
    assert code == 1
    assert "no profile named prod" in err
    # Login against a server that cannot be reached saves nothing.
    saved = path.read_text()
    with _closed_port() as port:
        code, _, err = _run(
            capsys, "login", "--server", f"http://127.0.0.1:{port}", "--token", "t",
            "--profile", "other",
        )  # fmt: skip
    assert code == 1
    assert path.read_text() == saved


def test_a_profile_file_others_can_read_is_refused(
    plant: Plant, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "login", "--server", plant.url, "--token", plant.token("viewer"))[0] == 0
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "tufota" / "profiles.json"
    path.chmod(0o644)
    code, _, err = _run(capsys, "rollout", "status")
    assert code == 1
    assert "chmod 600" in err


def test_ca_bundle_beats_requests_ca_bundle_and_is_kept_in_the_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.repo_server.test_api import _tls_files

    repo = make_repo(tmp_path)
    publisher = repo.publisher(ask)
    store = SqliteTrackerStore(repo.tracker_path)
    tokens = repo.token_store()
    ctx = ServerContext(publisher, store, RolloutController(store, publisher), tokens=tokens)
    ca, cert, key = _tls_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("TUFOTA_SERVER", raising=False)
    monkeypatch.delenv("TUFOTA_TOKEN", raising=False)
    # requests lets these override a session's bundle (psf/requests#3829): ours must win.
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, "/etc/ssl/certs/ca-certificates.crt")
    token = tokens.create("laptop", "viewer")
    try:
        app = create_app(ctx, background=False)
        with ServerThread(app, tls_cert=str(cert), tls_key=str(key)) as thread:
            server = ["--server", thread.url, "--token", token]
            code, _, err = _run(capsys, "release", "list", *server)
            assert code == 1
            assert thread.url in err
            code, out, err = _run(capsys, "release", "list", *server, "--ca-bundle", str(ca))
            assert code == 0, err
            assert "1.2.0" in out
            login = ["login", "--server", thread.url, "--token", token, "--ca-bundle", str(ca)]
            assert _run(capsys, *login)[0] == 0
            code, out, err = _run(capsys, "release", "show", HW, "1.2.0", "--json")
            assert code == 0, err
            assert json.loads(out)["fixes"] == ["CVE-2026-2222"]
    finally:
        store.close()


def test_release_upload_takes_the_server_and_token_from_the_environment(
    plant: Plant,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    passphrase_env: str,
) -> None:
    image = tmp_path / "fw-2.0.0.img"
    image.write_bytes(b"release 2.0.0\n" * 500)
    bundle = tmp_path / "rel.tar.gz"
    key = str(plant.repo.signing_dir / "release-gw-100.key")
    sign = ["release", "sign", str(image), "--hardware", HW, "--version", "2.0.0", "--key", key]
    code, _, err = _run(
        capsys, *sign, "--repo", str(plant.repo.path), "--out", str(bundle), "--yes"
    )
    assert code == 0, err
    monkeypatch.setenv("TUFOTA_SERVER", plant.url)
    monkeypatch.setenv("TUFOTA_TOKEN", plant.token("operator"))
    before = _state(plant)
    code, _, err = _run(capsys, "release", "upload", str(bundle))
    assert code == 3, err
    assert "needs an uploader token" in err
    assert _state(plant) == before
    monkeypatch.setenv("TUFOTA_TOKEN", plant.token("uploader"))
    code, out, err = _run(capsys, "release", "upload", str(bundle))
    assert code == 0, err
    assert "published" in out
    assert any(line["releases"][-1]["version"] == "2.0.0" for line in _lines(plant))


def _lines(plant: Plant) -> list[dict[str, Any]]:
    from repo_server._opsdata import release_lines

    return release_lines(plant.ctx.publisher.state())


_BASE_INSTALL = """
import sys
SERVER_SIDE = {"fastapi", "starlette", "pydantic", "uvicorn", "boto3", "botocore",
               "prometheus_client"}

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in SERVER_SIDE:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from tufota_cli.main import main
url, viewer, operator = sys.argv[1:4]
for argv in COMMANDS:
    token = operator if argv[0] == "token" else viewer
    code = main([*argv, "--server", url, "--token", token, "--json"])
    if code:
        sys.exit(f"{argv} exited {code}")
"""


def test_every_read_runs_remotely_on_the_base_install(plant: Plant) -> None:
    """A laptop with 'pip install tufota' (no server extra) reads everything remotely."""
    import subprocess
    import sys

    from repo_server._auth import ROLES
    from tufota_cli.admin_cmds import ROLES as CLI_ROLES

    assert CLI_ROLES == ROLES
    commands = [[w.format(rid=_rollout_id(plant)) for w in c] for c in READS]
    script = _BASE_INSTALL.replace("COMMANDS", repr(commands))
    result = subprocess.run(
        [sys.executable, "-c", script, plant.url, plant.token("viewer"), plant.token("operator")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path.cwd(),
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert result.returncode == 0, result.stderr


def test_login_reads_the_token_from_stdin_and_profiles_switch(
    plant: Plant, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    viewer, operator = plant.token("viewer"), plant.token("operator")
    monkeypatch.setattr("sys.stdin", io.StringIO(viewer + "\n"))
    assert _run(capsys, "login", "--server", plant.url, "--profile", "watch")[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(operator + "\n"))
    assert _run(capsys, "login", "--server", plant.url, "--profile", "ops")[0] == 0
    rid = _rollout_id(plant)
    code, out, err = _run(capsys, "rollout", "pause", rid)  # the last login is active
    assert code == 0, err
    assert _run(capsys, "profile", "use", "watch")[0] == 0
    code, _, err = _run(capsys, "rollout", "resume", rid)
    assert code == 3, err
    assert plant.store.get_rollout(rid).state == "paused"
    code, out, _ = _run(capsys, "profile", "list", "--json")
    active = [p["name"] for p in json.loads(out)["profiles"] if p["active"]]
    assert active == ["watch"]
    assert _run(capsys, "profile", "remove", "watch")[0] == 0
    code, _, err = _run(capsys, "rollout", "status")  # no active profile left
    assert code == 1
    assert "tufota login" in err
    code, _, err = _run(capsys, "rollout", "resume", rid, "--profile", "ops")
    assert code == 0, err
    assert plant.store.get_rollout(rid).state == "active"


def test_an_answer_above_the_cap_is_refused_not_buffered(plant: Plant) -> None:
    from tufota_cli._client import ApiClient, ClientLimits
    from tufota_core import TransportError

    token = plant.token("viewer")
    assert ApiClient(plant.url, token).get("/api/v1/rollouts")["rollouts"]
    small = ApiClient(plant.url, token, limits=ClientLimits(max_response_bytes=256))
    with pytest.raises(TransportError, match="larger than 256 bytes"):
        small.get("/api/v1/rollouts")


def test_alert_list_shows_alerts_the_same_locally_and_remotely(
    plant: Plant, capsys: pytest.CaptureFixture[str]
) -> None:
    operator = plant.token("operator")
    code, _, err = _run(capsys, "alert", "test", "--server", plant.url, "--token", operator)
    assert code == 0, err
    code, remote, err = _run(capsys, "alert", "list", "--server", plant.url, "--token", operator)
    assert code == 0, err
    assert "test" in remote
    assert remote == _run(capsys, "alert", "list", "--repo", str(plant.repo.path))[1]
