"""Installers: put a verified image into the inactive slot, boot it, commit or roll back.

``Installer`` is the interface the orchestrator drives; ``ABSimulator`` is a
file-backed A/B slot simulator with the semantics of a real bootloader's
boot-control block, and ``CommandInstaller`` hands the image to an operator
command (e.g. ``rauc install {file}``).

A/B simulator layout (``slots_dir``)::

    boot.json      boot control: boot order, active, pending, booted, boot counter,
                   per slot {version, sha256, good}
    a/image.bin    slot A image
    b/image.bin    slot B image

Invariants (A/B simulator):
* The active (committed) slot is never written: ``install`` writes only the
  other slot, so a bootable, known-good image exists at every instant.
* Every write is atomic (``_fs``). ``boot.json`` names a slot as pending only
  after that slot's image is complete and its SHA-256 checked, so a crash
  during ``install`` leaves the previous boot order untouched.
* A pending slot is tried at most ``max_attempts`` times: the counter is
  persisted *before* each try, so a crash or hang during a trial boot still
  counts, and the next boot after the limit falls back to the active slot.
* ``install`` of the version and hash that are already pending is a no-op.
* Downloads go straight into the inactive slot (``download_path``): boot
  control forgets that slot *before* the first byte is written, the verified
  image is renamed to ``<slot>/image.bin`` by the downloader, and ``install``
  then only points boot control at it. No second copy of the image is made.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent._config import AgentConfig
from device_agent._errors import HEALTH_CHECK_FAILED, INSTALL_FAILED, coded
from device_agent._fs import (
    atomic_copy,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    sha256_file,
)
from tufota_core import ConflictError, InputError, InstallError, RepositoryError, Version

logger = logging.getLogger(__name__)

SLOTS = ("a", "b")
BOOT_SCHEMA = "tufota.ab-simulator/1"
IMAGE_NAME = "image.bin"


@dataclass(frozen=True)
class BootResult:
    """What a (simulated) boot brought up.

    Attributes:
        version: The version now running (None: unknown factory image).
        trial: True when the running image is pending and still needs a commit.
        fell_back: True when the pending image used up its boot attempts and the
            previous, committed image booted instead.
        attempt: Which try of the pending image this is (0 when not a trial).
    """

    version: str | None
    trial: bool
    fell_back: bool = False
    attempt: int = 0


class Installer(ABC):
    """Writes images and drives boot control. Implementations persist their own state."""

    @abstractmethod
    def installed_version(self) -> str | None:
        """The committed version: what boots when no update is pending."""

    @abstractmethod
    def pending_version(self) -> str | None:
        """The installed but not yet committed version, or None."""

    def download_path(self, sha256: str, staging_dir: Path) -> Path:
        """Where the verified image with ``sha256`` should be downloaded to.

        The default is a staging file under ``staging_dir``; an installer that
        can take the image in place (the A/B simulator: the inactive slot)
        returns that path and makes sure nothing boots it until ``install``.
        """
        return staging_dir / f"{sha256}.bin"

    def active_image(self) -> Path | None:
        """The committed image's file, readable for a delta to start from; None if unknown.

        The default (an installer that cannot read its active slot) never uses deltas.
        """
        return None

    @abstractmethod
    def install(self, image: Path, version: str, sha256: str) -> None:
        """Write the verified ``image`` to the inactive slot and mark it to try-boot.

        Raises:
            InstallError: the image could not be written or checked; the
                committed image is unaffected.
        """

    @abstractmethod
    def boot(self, max_attempts: int) -> BootResult:
        """Simulate (or record) the reboot that follows an install."""

    @abstractmethod
    def commit(self) -> None:
        """Mark the running pending image good; it becomes the installed version."""

    @abstractmethod
    def rollback(self) -> None:
        """Abandon the pending image; the committed image boots again."""

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """A JSON-able description for ``tufota-agent status``."""


# -- A/B simulator -----------------------------------------------------------


def _empty_slot() -> dict[str, Any]:
    return {"version": None, "sha256": None, "good": False}


def init_slots(
    slots_dir: Path | str,
    factory_version: str | None,
    image: bytes = b"factory",
    *,
    overwrite: bool = False,
) -> None:
    """Create the A/B simulator: slot A holds the factory ``image`` at ``factory_version``.

    Args:
        slots_dir: Directory to create the slots in.
        factory_version: Version of the factory image; None means unknown, so
            any released version counts as newer.
        image: The factory image bytes.
        overwrite: Replace existing slots instead of refusing.

    Raises:
        InputError: ``factory_version`` is not a semantic version.
        ConflictError: the slots already exist and ``overwrite`` is false.
    """
    slots = Path(slots_dir)
    if factory_version is not None:
        Version.parse(factory_version)
    boot_file = slots / "boot.json"
    if boot_file.exists() and not overwrite:
        raise ConflictError(f"{boot_file} already exists; the A/B slots are initialised")
    for slot in SLOTS:
        (slots / slot).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(slots / "a" / IMAGE_NAME, image)
    control = {
        "schema": BOOT_SCHEMA,
        "boot_order": ["a"],
        "active": "a",
        "pending": None,
        "booted": "a",
        "boot_count": 0,
        "slots": {
            "a": {
                "version": factory_version,
                "sha256": hashlib.sha256(image).hexdigest(),
                "good": True,
            },
            "b": _empty_slot(),
        },
    }
    atomic_write_json(boot_file, control)
    logger.debug("initialised A/B slots in %s (factory version %s)", slots, factory_version)


class ABSimulator(Installer):
    """A/B slots on the file system, with try-boot, boot counter and fallback."""

    def __init__(self, slots_dir: Path) -> None:
        self._dir = slots_dir
        self._file = slots_dir / "boot.json"

    def _load(self) -> dict[str, Any]:
        try:
            control = read_json(self._file)
        except FileNotFoundError:
            raise InputError(
                f"{self._file} does not exist: initialise the A/B slots (tufota device provision)"
            ) from None
        if (
            not isinstance(control, dict)
            or control.get("schema") != BOOT_SCHEMA
            or control.get("active") not in SLOTS
            or control.get("pending") not in (*SLOTS, None)
            or not isinstance(control.get("slots"), dict)
        ):
            raise RepositoryError(f"{self._file} is not an A/B boot-control file")
        return control

    def _save(self, control: dict[str, Any]) -> None:
        pending = control["pending"]
        control["boot_order"] = [pending, control["active"]] if pending else [control["active"]]
        atomic_write_json(self._file, control)

    def installed_version(self) -> str | None:
        control = self._load()
        version: str | None = control["slots"][control["active"]]["version"]
        return version

    def active_image(self) -> Path | None:
        control = self._load()
        if control["slots"][control["active"]].get("version") is None:
            return None
        active: str = control["active"]
        return self._dir / active / IMAGE_NAME

    def pending_version(self) -> str | None:
        control = self._load()
        if control["pending"] is None:
            return None
        version: str | None = control["slots"][control["pending"]]["version"]
        return version

    def download_path(self, sha256: str, staging_dir: Path) -> Path:
        control = self._load()
        if control["pending"] is not None:
            return super().download_path(sha256, staging_dir)
        target = "b" if control["active"] == "a" else "a"
        if control["slots"].get(target) != _empty_slot():
            # Forget the inactive slot before its image file is replaced.
            control["slots"][target] = _empty_slot()
            self._save(control)
        return self._dir / target / IMAGE_NAME

    def install(self, image: Path, version: str, sha256: str) -> None:
        control = self._load()
        active = control["active"]
        target = "b" if active == "a" else "a"
        meta = control["slots"].get(target, {})
        image_path = self._dir / target / IMAGE_NAME
        if (
            control["pending"] == target
            and meta.get("version") == version
            and meta.get("sha256") == sha256
        ):
            logger.info("slot %s already holds pending %s; not installing again", target, version)
            return
        if image.resolve() == image_path.resolve():
            # Downloaded in place and verified by the downloader: point boot control at it.
            if control["slots"].get(target) != _empty_slot() or control["pending"] is not None:
                raise coded(
                    InstallError(f"slot {target} was not prepared for an in-place image"),
                    INSTALL_FAILED,
                )
            control["slots"][target] = {"version": version, "sha256": sha256, "good": False}
            control["pending"] = target
            control["boot_count"] = 0
            self._save(control)
            logger.info("installed %s into slot %s (pending try-boot)", version, target)
            return
        # 1. Forget the slot's old content before overwriting it.
        control["pending"] = None
        control["boot_count"] = 0
        control["slots"][target] = _empty_slot()
        self._save(control)
        # 2. Write and check the image.
        try:
            written = atomic_copy(image, image_path)
        except OSError as e:
            raise coded(InstallError(f"cannot write slot {target}: {e}"), INSTALL_FAILED) from e
        if written != sha256:
            raise coded(
                InstallError(f"slot {target} image hash {written[:12]} is not {sha256[:12]}"),
                INSTALL_FAILED,
            )
        # 3. Only now point boot control at it.
        control["slots"][target] = {"version": version, "sha256": sha256, "good": False}
        control["pending"] = target
        self._save(control)
        logger.info("installed %s into slot %s (pending try-boot)", version, target)

    def boot(self, max_attempts: int) -> BootResult:
        control = self._load()
        pending = control["pending"]
        if pending is None:
            control["booted"] = control["active"]
            self._save(control)
            return BootResult(version=self.installed_version(), trial=False)
        attempt = int(control.get("boot_count", 0)) + 1
        if attempt > max_attempts:
            logger.warning("slot %s failed %d boot attempts; falling back", pending, max_attempts)
            control["slots"][pending]["good"] = False
            control["pending"] = None
            control["boot_count"] = 0
            control["booted"] = control["active"]
            self._save(control)
            version = control["slots"][control["active"]]["version"]
            return BootResult(version=version, trial=False, fell_back=True)
        control["boot_count"] = attempt
        control["booted"] = pending
        self._save(control)
        image = self._dir / pending / IMAGE_NAME
        expected = control["slots"][pending]["sha256"]
        if not image.is_file() or sha256_file(image) != expected:
            # A real bootloader would fail to start a corrupt image and retry.
            raise coded(InstallError(f"slot {pending} image is corrupt"), INSTALL_FAILED)
        return BootResult(version=control["slots"][pending]["version"], trial=True, attempt=attempt)

    def commit(self) -> None:
        control = self._load()
        pending = control["pending"]
        if pending is None or control.get("booted") != pending:
            raise ConflictError("no booted pending slot to commit")
        control["slots"][pending]["good"] = True
        control["active"] = pending
        control["pending"] = None
        control["boot_count"] = 0
        self._save(control)
        logger.info("committed slot %s (%s)", pending, control["slots"][pending]["version"])

    def rollback(self) -> None:
        control = self._load()
        pending = control["pending"]
        if pending is not None:
            control["slots"][pending]["good"] = False
        control["pending"] = None
        control["boot_count"] = 0
        control["booted"] = control["active"]
        self._save(control)
        logger.info("rolled back to slot %s", control["active"])

    def status(self) -> dict[str, Any]:
        control = self._load()
        return {"kind": "ab-simulator", "slots_dir": str(self._dir), **control}


# -- command installer -------------------------------------------------------


def _tail(data: bytes, limit: int) -> str:
    return data[-limit:].decode("utf-8", "replace").strip()


def run_command(
    command: str,
    *,
    substitutions: Mapping[str, str],
    env: Mapping[str, str],
    timeout: float,
    tail_bytes: int,
    error_code: str,
    what: str,
) -> None:
    """Run an operator command without a shell, substituting ``{name}`` in each argument.

    Raises:
        InstallError: the command is malformed, cannot start, times out or exits
            non-zero; ``code`` is ``error_code`` and the message ends with the
            stderr tail.
    """
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise coded(InstallError(f"{what} command is malformed: {e}"), error_code) from e
    if not argv:
        raise coded(InstallError(f"{what} command is empty"), error_code)
    for name, value in substitutions.items():
        argv = [arg.replace("{" + name + "}", value) for arg in argv]
    logger.debug("running %s command %s", what, argv)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **env},
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise coded(
            InstallError(f"{what} command timed out after {timeout:g} s"), error_code
        ) from e
    except OSError as e:
        raise coded(InstallError(f"{what} command cannot start: {e}"), error_code) from e
    if done.returncode != 0:
        tail = _tail(done.stderr, tail_bytes)
        raise coded(
            InstallError(
                f"{what} command exited {done.returncode}" + (f": {tail}" if tail else "")
            ),
            error_code,
        )


class CommandInstaller(Installer):
    """Hands the image to an operator command; the system's own A/B mechanism boots it.

    This installer only records versions (``state_file``): the real slot
    switching, boot counting and fallback belong to the command's tooling
    (RAUC, SWUpdate, Mender's bootloader integration).
    """

    def __init__(
        self, command: str, state_file: Path, *, timeout: float = 3600.0, tail_bytes: int = 800
    ) -> None:
        self._command = command
        self._file = state_file
        self._timeout = timeout
        self._tail = tail_bytes

    def _load(self) -> dict[str, Any]:
        try:
            data = read_json(self._file)
        except FileNotFoundError:
            return {"installed_version": None, "pending_version": None, "boot_count": 0}
        if not isinstance(data, dict):
            raise RepositoryError(f"{self._file} is not a command-installer state file")
        return data

    def installed_version(self) -> str | None:
        version: str | None = self._load().get("installed_version")
        return version

    def pending_version(self) -> str | None:
        version: str | None = self._load().get("pending_version")
        return version

    def install(self, image: Path, version: str, sha256: str) -> None:
        run_command(
            self._command,
            substitutions={"file": str(image)},
            env={"TUFOTA_VERSION": version, "TUFOTA_SHA256": sha256},
            timeout=self._timeout,
            tail_bytes=self._tail,
            error_code=INSTALL_FAILED,
            what="install",
        )
        data = self._load()
        data.update(pending_version=version, boot_count=0)
        atomic_write_json(self._file, data)
        logger.info("install command accepted %s", version)

    def boot(self, max_attempts: int) -> BootResult:
        data = self._load()
        pending = data.get("pending_version")
        if pending is None:
            return BootResult(version=data.get("installed_version"), trial=False)
        attempt = int(data.get("boot_count", 0)) + 1
        if attempt > max_attempts:
            data.update(pending_version=None, boot_count=0)
            atomic_write_json(self._file, data)
            return BootResult(version=data.get("installed_version"), trial=False, fell_back=True)
        data["boot_count"] = attempt
        atomic_write_json(self._file, data)
        return BootResult(version=pending, trial=True, attempt=attempt)

    def commit(self) -> None:
        data = self._load()
        if data.get("pending_version") is None:
            raise ConflictError("no pending version to commit")
        data.update(installed_version=data["pending_version"], pending_version=None, boot_count=0)
        atomic_write_json(self._file, data)

    def rollback(self) -> None:
        data = self._load()
        data.update(pending_version=None, boot_count=0)
        atomic_write_json(self._file, data)

    def status(self) -> dict[str, Any]:
        return {"kind": "command", "command": self._command, **self._load()}


def make_installer(config: AgentConfig) -> Installer:
    """The installer ``config`` selects."""
    if config.installer_kind == "command":
        return CommandInstaller(
            config.installer_command,
            config.state_dir / "command-installer.json",
            tail_bytes=config.limits.output_tail_bytes,
        )
    return ABSimulator(config.slots_dir)


def run_health_check(
    config: AgentConfig, version: str | None, slot_info: Mapping[str, str]
) -> None:
    """Run the configured health command (none configured: healthy).

    The command sees ``TUFOTA_VERSION`` and the ``slot_info`` items as environment.

    Raises:
        InstallError: code ``health_check_failed``; non-zero exit, timeout or no start.
    """
    if not config.health_command.strip():
        return
    run_command(
        config.health_command,
        substitutions={},
        env={"TUFOTA_VERSION": version or "", **slot_info},
        timeout=config.health_deadline,
        tail_bytes=config.limits.output_tail_bytes,
        error_code=HEALTH_CHECK_FAILED,
        what="health check",
    )
