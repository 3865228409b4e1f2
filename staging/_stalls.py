"""Stall detection: a pure verdict on one device of a rollout at one moment.

Four kinds of finding, the first that applies wins (so a device killed
mid-download is *download_stalled*, not also *silent*):

1. ``download_stalled``: downloading (or downloaded) and neither its state nor
   its byte count changed for ``stall_timeout_seconds``.
2. ``reboot_overdue``: installing, rebooting or verifying for
   ``reboot_timeout_seconds``: it installed but did not come back.
3. ``silent``: it reported once, but not for ``silent_polls`` x
   ``poll_interval_seconds``.
4. ``never_checked_in``: its wave opened ``stall_timeout_seconds`` ago or more
   and it has not reported since (and is not silent).

``silent`` is checked before ``never_checked_in`` so a verdict does not
change kind while nothing happens: a device killed before its wave opened is
silent from its first finding on, on the dashboard and in its alert alike
(both call this function). Only when ``silent_seconds`` exceeds the stall
timeout can a quiet device go from never checked in to silent.

Devices that succeeded or failed in the rollout are never stalled (a failure
is its own signal). Nothing here does I/O; the store narrows the candidates in
SQL (``TrackerStore.stall_candidates``) and the controller turns findings into
alerts keyed per device, so a finding alerts once however long it lasts and
resolves when the device reports its way out of every kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from staging._model import DeviceRecord, RolloutRecord
from staging._progress import classify
from tufota_core import format_time

_DOWNLOADING = ("downloading", "downloaded")
_INSTALLING = ("installing", "rebooting", "verifying")


@dataclass(frozen=True)
class Finding:
    """A stalled device: which kind, since when, and a sentence for people."""

    kind: str
    device_id: str
    wave: int
    since: datetime
    text: str


def _ago(now: datetime, then: datetime) -> str:
    seconds = int((now - then).total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def find_stall(
    rollout: RolloutRecord, wave: int, device: DeviceRecord, now: datetime
) -> Finding | None:
    """The device's stall finding in ``rollout`` at ``now``, or None (module rules 1-4)."""
    if device.status != "accepted" or wave > rollout.current_wave or wave < 0:
        return None
    if classify(rollout, device) in ("succeeded", "failed", "rolled_back"):
        return None
    opts = rollout.options
    name = rollout.waves[wave].name
    working = device.target_version == rollout.version or device.rollout_id == rollout.rollout_id
    if working and device.state in _DOWNLOADING:
        since = device.progress_at or device.last_seen
        if since is not None and now - since >= timedelta(seconds=opts.stall_timeout_seconds):
            done = f"{device.bytes_done}/{device.bytes_total} bytes" if device.bytes_total else ""
            return Finding(
                "download_stalled",
                device.device_id,
                wave,
                since,
                f"{device.device_id} has made no download progress for {_ago(now, since)}"
                f"{f' ({done})' if done else ''} in rollout {rollout.rollout_id}",
            )
    if working and device.state in _INSTALLING:
        since = device.state_since or device.last_seen
        if since is not None and now - since >= timedelta(seconds=opts.reboot_timeout_seconds):
            return Finding(
                "reboot_overdue",
                device.device_id,
                wave,
                since,
                f"{device.device_id} has been {device.state} for {_ago(now, since)} and has not "
                f"come back from its reboot into {rollout.version}",
            )
    if device.last_seen is not None and now - device.last_seen >= timedelta(
        seconds=opts.silent_seconds
    ):
        return Finding(
            "silent",
            device.device_id,
            wave,
            device.last_seen,
            f"{device.device_id} has been silent for {_ago(now, device.last_seen)} "
            f"({opts.silent_polls} poll intervals of {opts.poll_interval_seconds} s)",
        )
    opened = rollout.opened_at(wave)
    if (device.last_seen is None or device.last_seen < opened) and now - opened >= timedelta(
        seconds=opts.stall_timeout_seconds
    ):
        return Finding(
            "never_checked_in",
            device.device_id,
            wave,
            opened,
            f"{device.device_id} has not checked in since wave '{name}' opened "
            f"{_ago(now, opened)} ago (last seen "
            f"{'never' if device.last_seen is None else format_time(device.last_seen)})",
        )
    return None
