"""The ``tufota`` entry point: one-line errors while arguments are parsed."""

from __future__ import annotations

import pytest

from tufota_cli import rollout_cmds
from tufota_cli.main import main
from tufota_core import InputError


def test_a_project_error_raised_while_parsing_is_one_usage_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def strict(text: str) -> int:
        raise InputError(f"duration {text!r} is not like 90s, 30m, 2h or 1d")

    # Any type= converter that raises the project's own error, as older ones did.
    monkeypatch.setattr(rollout_cmds, "_duration_arg", strict)
    code = main(["rollout", "start", "--repo", "r", "--hardware", "gw-100", "--version", "1.0.0",
                 "--soak", "5x"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err == "tufota: error: duration '5x' is not like 90s, 30m, 2h or 1d\n"


def test_argparse_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["release", "sign"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("tufota release sign: error: the following arguments are required")
    assert "(try 'tufota release sign --help')" in err
