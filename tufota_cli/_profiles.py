"""Named server profiles in the user's config file, like kubectl contexts.

The file is ``$XDG_CONFIG_HOME/tufota/profiles.json`` (default
``~/.config/tufota/profiles.json``)::

    {"active": "prod", "profiles": {"prod": {"server": URL, "token": T, "ca_bundle": F}}}

Invariants: the file holds API tokens, so it is written atomically and is
created with mode 0600 (its directory 0700); a file other users can read is
refused rather than used. Nothing else of the CLI writes it.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from tufota_core import InputError, NotFoundError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_FILE = 256 * 1024


def config_path() -> Path:
    """Where the profiles live: ``$XDG_CONFIG_HOME/tufota/profiles.json``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tufota" / "profiles.json"


def check_profile_name(name: str) -> str:
    """Raises InputError unless ``name`` is 1-63 letters, digits, '.', '_' or '-'."""
    if not _NAME.match(name):
        raise InputError(f"profile name {name!r} must be 1-63 letters, digits, '.', '_' or '-'")
    return name


def load() -> dict[str, Any]:
    """The profiles file as ``{"active": NAME|None, "profiles": {...}}`` (empty when absent).

    Raises:
        InputError: the file is malformed, too large, or readable by other users.
    """
    path = config_path()
    try:
        info = path.stat()
    except FileNotFoundError:
        return {"active": None, "profiles": {}}
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"{path} holds tokens but others may read it; run: chmod 600 {path}")
    if info.st_size > MAX_FILE:
        raise InputError(f"{path} is larger than {MAX_FILE} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("profiles", {}), dict):
        raise InputError(f"{path} is not a tufota profiles file")
    return {"active": data.get("active"), "profiles": dict(data.get("profiles", {}))}


def save(data: dict[str, Any]) -> Path:
    """Write the profiles file atomically with mode 0600."""
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".profiles.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)  # before a byte of a token is written
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def profile(name: str | None) -> dict[str, Any] | None:
    """The named profile, else the active one, else None.

    Raises:
        NotFoundError: ``name`` is given and no such profile exists.
    """
    data = load()
    wanted = name or data.get("active")
    if not wanted:
        return None
    found = data["profiles"].get(wanted)
    if not isinstance(found, dict):
        if name:
            raise NotFoundError(f"no profile named {name}; see 'tufota profile list'")
        return None
    return {"name": wanted, **found}
