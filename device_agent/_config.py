"""The device's ``agent.toml``: loading, validation and rendering, plus the limits.

Invariants:
* ``AgentConfig.load`` either returns a fully validated, frozen config whose
  paths are absolute (relative ones are resolved against the config file's
  directory), or raises ``InputError`` naming the section and field at fault.
* ``render_agent_config`` only writes values ``load`` accepts, and
  ``tomllib.loads(render_agent_config(...))`` round-trips every string
  exactly (quotes, backslashes, control and non-ASCII characters included).
* Every byte cap, timeout and count the agent obeys lives in ``AgentLimits``.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tufota_core import (
    InputError,
    MaintenanceWindow,
    NotFoundError,
    Version,
    check_device_id,
    check_hardware_id,
    check_tag,
)

INSTALLER_KINDS = ("ab-simulator", "command")
PROGRESS_MODES = ("auto", "never")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "ki": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "gi": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "ti": 1024**4,
}


# Every section and key agent.toml may hold; anything else is a typo and an error.
SCHEMA: dict[str, tuple[str, ...]] = {
    "device": ("id", "hardware_id", "tags", "key", "public_key"),
    "server": ("url", "trusted_root", "ca_bundle"),
    "paths": ("state_dir", "slots_dir", "metadata_dir", "download_dir"),
    "poll": ("interval", "jitter", "max_backoff"),
    "download": (
        "rate_limit",
        "data_budget",
        "budget_period",
        "progress",
        "progress_step",
        "heartbeat_interval",
    ),
    "installer": ("kind", "command"),
    "health": ("command", "deadline", "max_boot_attempts"),
    "policy": ("maintenance_window", "min_version"),
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DAY = 86400.0
# Inclusive bounds of every duration in agent.toml, in seconds.
DURATION_BOUNDS: dict[str, tuple[float, float]] = {
    "poll.interval": (1.0, DAY),
    "poll.max_backoff": (0.0, 7 * DAY),
    "health.deadline": (1.0, DAY),
    "download.budget_period": (60.0, 366 * DAY),
    "download.heartbeat_interval": (1.0, 3600.0),
}


def parse_duration(value: int | float | str, what: str, bounds: tuple[float, float]) -> float:
    """Seconds from a number of seconds or a string such as ``"10s"``, ``"5m"``, ``"1h"``, ``"1d"``.

    Raises:
        InputError: not a duration, or outside ``bounds`` (inclusive).
    """
    low, high = bounds
    if isinstance(value, bool):
        raise InputError(f"{what} must be a duration such as 30, '10s', '5m' or '1h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            raise InputError(f"{what} {value!r} is not a duration such as 30, '10s', '5m' or '1h'")
        seconds = float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "").lower()]
    if not math.isfinite(seconds) or not low <= seconds <= high:
        raise InputError(f"{what} {value!r} is outside {_seconds(low)} - {_seconds(high)}")
    return seconds


def _seconds(value: float) -> str:
    for unit, size in (("d", DAY), ("h", 3600.0), ("m", 60.0)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value:g}s"


def _check_duration(value: float, key: str) -> None:
    parse_duration(value, key, DURATION_BOUNDS[key])


def closest(name: str, choices: Iterable[str], form: str = "{}") -> str:
    """``; did you mean X?`` for the choice closest to ``name`` (X ``form``-ated), or ``""``."""
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {form.format(found[0])}?" if found else ""


def parse_size(value: int | float | str, what: str) -> int:
    """A byte count from a number or a string such as ``"2 MiB"`` or ``"500kB"``.

    Raises:
        InputError: not a non-negative size.
    """
    if isinstance(value, bool):
        raise InputError(f"{what} must be a byte count such as 1048576 or '1 MiB'")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        match = _SIZE.match(value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise InputError(f"{what} {value!r} is not a byte count such as 1048576 or '1 MiB'")
        number, unit = float(match.group(1)), match.group(2).lower()
    if not math.isfinite(number) or number < 0:
        raise InputError(f"{what} must not be negative")
    return int(number * _UNITS[unit])


@dataclass(frozen=True)
class AgentLimits:
    """Caps and timeouts, with safe defaults for a small device.

    Attributes:
        connect_timeout: Seconds to wait for a TCP/TLS connection.
        read_timeout: Seconds to wait between bytes received.
        chunk_size: Bytes read per network chunk of metadata.
        download_chunk_size: Largest chunk read from a firmware stream (the size
            of each reusable receive buffer).
        download_queue_depth: Receive buffers; with ``download_chunk_size`` this
            bounds memory. 1: each chunk is hashed in the receiving thread; more:
            a second thread hashes while that many chunks are in flight, which
            only pays with an idle core (on the 2-core benchmark box it is slower).
        download_writeback_bytes: A download hands what it wrote to the kernel's
            writeback every this many bytes, so the final fsync does not flush the
            whole image at once and unwritten image data in RAM stays bounded
            (0: only the final fsync).
        min_bytes_per_second: A transfer slower than this over ``slow_window``
            seconds is abandoned as a slow-retrieval attack (it resumes later).
        slow_window: Seconds over which ``min_bytes_per_second`` is measured.
        budget_save_bytes: The data budget file is saved at least this often.
        max_firmware_bytes: Largest firmware target the agent will download.
        max_rollout_doc_bytes: Largest rollout document the agent will download.
        max_queued_reports: Outbox size; beyond it the oldest reports are dropped.
        max_reports_per_flush: Reports sent per flush, so one cycle stays short.
        max_remembered_rollouts: Rollouts whose outcome the state file remembers.
        max_backoff_factor: Longest poll interval, as a multiple of the configured one,
            while the server refuses the device (401/403) or cannot be reached.
        output_tail_bytes: Bytes of a failed command's stderr kept for the report.
        report_deadline: Seconds one report delivery may take in all, from connecting
            to the answer's last byte (a trickling answer is cut there).
        flush_deadline: Seconds one outbox flush may take; the rest waits for the
            next flush, so delivering reports never holds up the update check.
        max_report_answer_bytes: Largest answer to a report the agent reads; a
            longer (or endless) answer is cut there and the report kept.
        max_bundle_members: Most members an offline bundle archive may have.
        max_bundle_bytes: Most bytes all members of an offline bundle archive may
            hold together, uncompressed (firmware cap plus room for metadata).
        max_bundle_metadata_bytes: Largest metadata member of an offline bundle.
        max_bundle_header_bytes: Largest tar header payload (long name, pax
            record) read; a larger one is refused before it is read.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    chunk_size: int = 64 * 1024
    download_chunk_size: int = 4 * 1024 * 1024
    download_queue_depth: int = 1
    download_writeback_bytes: int = 32 * 1024 * 1024
    min_bytes_per_second: float = 64.0
    slow_window: float = 60.0
    budget_save_bytes: int = 4 * 1024 * 1024
    max_firmware_bytes: int = 2 * 1024**3
    max_rollout_doc_bytes: int = 64 * 1024
    max_queued_reports: int = 500
    max_reports_per_flush: int = 100
    max_remembered_rollouts: int = 16
    max_backoff_factor: int = 8
    output_tail_bytes: int = 800
    report_deadline: float = 20.0
    flush_deadline: float = 60.0
    max_report_answer_bytes: int = 64 * 1024
    max_bundle_members: int = 4096
    max_bundle_bytes: int = 2 * 1024**3 + 256 * 1024**2
    max_bundle_metadata_bytes: int = 16 * 1024**2
    max_bundle_header_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent knows about itself, from ``agent.toml``.

    Paths are absolute. Build one with :meth:`load`; tests may construct it
    directly or derive variants with ``dataclasses.replace``.
    """

    device_id: str
    hardware_id: str
    server_url: str
    key_path: Path
    public_key_path: Path
    trusted_root: Path
    state_dir: Path
    slots_dir: Path
    tags: tuple[str, ...] = ()
    ca_bundle: Path | None = None
    poll_interval: float = 300.0
    poll_jitter: float = 0.2
    installer_kind: str = "ab-simulator"
    installer_command: str = ""
    health_command: str = ""
    health_deadline: float = 60.0
    max_boot_attempts: int = 3
    metadata_dir: Path | None = None
    download_dir: Path | None = None
    max_backoff: float = 0.0
    rate_limit: int = 0
    data_budget: int = 0
    budget_period: float = 30 * 86400.0
    progress: str = "auto"
    progress_step: int = 25
    heartbeat_interval: float = 60.0
    maintenance_window: str | None = None
    min_version: str | None = None
    limits: AgentLimits = field(default_factory=AgentLimits)

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        check_hardware_id(self.hardware_id)
        for tag in self.tags:
            check_tag(tag)
        _check_url(self.server_url)
        if self.installer_kind not in INSTALLER_KINDS:
            raise InputError(
                f"installer.kind {self.installer_kind!r} is not one of {', '.join(INSTALLER_KINDS)}"
            )
        if self.installer_kind == "command" and "{file}" not in self.installer_command:
            raise InputError(
                "installer.command must contain '{file}' when installer.kind is 'command'"
            )
        _check_duration(self.poll_interval, "poll.interval")
        if not 0.0 <= self.poll_jitter < 1.0:
            raise InputError("poll.jitter must be at least 0 and below 1")
        _check_duration(self.health_deadline, "health.deadline")
        if not 1 <= self.max_boot_attempts <= 100:
            raise InputError("health.max_boot_attempts must be between 1 and 100")
        _check_duration(self.max_backoff, "poll.max_backoff")
        if self.rate_limit < 0 or self.data_budget < 0:
            raise InputError("download.rate_limit and download.data_budget must not be negative")
        if 0 < self.rate_limit < self.limits.min_bytes_per_second:
            raise InputError(
                f"download.rate_limit must be at least {self.limits.min_bytes_per_second:g} "
                "bytes/s (slower transfers are abandoned as stalled)"
            )
        _check_duration(self.budget_period, "download.budget_period")
        _check_duration(self.heartbeat_interval, "download.heartbeat_interval")
        if self.progress not in PROGRESS_MODES:
            raise InputError(f"download.progress must be one of {', '.join(PROGRESS_MODES)}")
        if not 0 <= self.progress_step <= 100:
            raise InputError("download.progress_step must be a percentage (0: no progress reports)")
        if self.maintenance_window is not None:
            try:
                MaintenanceWindow.parse(self.maintenance_window)
            except InputError as e:
                raise InputError(f"policy.maintenance_window: {e}") from None
        if self.min_version is not None:
            try:
                Version.parse(self.min_version)
            except InputError as e:
                raise InputError(f"policy.min_version: {e}") from None

    @property
    def metadata_path(self) -> Path:
        """Where verified TUF metadata is cached (``paths.metadata_dir``)."""
        return self.metadata_dir or self.state_dir / "metadata"

    @property
    def download_path(self) -> Path:
        """Where images are staged when the installer does not take them in place."""
        return self.download_dir or self.state_dir / "downloads"

    @property
    def backoff_cap(self) -> float:
        """Longest wait between cycles while backing off, in seconds."""
        return self.max_backoff or self.poll_interval * self.limits.max_backoff_factor

    @property
    def base_url(self) -> str:
        """The server URL without a trailing slash."""
        return self.server_url.rstrip("/")

    @classmethod
    def load(cls, path: Path | str) -> AgentConfig:
        """Read and validate ``agent.toml``.

        Every error names the file once, then the section and key at fault;
        an unknown section or key (a typo such as ``kidn``) is an error that
        names the closest valid one.

        Raises:
            NotFoundError: the file does not exist.
            InputError: it is not TOML, a section or key is unknown, or a field
                is missing or invalid.
        """
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFoundError(f"agent config {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read agent config {path}: {e}") from e
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"agent config {path} is not valid TOML: {e}") from e
        try:
            return cls._from_doc(path, doc)
        except InputError as e:
            raise InputError(f"agent config {path}: {e}") from None

    @classmethod
    def _from_doc(cls, path: Path, doc: Mapping[str, Any]) -> AgentConfig:
        base = path.resolve().parent
        reader = _Reader(doc)
        reader.check_names()
        ca = reader.string("server", "ca_bundle", "")
        metadata_dir = reader.string("paths", "metadata_dir", "")
        download_dir = reader.string("paths", "download_dir", "")
        window = reader.string("policy", "maintenance_window", "").strip()
        min_version = reader.string("policy", "min_version", "").strip()
        return cls(
            device_id=reader.string("device", "id"),
            hardware_id=reader.string("device", "hardware_id"),
            tags=tuple(reader.string_list("device", "tags", [])),
            key_path=base / reader.string("device", "key", "device.key"),
            public_key_path=base / reader.string("device", "public_key", "device.pub"),
            server_url=reader.string("server", "url"),
            trusted_root=base / reader.string("server", "trusted_root", "root.json"),
            ca_bundle=(base / ca) if ca else None,
            state_dir=base / reader.string("paths", "state_dir", "state"),
            slots_dir=base / reader.string("paths", "slots_dir", "slots"),
            poll_interval=reader.duration("poll", "interval", 300),
            poll_jitter=reader.number("poll", "jitter", 0.2),
            installer_kind=reader.string("installer", "kind", "ab-simulator"),
            installer_command=reader.string("installer", "command", ""),
            health_command=reader.string("health", "command", ""),
            health_deadline=reader.duration("health", "deadline", 60),
            max_boot_attempts=reader.integer("health", "max_boot_attempts", 3),
            metadata_dir=(base / metadata_dir) if metadata_dir else None,
            download_dir=(base / download_dir) if download_dir else None,
            max_backoff=reader.duration("poll", "max_backoff", 0),
            rate_limit=reader.size("download", "rate_limit", 0),
            data_budget=reader.size("download", "data_budget", 0),
            budget_period=reader.duration("download", "budget_period", 30 * 86400),
            progress=reader.string("download", "progress", "auto"),
            progress_step=reader.integer("download", "progress_step", 25),
            heartbeat_interval=reader.duration("download", "heartbeat_interval", 60),
            maintenance_window=window or None,
            min_version=min_version or None,
        )


def _check_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InputError(f"server.url {url!r} is not an http:// or https:// URL")
    if parsed.query or parsed.fragment:
        raise InputError(f"server.url {url!r} must not have a query or fragment")


_MISSING: Any = object()


class _Reader:
    """Typed access to the parsed TOML, with errors naming ``[section] field`` (not the file)."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self._doc = doc

    def check_names(self) -> None:
        """Refuse any section or key that ``SCHEMA`` does not list, naming the closest."""
        for section, table in self._doc.items():
            if section not in SCHEMA:
                if not isinstance(table, dict):
                    raise InputError(
                        f"unknown key {section!r} outside any section{closest(section, SCHEMA)}"
                    )
                raise InputError(f"unknown section [{section}]{closest(section, SCHEMA, '[{}]')}")
            if not isinstance(table, dict):
                raise InputError(f"[{section}] must be a table")
            for name in table:
                if name not in SCHEMA[section]:
                    raise InputError(
                        f"unknown key [{section}] {name}{closest(name, SCHEMA[section])}"
                    )

    def _get(self, section: str, name: str, default: Any) -> Any:
        table = self._doc.get(section, {})
        if not isinstance(table, dict):
            raise InputError(f"[{section}] must be a table")
        if name not in table:
            if default is _MISSING:
                raise InputError(f"[{section}] {name} is missing")
            return default
        return table[name]

    def _bad(self, section: str, name: str, what: str) -> InputError:
        return InputError(f"[{section}] {name} must be {what}")

    def duration(self, section: str, name: str, default: float) -> float:
        value = self._get(section, name, default)
        if not isinstance(value, int | float | str):
            raise self._bad(section, name, "a duration such as 30, '10s', '5m' or '1h'")
        return parse_duration(value, f"[{section}] {name}", DURATION_BOUNDS[f"{section}.{name}"])

    def string(self, section: str, name: str, default: Any = _MISSING) -> str:
        value = self._get(section, name, default)
        if not isinstance(value, str):
            raise self._bad(section, name, "a string")
        return value

    def string_list(self, section: str, name: str, default: list[str]) -> list[str]:
        value = self._get(section, name, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(section, name, "a list of strings")
        return value

    def number(self, section: str, name: str, default: float) -> float:
        value = self._get(section, name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(section, name, "a number")
        return float(value)

    def size(self, section: str, name: str, default: int) -> int:
        value = self._get(section, name, default)
        if not isinstance(value, int | float | str):
            raise self._bad(section, name, "a byte count such as 1048576 or '1 MiB'")
        return parse_size(value, f"[{section}] {name}")

    def integer(self, section: str, name: str, default: int) -> int:
        value = self._get(section, name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(section, name, "an integer")
        return value


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string, every character that needs it escaped."""
    out = ['"']
    for char in value:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _toml_number(value: float) -> str:
    if not math.isfinite(value):
        raise InputError(f"{value} is not a finite number")
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def render_agent_config(
    *,
    device_id: str,
    hardware_id: str,
    server_url: str,
    tags: Iterable[str] = (),
    key: str = "device.key",
    public_key: str = "device.pub",
    trusted_root: str = "root.json",
    ca_bundle: str = "",
    state_dir: str = "state",
    slots_dir: str = "slots",
    poll_interval: float = 300,
    poll_jitter: float = 0.2,
    installer_kind: str = "ab-simulator",
    installer_command: str = "",
    health_command: str = "",
    health_deadline: float = 60,
    max_boot_attempts: int = 3,
    metadata_dir: str = "",
    download_dir: str = "",
    max_backoff: float = 0,
    rate_limit: int = 0,
    data_budget: int = 0,
    budget_period: float = 30 * 86400,
    progress: str = "auto",
    progress_step: int = 25,
    heartbeat_interval: float = 60,
    maintenance_window: str = "",
    min_version: str = "",
) -> str:
    """Render an ``agent.toml`` that :meth:`AgentConfig.load` accepts.

    Paths are written as given; relative ones are later resolved against the
    directory the file is written to.

    Raises:
        InputError: a value would not load (bad id, tag, URL, installer, number).
    """
    tag_list = list(tags)
    # Validate with the same rules load() applies, so a rendered file always loads.
    AgentConfig(
        device_id=device_id,
        hardware_id=hardware_id,
        server_url=server_url,
        tags=tuple(tag_list),
        key_path=Path(key),
        public_key_path=Path(public_key),
        trusted_root=Path(trusted_root),
        state_dir=Path(state_dir),
        slots_dir=Path(slots_dir),
        poll_interval=float(poll_interval),
        poll_jitter=float(poll_jitter),
        installer_kind=installer_kind,
        installer_command=installer_command,
        health_command=health_command,
        health_deadline=float(health_deadline),
        max_boot_attempts=max_boot_attempts,
        max_backoff=float(max_backoff),
        rate_limit=int(rate_limit),
        data_budget=int(data_budget),
        budget_period=float(budget_period),
        progress=progress,
        progress_step=int(progress_step),
        heartbeat_interval=float(heartbeat_interval),
        maintenance_window=maintenance_window or None,
        min_version=min_version or None,
    )
    for name, value in (
        ("key", key),
        ("public_key", public_key),
        ("trusted_root", trusted_root),
        ("state_dir", state_dir),
        ("slots_dir", slots_dir),
    ):
        if not value:
            raise InputError(f"{name} must not be empty")
    s = toml_string
    lines = [
        "# tufota device agent configuration; relative paths are relative to this file.",
        "[device]",
        f"id = {s(device_id)}",
        f"hardware_id = {s(hardware_id)}",
        f"tags = [{', '.join(s(t) for t in tag_list)}]",
        f"key = {s(key)}",
        f"public_key = {s(public_key)}",
        "",
        "[server]",
        f"url = {s(server_url)}",
        f"trusted_root = {s(trusted_root)}",
        f"ca_bundle = {s(ca_bundle)}",
        "",
        "[paths]",
        f"state_dir = {s(state_dir)}",
        f"slots_dir = {s(slots_dir)}",
        f"metadata_dir = {s(metadata_dir)}  # empty: state_dir/metadata",
        f"download_dir = {s(download_dir)}  # empty: state_dir/downloads",
        "",
        "[poll]",
        f"interval = {_toml_number(poll_interval)}",
        f"jitter = {_toml_number(poll_jitter)}",
        f"max_backoff = {_toml_number(max_backoff)}  # seconds; 0: 8 x interval",
        "",
        "[download]",
        f"rate_limit = {int(rate_limit)}  # bytes/s; 0: no cap",
        f"data_budget = {int(data_budget)}  # bytes per budget_period; 0: no budget",
        f"budget_period = {_toml_number(budget_period)}  # seconds",
        f"progress = {s(progress)}  # auto: a progress bar on a terminal",
        f"progress_step = {int(progress_step)}  # percent between progress reports; 0: none",
        f"heartbeat_interval = {_toml_number(heartbeat_interval)}  # seconds between reports "
        "while downloading",
        "",
        "[installer]",
        f"kind = {s(installer_kind)}",
        f"command = {s(installer_command)}",
        "",
        "[health]",
        f"command = {s(health_command)}",
        f"deadline = {_toml_number(health_deadline)}",
        f"max_boot_attempts = {int(max_boot_attempts)}",
        "",
        "[policy]  # the device's own limits; a signed rollout document cannot widen them",
        f"maintenance_window = {s(maintenance_window)}  # 'Sat 02:00-04:00 UTC'; empty: any time",
        f"min_version = {s(min_version)}  # never install an older release; empty: no floor",
        "",
    ]
    return "\n".join(lines)
