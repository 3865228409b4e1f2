"""Helpers shared by the command modules: passphrases, repositories, tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signing import PASSPHRASE_ENV, KeyPassphrases
from tufota_core import safe_text

if TYPE_CHECKING:
    from repo_server import Repository

__all__ = ["PASSPHRASE_ENV", "open_repo", "passphrase_source", "print_json", "table"]


def passphrase_source(confirm: bool = False) -> KeyPassphrases:
    """Each key file's passphrase, asked for at most once per file.

    ``source.for_key(path)`` reads ``TUFOTA_PASSPHRASE_<STEM>``, then
    ``TUFOTA_PASSPHRASE``, then prompts naming the file; ``load_signer`` asks
    that way for every encrypted key. Calling ``source()`` gives the generic
    ``TUFOTA_PASSPHRASE``.

    Raises (when called):
        InputError: no environment variable and no terminal to ask on.
    """
    return KeyPassphrases(confirm=confirm)


def open_repo(path: str, signing_dir: str | None = None) -> Repository:
    """The repository directory ``path`` and its signing directory (default ``PATH-signing``)."""
    from repo_server import Repository

    return Repository.open(Path(path), Path(signing_dir) if signing_dir else None)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table; control and bidi characters in cells shown as escapes."""
    # Cells carry device-supplied text: a bidi override or an escape sequence must
    # not rewrite what the operator's terminal shows.
    cells = [[safe_text(str(h)) for h in headers]] + [
        ["" if c is None else safe_text(str(c)) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
