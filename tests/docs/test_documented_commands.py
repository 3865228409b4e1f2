"""The documentation cannot drift from the command line.

Two properties, both read from the Markdown itself (nothing is copied here):

- every ``tufota`` and ``tufota-agent`` command line in a shell block of the
  README or docs/ parses with the real argument parsers, so a renamed or
  removed option breaks this suite instead of a reader's first hour;
- shell blocks marked ``<!-- test: NAME -->`` (the README's minimal session,
  the walkthroughs of docs/signing.md and docs/device-agent.md) run for real,
  in order, in an empty directory, with the project's commands on PATH.

Synopsis syntax is understood, not executed: ``[...]`` optional parts are
dropped, ``a|b`` alternatives take the first, ``alice$`` prompts and
``# comments`` are removed, continuation lines are joined.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from device_agent.cli import _parser as agent_parser
from tufota_cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_MARK = re.compile(r"<!--\s*test:\s*([\w.-]+)\s*-->\s*$")
_PROMPT = re.compile(r"^[\w.-]+\$\s+")
_NUMERIC_PLACEHOLDERS = {"ALERT_ID": "1", "N": "3", "PORT": "8080"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    text: str
    mark: str | None


def shell_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group(1) not in ("sh", "bash", "console", "shell"):
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = _MARK.search(before)
        blocks.append(
            Block(
                path,
                text.count("\n", 0, match.start()) + 1,
                match.group(2),
                mark.group(1) if mark else None,
            )
        )
    return blocks


def command_lines(block: Block) -> list[tuple[int, str]]:
    """The ``tufota``/``tufota-agent`` commands of a block, continuation lines joined."""
    out: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for offset, raw in enumerate(block.text.splitlines()):
        line = raw.rstrip()
        if not pending:
            start = block.line + 1 + offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        line = _PROMPT.sub("", line.strip())
        if line.startswith(("tufota ", "tufota-agent ")):
            out.append((start, line))
    return out


def synopsis_to_argv(line: str) -> list[str]:
    """One documented command as argv, synopsis syntax resolved."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words: list[str] = []
    for word in lexer:
        # The command ends at a control operator or a pipe into another program.
        if word in ("&", "&&", ";", "|"):
            break
        words.append(word)
    argv = []
    depth = 0  # inside an optional [...] group, possibly nested
    for word in words:
        opened = depth > 0 or word.startswith("[")
        depth += word.count("[") - word.count("]")
        if opened:
            continue
        if "|" in word and "://" not in word:
            word = word.split("|", 1)[0]  # alternatives: take the first
        if word not in ("...", "\u2026"):
            argv.append(word)
    return argv


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """None if ``argv`` parses, else argparse's complaint."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            if e.code not in (0, None):
                return err.getvalue().strip().splitlines()[-1] if err.getvalue() else str(e)
    return None


def _documented_commands() -> list[tuple[str, list[str]]]:
    cases = []
    for path in DOCS:
        for block in shell_blocks(path):
            for line_no, line in command_lines(block):
                argv = synopsis_to_argv(line)
                cases.append((f"{path.relative_to(ROOT)}:{line_no}", argv))
    return cases


COMMANDS = _documented_commands()


def test_the_docs_document_commands() -> None:
    # Guards the extractor itself: if it finds nothing, the test below proves nothing.
    assert len(COMMANDS) > 40
    assert any(argv[0] == "tufota-agent" for _, argv in COMMANDS)


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(where: str, argv: list[str]) -> None:
    program, *args = argv
    # An ALL_CAPS placeholder stands for a value; numeric arguments get a number.
    args = [_NUMERIC_PLACEHOLDERS.get(a, a) for a in args]
    if program == "tufota-agent":
        if args[:1] == ["tuf-client"]:
            pytest.skip("tuf-client follows the TUF conformance protocol's own syntax")
        problem = _parse(agent_parser(), args)
    else:
        problem = _parse(build_parser(), args)
    assert problem is None, f"{where}: {' '.join(argv)}: {problem}"


def _private_loopback() -> list[str]:
    """A command prefix giving the session a network namespace of its own, when possible.

    The documented sessions use the documented port (8080); in a namespace of
    their own two test runs on one machine cannot collide. Without root or
    unshare the session runs as is.
    """
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if os.geteuid() != 0 or not unshare or not ip:
        return []
    probe = subprocess.run(
        [unshare, "--net", ip, "link", "set", "lo", "up"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return []
    return [unshare, "--net", "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh"]


def _sessions() -> list[tuple[str, list[Block]]]:
    sessions: dict[str, list[Block]] = {}
    for path in DOCS:
        for block in shell_blocks(path):
            if block.mark:
                sessions.setdefault(f"{path.relative_to(ROOT)}:{block.mark}", []).append(block)
    return sorted(sessions.items())


SESSIONS = _sessions()


@pytest.mark.parametrize(("name", "blocks"), SESSIONS, ids=[n for n, _ in SESSIONS])
def test_documented_session_runs(name: str, blocks: list[Block], tmp_path: Path) -> None:
    script = "\n".join(b.text for b in blocks)
    bindir = Path(sys.executable).parent
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TUFOTA_") and k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    }
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    # Background jobs (servers, agents) end with the script, whatever happens.
    wrapped = (
        "set -euo pipefail\n"
        "trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true' EXIT\n"
        + script
        + "\n"
    )
    bash = shutil.which("bash")
    assert bash
    result = subprocess.run(
        [*_private_loopback(), bash, "-c", wrapped],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, (
        f"{name} failed with exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}"
        f"\n--- stderr\n{result.stderr[-3000:]}"
    )
