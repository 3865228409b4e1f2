"""``tufota rollout status --watch``: redraw a compact progress table until the rollout ends.

Invariants:

* Read-only: it opens the tracker store without a publisher and never needs
  the key passphrase, so it is safe to leave running on an operator's
  terminal next to the server (SQLite WAL lets it read while the server writes).
* It ends by itself: a watched rollout that completes or is aborted ends the
  watch (exit 0 for completed, ``EXIT_ABORTED`` = 4 for aborted; 1 is any
  error and 2 argparse's bad usage, so a script can tell them apart);
  watching every rollout ends when none is live. Ctrl-C ends it with exit 130.
* ``--json`` prints the very data of ``tufota rollout status --json``, one
  JSON document per line (NDJSON) and per change, for scripts.
* On a terminal the screen is redrawn in place every interval; into a pipe or
  file a frame is written only when something changed, so logs stay short.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tufota_cli._ops import operations
from tufota_core import InputError, format_time, utcnow

FINAL_STATES = ("completed", "aborted")
EXIT_ABORTED = 4
"""Exit code of ``--watch`` when a watched rollout was aborted (docs/rollouts.md)."""
_CLEAR = "\x1b[H\x1b[2J"
_COLUMNS = (
    ("eligible", "elig"),
    ("checked_in", "seen"),
    ("downloading", "dl"),
    ("installed", "inst"),
    ("succeeded", "ok"),
    ("failed", "fail"),
    ("rolled_back", "rb"),
)

Fetch = Callable[[], list[dict[str, Any]]]


def add_watch(parser: argparse.ArgumentParser, status: Callable[[argparse.Namespace], int]) -> None:
    """Give ``rollout status`` its ``--watch`` and ``--interval`` flags.

    ``status`` stays the command when ``--watch`` is absent.
    """
    parser.add_argument(
        "--watch",
        action="store_true",
        help="redraw until the rollout completes (exit 0) or is aborted (exit 4)",
    )
    parser.add_argument(
        "--interval", type=float, default=2.0, help="seconds between redraws (default 2)"
    )

    def run(args: argparse.Namespace) -> int:
        return cmd_watch(args) if args.watch else status(args)

    parser.set_defaults(func=run)


def cmd_watch(args: argparse.Namespace) -> int:
    """Watch one rollout (or every rollout) from the repository's tracker or the server."""
    if not 0.05 <= args.interval <= 3600:
        raise InputError(f"--interval {args.interval} is outside 0.05-3600 seconds")
    ops = operations(args)  # local tracker (read-only) or the server's API

    def fetch() -> list[dict[str, Any]]:
        return ops.rollouts(args.rollout_id)

    try:
        return watch(fetch, as_json=args.json, interval=args.interval)
    except KeyboardInterrupt:
        return 130


def watch(
    fetch: Fetch,
    *,
    as_json: bool = False,
    interval: float = 2.0,
    out: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], str] = lambda: format_time(utcnow()),
) -> int:
    """Draw ``fetch()`` every ``interval`` seconds until no watched rollout is live.

    Returns:
        0 when every watched rollout completed (or there is none),
        ``EXIT_ABORTED`` (4) when one was aborted.

    Raises:
        TufotaError: from ``fetch`` (say, an unknown rollout id), at once.
    """
    stream = out or sys.stdout
    tty = stream.isatty() and not as_json
    last = ""
    while True:
        rollouts = fetch()
        if as_json:
            frame = json.dumps({"rollouts": rollouts}, sort_keys=True)
            if frame != last:
                stream.write(frame + "\n")
        else:
            body = render(rollouts, unicode=_unicode(stream))
            if tty:
                stream.write(f"{_CLEAR}{now()}  (every {interval:g} s, Ctrl-C to stop)\n\n{body}\n")
            elif body != last:
                stream.write(f"{now()}\n{body}\n\n")
            frame = body
        stream.flush()
        last = frame
        if all(r["state"] in FINAL_STATES for r in rollouts):
            return EXIT_ABORTED if any(r["state"] == "aborted" for r in rollouts) else 0
        sleep(interval)


def _unicode(stream: TextIO) -> bool:
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return encoding in ("utf8", "utf16", "utf32")


def _bar(part: int, whole: int, width: int, unicode: bool) -> str:
    full, empty = ("█", "░") if unicode else ("#", "-")
    filled = round(width * part / whole) if whole else 0
    percent = f"{100 * part / whole:5.1f}%" if whole else "    -"
    return f"{full * filled}{empty * (width - filled)} {percent}"


def render(rollouts: list[dict[str, Any]], unicode: bool = True) -> str:
    """The compact table of each rollout: header, one row per wave and a total, the gate."""
    if not rollouts:
        return "no rollouts"
    blocks = []
    for r in rollouts:
        waves = r.get("waves", [])
        current = int(r.get("current_wave", 0))
        stalls = {k: v for k, v in (r.get("stalls") or {}).items() if v}
        head = (
            f"{r['rollout_id']}  {r['hardware_id']} -> {r['version']}  {r['state'].upper()}  "
            f"wave {current + 1}/{len(waves)} '{r.get('current_wave_name', '')}'"
        )
        names = [w["name"] for w in waves] + ["total"]
        width = max(len(n) for n in names) + 2
        header = "  " + "wave".ljust(width) + "".join(f"{short:>6}" for _, short in _COLUMNS)
        lines = [head, header + "  progress"]
        for index, wave in enumerate([*waves, r.get("total", {})]):
            is_total = index == len(waves)
            mark = (
                " " if is_total else "*" if index == current and r["state"] != "completed" else " "
            )
            name = "total" if is_total else wave["name"]
            cells = "".join(f"{wave.get(key, 0):>6}" for key, _ in _COLUMNS)
            bar = _bar(wave.get("succeeded", 0), wave.get("eligible", 0), 20, unicode)
            lines.append(f"{mark} {name.ljust(width)}{cells}  {bar}")
        if stalls:
            text = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(stalls.items()))
            lines.append(f"  stalled: {text}")
        if r.get("gate"):
            lines.append(f"  gate: {r['gate']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
