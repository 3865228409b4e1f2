"""agent.toml, the command installer, the CLI, and the agent's import boundary."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from device_agent import AgentConfig, CommandInstaller, init_slots, render_agent_config
from device_agent.cli import main
from tests.device_agent.conftest import DEVICE, HW, Env, failing_command
from tufota_core import ConflictError, InputError, InstallError, NotFoundError


def test_rendered_config_round_trips_awkward_strings(tmp_path: Path) -> None:
    command = 'sh -c "install \\"{file}\\"\ttab\x7f" é \U0001f600'
    text = render_agent_config(
        device_id=DEVICE,
        hardware_id=HW,
        server_url="https://ota.example.com:8443",
        tags=["canary", "eu-west"],
        installer_kind="command",
        installer_command=command,
        health_command="check --path 'C:\\boot'",
        state_dir="var/state",
    )
    assert tomllib.loads(text)["installer"]["command"] == command
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")

    config = AgentConfig.load(path)

    assert config.installer_command == command
    assert config.health_command == "check --path 'C:\\boot'"
    assert config.tags == ("canary", "eu-west")
    assert config.state_dir == tmp_path.resolve() / "var" / "state"
    assert config.ca_bundle is None


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[device]\nhardware_id = "gw-100"\n[server]\nurl = "http://x"\n',
            "[device] id is missing",
        ),
        (
            '[device]\nid = 5\nhardware_id = "gw-100"\n[server]\nurl = "http://x"\n',
            "[device] id must be a string",
        ),
        (
            '[device]\nid = "d"\nhardware_id = "gw-100"\n[server]\nurl = "ftp://x"\n',
            "is not an http:// or https:// URL",
        ),
        ('[device]\nid = "d"\nhardware_id = "GW"\n[server]\nurl = "http://x"\n', "hardware id"),
        (
            '[device]\nid = "d"\nhardware_id = "gw"\n[server]\nurl = "http://x"\n'
            '[poll]\ninterval = "soon"\n',
            "[poll] interval 'soon' is not a duration such as 30, '10s'",
        ),
        (
            '[device]\nid = "d"\nhardware_id = "gw"\n[server]\nurl = "http://x"\n'
            '[installer]\nkind = "command"\n',
            "must contain '{file}'",
        ),
        ("[device\n", "is not valid TOML"),
    ],
    ids=["missing-id", "id-type", "url", "hardware", "interval", "command", "syntax"],
)
def test_invalid_config_names_the_field(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(toml)

    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AgentConfig.load(path)


_BASE = '[device]\nid = "d"\nhardware_id = "gw"\n[server]\nurl = "http://x"\n'


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[installer]\nkidn = "command"\n', "unknown key [installer] kidn; did you mean kind?"),
        ("[donwload]\nrate_limit = 1\n", "unknown section [donwload]; did you mean [download]?"),
        ('[poll]\nintreval = "10s"\n', "unknown key [poll] intreval; did you mean interval?"),
        ("[zzz]\nq = 1\n", "unknown section [zzz]"),
        ('[poll]\ninterval = "2 weeks"\n', "[poll] interval '2 weeks' is not a duration"),
        ('[poll]\ninterval = "2d"\n', "[poll] interval '2d' is outside 1s - 1d"),
        ("[poll]\ninterval = 0\n", "[poll] interval 0 is outside 1s - 1d"),
        ('[policy]\nmin_version = "one"\n', "policy.min_version: "),
        ('[policy]\nmaintenance_window = "Sat 2-4"\n', "policy.maintenance_window: "),
    ],
    ids=["kidn", "donwload", "intreval", "far", "duration", "long", "zero", "min", "window"],
)
def test_unknown_names_and_bad_values_name_the_file_once_and_the_closest_key(
    tmp_path: Path, extra: str, message: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(_BASE + extra)

    with pytest.raises(InputError) as info:
        AgentConfig.load(path)

    text = str(info.value)
    assert message in text
    assert text.startswith(f"agent config {path}: ")
    assert text.count(str(path)) == 1


def test_a_top_level_key_outside_any_section_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('kind = "command"\n' + _BASE)

    with pytest.raises(InputError, match="unknown key 'kind' outside any section"):
        AgentConfig.load(path)


def test_durations_policy_and_heartbeat_load(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        _BASE + '[poll]\ninterval = "10s"\nmax_backoff = "5m"\n'
        '[download]\nheartbeat_interval = "1m"\n'
        '[health]\ndeadline = "1h"\n'
        '[policy]\nmaintenance_window = "Sat 02:00-04:00 UTC"\nmin_version = "1.2.0"\n'
    )

    config = AgentConfig.load(path)

    assert (config.poll_interval, config.max_backoff) == (10.0, 300.0)
    assert (config.heartbeat_interval, config.health_deadline) == (60.0, 3600.0)
    assert config.maintenance_window == "Sat 02:00-04:00 UTC"
    assert config.min_version == "1.2.0"


def test_rendered_policy_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        render_agent_config(
            device_id=DEVICE,
            hardware_id=HW,
            server_url="http://x",
            poll_interval=10,
            maintenance_window="daily 01:00-03:00 UTC",
            min_version="2.0.0",
        )
    )

    config = AgentConfig.load(path)

    assert (config.maintenance_window, config.min_version) == ("daily 01:00-03:00 UTC", "2.0.0")
    assert config.poll_interval == 10.0


def test_missing_config_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        AgentConfig.load(tmp_path / "nope.toml")


def test_render_refuses_values_that_would_not_load() -> None:
    with pytest.raises(InputError, match="tag"):
        render_agent_config(device_id=DEVICE, hardware_id=HW, server_url="http://x", tags=["Bad!"])


def test_init_slots_refuses_to_overwrite(tmp_path: Path) -> None:
    init_slots(tmp_path / "slots", None)
    boot = json.loads((tmp_path / "slots" / "boot.json").read_text())
    assert boot["slots"]["a"]["version"] is None
    with pytest.raises(ConflictError):
        init_slots(tmp_path / "slots", "1.0.0")


def test_command_installer_runs_without_a_shell_and_reports_stderr(tmp_path: Path) -> None:
    image = tmp_path / "fw; rm -rf x.bin"
    image.write_bytes(b"img")
    copy = tmp_path / "installed.bin"
    script = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])"
    command = f"{sys.executable} -c '{script}' {{file}} {copy}"
    installer = CommandInstaller(command, tmp_path / "state.json")

    installer.install(image, "1.1.0", "0" * 64)

    assert copy.read_bytes() == b"img"
    assert installer.pending_version() == "1.1.0"
    assert installer.boot(3).trial
    installer.commit()
    assert installer.installed_version() == "1.1.0"

    failing = CommandInstaller(failing_command(4) + " {file}", tmp_path / "state2.json")
    with pytest.raises(InstallError, match="exited 4: unhealthy") as info:
        failing.install(image, "1.2.0", "0" * 64)
    assert info.value.code == "install_failed"
    assert failing.pending_version() is None


def test_cli_run_once_reports_a_pending_reboot_then_status(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    config = str(env.device_dir / "agent.toml")

    assert main(["run", "--config", config, "--once"]) == 0
    assert "reboot pending: 1.1.0" in capsys.readouterr().out

    assert main(["status", "--config", config, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["agent"]["state"] == "rebooting"
    assert status["pending_version"] == "1.1.0"

    assert main(["run", "--config", config, "--once"]) == 0
    assert capsys.readouterr().out.startswith("succeeded: installed 1.1.0")
    assert main(["status", "--config", config]) == 0
    assert "installed  1.1.0" in capsys.readouterr().out


def test_cli_error_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--config", str(tmp_path / "missing.toml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tufota-agent: error: agent config")
    assert "Traceback" not in err


def test_status_without_config_uses_the_documented_default(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TUFOTA_AGENT_CONFIG", str(env.device_dir / "agent.toml"))

    assert main(["status"]) == 0
    assert f"device     {DEVICE} ({HW})" in capsys.readouterr().out

    monkeypatch.delenv("TUFOTA_AGENT_CONFIG")
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert "agent config /etc/tufota/agent.toml (the default) does not exist" in err
    assert "--config PATH" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [["-v", "status", "--config", "MISSING"], ["status", "--config", "MISSING", "-v"]],
    ids=["before", "after"],
)
def test_verbose_is_accepted_before_and_after_the_command(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    argv: list[str],
) -> None:
    argv = [str(tmp_path / "missing.toml") if a == "MISSING" else a for a in argv]

    assert main(argv) == 1

    assert capsys.readouterr().err.rstrip().endswith("does not exist")
    # -v: the traceback is logged.
    assert [r for r in caplog.records if r.exc_info and r.getMessage() == "status failed"]


def test_threshold_root_notes_stay_out_of_the_log_and_waves_count_from_one(
    env: Env, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from securesystemslib.signer import CryptoSigner

    # Root v2 is 2-of-3 and carries two signatures: each refresh notes the third key.
    extra = [CryptoSigner.generate_ed25519() for _ in range(2)]
    root = env.repo.root
    for signer in extra:
        root.signed.add_key(signer.public_key, "root")
    root.signed.roles["root"].threshold = 2
    root.signed.version = 2
    root.signatures.clear()
    root.sign(env.repo.signers["root"])
    root.sign(extra[0], append=True)
    (env.repo.metadata_dir / "2.root.json").write_bytes(root.to_bytes())
    env.repo.add_firmware("1.1.0")
    env.repo.set_rollout("1.1.0")
    env.repo.publish()
    config = str(env.device_dir / "agent.toml")
    caplog.set_level(logging.DEBUG)

    assert main(["run", "--once", "--config", config]) == 0
    assert main(["run", "--once", "--config", config]) == 0

    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "No signature for keyid" in m]
    assert "update available: wave 1/1 of rollout r-1 offers 1.1.0" in messages

    caplog.clear()
    assert main(["-v", "status", "--config", config]) == 0
    assert main(["run", "--once", "--config", config, "-v"]) == 0
    assert [r for r in caplog.records if "No signature for keyid" in r.getMessage()]
    capsys.readouterr()


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["status", "--help"]])
def test_cli_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: tufota-agent" in capsys.readouterr().out


_IMPORT_PROBE = """
import json, sys, traceback

boto3_importers = []


class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "boto3":
            frames = [f.filename for f in traceback.extract_stack()[:-1]]
            boto3_importers.append([f for f in frames if "importlib" not in f][-1])
        return None


sys.meta_path.insert(0, Spy())
import device_agent, device_agent.cli

server_side = {"repo_server", "staging", "signing", "fastapi", "tufota_cli", "uvicorn"}
print(json.dumps({
    "server_side": sorted(m for m in sys.modules if m.split(".")[0] in server_side),
    "boto3_importers": boto3_importers,
}))
"""


def _probe(prelude: str = "") -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", prelude + _IMPORT_PROBE],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


def test_agent_imports_nothing_server_side() -> None:
    result = _probe()

    assert result["server_side"] == []
    # boto3 may be loaded only by securesystemslib's optional KMS signer, which
    # tries it whenever it is installed (here, by the server extra); the agent
    # never imports it.
    for importer in result["boto3_importers"]:
        assert importer.endswith("securesystemslib/signer/_aws_signer.py")


def test_agent_imports_without_boto3_installed() -> None:
    result = _probe("import sys; sys.modules['boto3'] = None\n")

    assert result["server_side"] == []


def test_status_into_a_closed_pipe_exits_141_without_a_traceback(env: Env) -> None:
    config = str(env.device_dir / "agent.toml")
    agent = Path(sys.executable).parent / "tufota-agent"
    proc = subprocess.Popen(
        [str(agent), "status", "--config", config, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the agent (still importing) writes
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err, err.decode()
    assert proc.returncode == 141, err.decode()
