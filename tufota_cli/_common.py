"""Helpers shared by the command modules: passphrases, repositories, tables."""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from repo_server import Repository
from tufota_core import InputError

PASSPHRASE_ENV = "TUFOTA_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


def passphrase_source(confirm: bool = False) -> Callable[[], str]:
    """A callable that returns the key passphrase, asking at most once.

    The passphrase comes from ``TUFOTA_PASSPHRASE`` or, on a terminal, a prompt.

    Raises:
        InputError: no environment variable and no terminal to ask on.
    """
    cache: list[str] = []

    def get() -> str:
        if cache:
            return cache[0]
        value = os.environ.get(PASSPHRASE_ENV)
        if not value:
            if not sys.stdin.isatty():
                raise InputError(f"no passphrase: set {PASSPHRASE_ENV} or run on a terminal")
            value = getpass.getpass("Key passphrase: ")
            if confirm and getpass.getpass("Repeat passphrase: ") != value:
                raise InputError("the passphrases do not match")
        cache.append(value)
        return value

    return get


def open_repo(path: str) -> Repository:
    return Repository.open(Path(path))


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
