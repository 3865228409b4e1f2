"""Named crash points for fault-injection tests; no effect in normal operation.

The agent calls :func:`point` at the instants a power cut matters most (inside
a download, around every atomic file replacement, between state transitions).
Tests set :data:`hook` in a forked child to kill the process at the n-th point
and then check what a restarted agent does. Invariant: with ``hook`` unset
(the default, and always in production) ``point`` does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

hook: Callable[[str], None] | None = None


def point(name: str) -> None:
    """Announce crash point ``name`` to the test hook, if one is installed."""
    if hook is not None:
        hook(name)
