"""``tufota simulate``: many simulated devices, the real agent code, real HTTP, one process.

``Simulation`` provisions N devices of one hardware id (an ed25519 identity
each, A/B slots on disk, registered as accepted in one tracker transaction)
and runs ``device_agent.Agent.run_once`` for each on its own jittered poll
schedule, ``workers`` at a time, against a running server, until the newest
rollout of that hardware id completes, pauses or aborts (or the timeout).

Faults, chosen per device with a seeded random generator so runs repeat:

* ``fail_percent``: the device's installer fails every install of the
  ``fail_versions`` (all versions when empty): the agent reports ``failed``.
* ``stall_percent``: the device's firmware transfer breaks and the device is
  never run again, like one that lost power mid-download: its last report
  says ``downloading`` (flushed at the end of that cycle) and nothing follows.

``speedup`` divides the devices' poll interval and reboot time; it cannot
speed up the server's clock, so start the rollout with soak and stall times
that suit the simulation (``--soak 0s --stall-timeout 30s``).

Invariants: devices talk to the server only over HTTP with signed reports,
exactly as deployed agents do; the only shared state is one HTTP connection
pool and one copy of the trusted root. Nothing is written outside the
workspace and the tracker the devices are registered in.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata

from device_agent import ABSimulator, Agent, AgentConfig, CycleResult, Installer, init_slots
from repo_server import Repository
from staging import NewDevice, RolloutController, SqlTrackerStore
from tufota_cli._common import print_json, table
from tufota_cli.repo_cmds import open_repository
from tufota_core import (
    ConflictError,
    InputError,
    InstallError,
    NotFoundError,
    TransportError,
    TufotaError,
    Version,
    check_device_id,
    utcnow,
)

logger = logging.getLogger(__name__)

FINAL_STATES = ("completed", "paused", "aborted")
_AT_REST = ("idle", "refused", "failed", "rolled_back", "succeeded")


@dataclass(frozen=True)
class SimOptions:
    """What to simulate.

    Attributes:
        hardware_id: the devices' hardware id.
        devices: how many.
        prefix: device ids are ``<prefix>-00001`` ...; empty means
            ``sim-<hardware_id>``, so simulations of two hardware lines in one
            tracker never reuse a device id.
        factory_version: the version every device starts on (None: nothing installed).
        canaries: the first this many devices carry the tag ``canary``.
        fail_percent: share of devices whose installs fail (0-100).
        fail_devices: devices whose installs fail, besides ``fail_percent``.
        fail_versions: versions whose installs fail (empty: every version).
        stall_percent: share of devices that die when they start downloading.
        poll_interval: the devices' simulated poll interval, seconds.
        reboot_seconds: simulated reboot time after an install, seconds.
        speedup: divides ``poll_interval`` and ``reboot_seconds``.
        workers: agent cycles run at once.
        seed: picks the faulty devices.
    """

    hardware_id: str
    devices: int
    prefix: str = ""
    factory_version: str | None = None
    canaries: int = 0
    fail_percent: float = 0.0
    fail_devices: frozenset[str] = frozenset()
    fail_versions: frozenset[str] = frozenset()
    stall_percent: float = 0.0
    poll_interval: float = 30.0
    reboot_seconds: float = 10.0
    speedup: float = 1.0
    workers: int = 8
    seed: int = 1

    @property
    def device_prefix(self) -> str:
        """The prefix of the simulated device ids (``prefix`` or ``sim-<hardware_id>``)."""
        return self.prefix or f"sim-{self.hardware_id}"

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= 1_000_000:
            raise InputError("--devices must be between 1 and 1000000")
        for name in ("fail_percent", "stall_percent"):
            if not 0.0 <= getattr(self, name) <= 100.0:
                raise InputError(f"--{name.replace('_', '-')} must be between 0 and 100")
        if not self.speedup > 0 or not self.poll_interval > 0 or self.reboot_seconds < 0:
            raise InputError("--speedup and --poll-interval must be positive")
        if not 1 <= self.workers <= 256:
            raise InputError("--workers must be between 1 and 256")
        if not 0 <= self.canaries <= self.devices:
            raise InputError("--canaries must be between 0 and --devices")
        check_device_id(f"{self.device_prefix}-00001")
        if self.factory_version is not None:
            Version.parse(self.factory_version)


class _FaultyInstaller(Installer):
    """An A/B simulator whose installs of some versions fail (the injected fault)."""

    def __init__(self, inner: ABSimulator, versions: frozenset[str]) -> None:
        self._inner = inner
        self._versions = versions

    def installed_version(self) -> str | None:
        return self._inner.installed_version()

    def pending_version(self) -> str | None:
        return self._inner.pending_version()

    def install(self, image: Path, version: str, sha256: str) -> None:
        if not self._versions or version in self._versions:
            raise InstallError(f"injected install failure for {version}")
        self._inner.install(image, version, sha256)

    def boot(self, max_attempts: int) -> Any:
        return self._inner.boot(max_attempts)

    def commit(self) -> None:
        self._inner.commit()

    def rollback(self) -> None:
        self._inner.rollback()

    def status(self) -> dict[str, Any]:
        return {**self._inner.status(), "injected_failure": sorted(self._versions) or "all"}


class _DeviceSession(requests.Session):
    """One device's view of the shared connection pool; can die mid-download."""

    def __init__(self, shared: requests.Session, stall: bool) -> None:
        super().__init__()
        self._shared = shared
        self.stall = stall
        self.dead = False

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        # The firmware transfer breaks; the cycle still flushes the "downloading"
        # report it queued, and then the device is never run again (power loss).
        if self.stall and "/targets/firmware/" in str(url):
            self.dead = True
            raise requests.ConnectionError("simulated power loss mid-download")
        return self._shared.request(method, url, *args, **kwargs)

    def close(self) -> None:  # the pool is shared
        pass


@dataclass
class SimDevice:
    """One simulated device."""

    device_id: str
    agent: Agent
    session: _DeviceSession
    fails: bool
    cycles: int = 0
    last: CycleResult | None = None
    error: str = ""


@dataclass
class SimResult:
    """What a simulation run saw."""

    rollout_id: str | None
    rollout_state: str | None
    seconds: float
    cycles: int
    versions: dict[str, int]
    stalled: int
    failing: int
    errors: list[str] = field(default_factory=list)
    timed_out: bool = False
    blocked: bool = False
    gate: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "rollout_state": self.rollout_state,
            "seconds": round(self.seconds, 2),
            "cycles": self.cycles,
            "cycles_per_second": round(self.cycles / self.seconds, 1) if self.seconds else 0,
            "versions": self.versions,
            "stalled_devices": self.stalled,
            "failing_devices": self.failing,
            "errors": self.errors[:20],
            "timed_out": self.timed_out,
            "blocked_by_stalled": self.blocked,
            "gate": self.gate,
        }


class Simulation:
    """Provision and run simulated devices against a server.

    Args:
        repo: the repository (its trusted root, and its tracker to register in),
            or None for a remote repository: devices are then registered through
            the server's API with ``token`` (operator role) and trust ``trusted_root``.
        server_url: where devices poll and report.
        workspace: a directory for the devices' keys, slots and state.
        options: what to simulate.
        token: an operator API token (remote repositories).
        trusted_root: root metadata the devices start from (remote repositories).
    """

    def __init__(
        self,
        repo: Repository | None,
        server_url: str,
        workspace: Path,
        options: SimOptions,
        *,
        token: str | None = None,
        trusted_root: bytes | None = None,
    ) -> None:
        if repo is None and (token is None or trusted_root is None):
            raise InputError("a remote simulation needs an operator token and a trusted root")
        self.repo = repo
        self._store: SqlTrackerStore | None = None
        self._trusted_root = trusted_root
        # Operator calls use their own session so the token never rides on device traffic.
        self._admin = requests.Session()
        if token:
            self._admin.headers["Authorization"] = f"Bearer {token}"
        self.server_url = server_url.rstrip("/")
        self.workspace = workspace
        self.options = options
        self.devices: list[SimDevice] = []
        self._shared = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=options.workers * 2
        )
        self._shared.mount("http://", adapter)
        self._shared.mount("https://", adapter)
        self._shared.headers["User-Agent"] = "tufota-simulate/1"

    def provision(self) -> list[SimDevice]:
        """Create the devices' identities and slots; register them as accepted.

        Raises:
            ConflictError: a device id is registered already.
        """
        opts = self.options
        rng = random.Random(opts.seed)  # noqa: S311 - picks simulated faults, not secrets
        self.workspace.mkdir(parents=True, exist_ok=True)
        root = self.workspace / "root.json"
        root.write_bytes(
            self.repo.trusted_root() if self.repo is not None else self._trusted_root or b""
        )
        ids = [f"{opts.device_prefix}-{n + 1:05d}" for n in range(opts.devices)]
        failing = set(rng.sample(ids, round(opts.devices * opts.fail_percent / 100)))
        failing |= set(opts.fail_devices) & set(ids)
        healthy = [d for d in ids if d not in failing]
        stalling = set(
            rng.sample(healthy, min(len(healthy), round(opts.devices * opts.stall_percent / 100)))
        )
        new: list[NewDevice] = []
        for n, device_id in enumerate(ids):
            signer = CryptoSigner.generate_ed25519()
            public = {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}
            tags = ("canary",) if n < opts.canaries else ()
            home = self.workspace / device_id
            slots = home / "slots"
            init_slots(slots, opts.factory_version)
            config = AgentConfig(
                device_id=device_id,
                hardware_id=opts.hardware_id,
                server_url=self.server_url,
                key_path=home / "device.key",
                public_key_path=home / "device.pub",
                trusted_root=root,
                state_dir=home / "state",
                slots_dir=slots,
                tags=tags,
                poll_interval=max(1.0, opts.poll_interval),
                progress="never",  # no terminal bars; progress reports still go out
            )
            installer: Installer = ABSimulator(slots)
            if device_id in failing:
                installer = _FaultyInstaller(ABSimulator(slots), opts.fail_versions)
            session = _DeviceSession(self._shared, device_id in stalling)
            agent = Agent(config, installer=installer, signer=signer, session=session)
            self.devices.append(SimDevice(device_id, agent, session, device_id in failing))
            new.append(
                NewDevice(
                    device_id,
                    opts.hardware_id,
                    public,
                    tags=tags,
                    status="accepted",
                    installed_version=opts.factory_version,
                )
            )
        if self.repo is not None:
            with self.repo.open_tracker() as store:
                store.register_devices(new, at=utcnow())
        else:
            for device in new:
                self._register_remotely(device)
        logger.info(
            "provisioned %d simulated devices (%d failing, %d stalling)",
            len(new),
            len(failing),
            len(stalling),
        )
        return self.devices

    def _register_remotely(self, device: NewDevice) -> None:
        """Register and accept one device through the operator API.

        Raises:
            ConflictError, InputError: the server refused (its message is kept).
            TransportError: the server cannot be reached.
        """
        body = {
            "device_id": device.device_id,
            "hardware_id": device.hardware_id,
            "public_key": dict(device.public_key),
            "tags": list(device.tags),
        }
        base = f"{self.server_url}/api/v1/devices"
        for method, url, payload in (
            ("POST", base, body),
            ("POST", f"{base}/{device.device_id}/accept", {"reason": "simulated device"}),
        ):
            try:
                response = self._admin.request(method, url, json=payload, timeout=30)
            except requests.RequestException as e:
                raise TransportError(f"{method} {url}: {e}") from e
            if response.status_code >= 400:
                try:
                    message = response.json().get("message", response.text)
                except ValueError:
                    message = response.text
                error = ConflictError if response.status_code == 409 else InputError
                raise error(f"{method} {url}: {response.status_code} {message}")

    def rollout(self) -> dict[str, Any] | None:
        """The newest rollout of the hardware id, from the server's API (None: none yet)."""
        response = self._admin.get(f"{self.server_url}/api/v1/rollouts", timeout=30)
        response.raise_for_status()
        for rollout in response.json()["rollouts"]:
            if rollout["hardware_id"] == self.options.hardware_id:
                return rollout  # type: ignore[no-any-return]
        return None

    def run(
        self,
        timeout: float,
        *,
        rollout_id: str | None = None,
        on_round: Callable[[dict[str, Any] | None], None] | None = None,
        check_every: float = 0.5,
    ) -> SimResult:
        """Run the devices until the rollout ends (completed, paused, aborted) or ``timeout``.

        Args:
            timeout: seconds of wall time at most.
            rollout_id: the rollout to watch (default: the hardware id's newest).
            on_round: called with the rollout's status at every check.
            check_every: seconds between checks of the rollout.
        """
        opts = self.options
        rng = random.Random(opts.seed + 1)  # noqa: S311 - poll jitter
        interval = opts.poll_interval / opts.speedup
        reboot = opts.reboot_seconds / opts.speedup
        started = time.monotonic()
        deadline = started + timeout
        heap: list[tuple[float, int]] = [
            (started + rng.uniform(0, min(interval, 1.0)), i) for i in range(len(self.devices))
        ]
        heapq.heapify(heap)
        inflight: dict[Future[CycleResult], int] = {}
        errors: list[str] = []
        cycles = 0
        state: str | None = None
        rid = rollout_id
        next_check = started
        lock = threading.Lock()
        # Blocked: every live device is at rest, the rollout has not moved for
        # three poll intervals and some devices died; only an operator can end it.
        signature: tuple[Any, ...] | None = None
        still_since = started
        blocked = False
        gate = ""

        def cycle(index: int) -> CycleResult:
            return self.devices[index].agent.run_once()

        with ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="sim") as pool:
            while True:
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + check_every
                    status = self._watch(rid)
                    if on_round is not None:
                        on_round(status)
                    if status is not None:
                        rid = status["rollout_id"]
                        state = status["state"]
                        gate = str(status.get("gate", ""))
                        if state in FINAL_STATES:
                            break
                        total = status["total"]
                        now_sig = (
                            state,
                            status["current_wave"],
                            total["succeeded"],
                            total["failed"],
                            total["rolled_back"],
                            total["downloading"],
                            total["installed"],
                        )
                        if now_sig != signature or not self._at_rest():
                            signature, still_since = now_sig, now
                        elif now - still_since >= 3 * max(interval, reboot, 0.5):
                            blocked = True
                            break
                if now >= deadline:
                    break
                while heap and heap[0][0] <= now and len(inflight) < opts.workers * 2:
                    _, index = heapq.heappop(heap)
                    inflight[pool.submit(cycle, index)] = index
                wait_for = 0.05
                if heap:
                    wait_for = max(0.0, min(heap[0][0] - now, next_check - now, 0.2))
                if not inflight:
                    time.sleep(wait_for)
                    continue
                done, _ = wait(list(inflight), timeout=wait_for, return_when=FIRST_COMPLETED)
                for future in done:
                    index = inflight.pop(future)
                    device = self.devices[index]
                    with lock:
                        cycles += 1
                        device.cycles += 1
                    try:
                        result = future.result()
                    except TufotaError as e:
                        device.error = str(e)
                        errors.append(f"{device.device_id}: {e}")
                        continue
                    device.last = result
                    if device.session.dead:
                        continue  # a stalled device never comes back
                    delay = reboot if result.reboot_pending else interval * rng.uniform(0.8, 1.2)
                    heapq.heappush(heap, (time.monotonic() + delay, index))
            for future in list(inflight):
                future.cancel()
        seconds = time.monotonic() - started
        versions = Counter(d.agent.installer.installed_version() or "none" for d in self.devices)
        return SimResult(
            rollout_id=rid,
            rollout_state=state,
            seconds=seconds,
            cycles=cycles,
            versions=dict(sorted(versions.items())),
            stalled=sum(1 for d in self.devices if d.session.dead),
            failing=sum(1 for d in self.devices if d.fails),
            errors=errors,
            timed_out=state not in FINAL_STATES and not blocked,
            blocked=blocked,
            gate=gate,
        )

    def _at_rest(self) -> bool:
        """True when some devices died and every other one is idle, refused or failed."""
        if not any(d.session.dead for d in self.devices):
            return False
        for device in self.devices:
            if device.session.dead:
                continue
            if device.last is None or device.last.action not in _AT_REST:
                return False
        return True

    def _watch(self, rollout_id: str | None) -> dict[str, Any] | None:
        if self.repo is not None:
            # A local repository: read its tracker directly (no API token needed).
            return self._local_status(rollout_id)
        try:
            if rollout_id is None:
                return self.rollout()
            response = self._admin.get(  # reads need the operator's token too
                f"{self.server_url}/api/v1/rollouts/{rollout_id}", timeout=30
            )
            response.raise_for_status()
            return response.json()  # type: ignore[no-any-return]
        except requests.RequestException as e:
            logger.warning("cannot read the rollout from %s: %s", self.server_url, e)
            return None

    def _local_status(self, rollout_id: str | None) -> dict[str, Any] | None:
        assert self.repo is not None
        try:
            if self._store is None:  # one read connection for the whole run
                self._store = self.repo.open_tracker()
            store = self._store
            if rollout_id is None:
                newest = store.list_rollouts(self.options.hardware_id)
                if not newest:
                    return None
                rollout_id = newest[0].rollout_id
            return RolloutController(store, None).status(rollout_id).to_json()
        except TufotaError as e:
            logger.warning("cannot read the rollout from the tracker: %s", e)
            return None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        self._admin.close()
        for device in self.devices:
            device.agent.close()
        self._shared.close()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "simulate",
        help="run N simulated devices (the real agent, real HTTP) through a rollout",
        description="Provision N simulated devices (in --repo's tracker, or through the "
        "server's API with an operator --token for a remote repository) and run them "
        "with the real agent code against --server until the hardware id's rollout "
        "completes, pauses or aborts.",
    )
    p.add_argument("--server", required=True, help="the server's URL, e.g. http://127.0.0.1:8080")
    p.add_argument(
        "--repo",
        default=None,
        help="local repository (register devices in its tracker); without it the devices "
        "are registered through the server's API with --token",
    )
    p.add_argument("--state-dir", default=None, help="state directory of an s3:// --repo")
    p.add_argument(
        "--database",
        default=None,
        metavar="URL",
        help="with --repo: the tracker's PostgreSQL database (default $TUFOTA_DATABASE_URL)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="operator API token for a remote repository (default: $TUFOTA_TOKEN)",
    )
    p.add_argument(
        "--root",
        default=None,
        help="trusted root.json for a remote repository (default: the server's 1.root.json, "
        "trusted on first use)",
    )
    p.add_argument("--hardware", required=True)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument(
        "--prefix",
        default=None,
        help="device id prefix (default sim-HARDWARE, so simulations of two hardware "
        "lines never collide)",
    )
    p.add_argument("--factory-version", default=None, help="version the devices start on")
    p.add_argument("--canaries", type=int, default=0, help="tag the first N devices 'canary'")
    p.add_argument("--fail-percent", type=float, default=0.0, help="devices whose install fails")
    p.add_argument(
        "--fail-version",
        action="append",
        default=[],
        help="only installs of this version fail (repeatable; default: all)",
    )
    p.add_argument("--stall-percent", type=float, default=0.0, help="devices that die mid-download")
    p.add_argument("--poll-interval", type=float, default=30.0, help="simulated seconds")
    p.add_argument("--reboot-seconds", type=float, default=10.0, help="simulated seconds")
    p.add_argument("--speedup", type=float, default=1.0, help="divide simulated times by X")
    p.add_argument("--workers", type=int, default=8, help="agent cycles run at once")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after N seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workspace", default=None, help="device files (default: temporary)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    options = SimOptions(
        hardware_id=args.hardware,
        devices=args.devices,
        prefix=args.prefix or "",
        factory_version=args.factory_version,
        canaries=args.canaries,
        fail_percent=args.fail_percent,
        fail_versions=frozenset(args.fail_version),
        stall_percent=args.stall_percent,
        poll_interval=args.poll_interval,
        reboot_seconds=args.reboot_seconds,
        speedup=args.speedup,
        workers=args.workers,
        seed=args.seed,
    )
    repo: Repository | None = None
    token: str | None = None
    root: bytes | None = None
    if args.repo:
        repo = open_repository(args)
    else:
        token = args.token or os.environ.get("TUFOTA_TOKEN")
        if not token:
            raise InputError("without --repo, give an operator token with --token or TUFOTA_TOKEN")
        root = _trusted_root(args.server, args.root)
    workspace = Path(args.workspace or tempfile.mkdtemp(prefix="tufota-sim-"))
    if not args.json:
        logging.getLogger("device_agent").setLevel(logging.WARNING)
    sim = Simulation(repo, args.server, workspace, options, token=token, trusted_root=root)
    try:
        sim.provision()
        if not args.json:
            print(f"provisioned {options.devices} devices in {workspace}", flush=True)
        last: list[str] = []

        def show(status: dict[str, Any] | None) -> None:
            if args.json or status is None:
                return
            line = _progress_line(status)
            if not last or line != last[-1]:
                print(f"    {line}", flush=True)
                last.append(line)

        result = sim.run(args.timeout, on_round=show)
    finally:
        sim.close()
        if not args.workspace:
            shutil.rmtree(workspace, ignore_errors=True)
    if args.json:
        print_json(result.to_json())
    else:
        print(table(["version", "devices"], sorted(result.versions.items())))
        print(
            f"rollout {result.rollout_id} {result.rollout_state}; {result.cycles} agent cycles "
            f"in {result.seconds:.1f}s; {result.failing} failing, {result.stalled} stalled"
            + ("; TIMED OUT" if result.timed_out else "")
        )
        if result.blocked:
            print(
                f"the rollout waits for {result.stalled} stalled devices that will not come "
                f"back ({result.gate}); end it with 'tufota rollout complete "
                f"{result.rollout_id} --reason ...' (advance first if not at the last wave) "
                "or abort it"
            )
    return 0 if not result.timed_out and not result.blocked else 1


def _trusted_root(server: str, path: str | None) -> bytes:
    """Root metadata for remote devices: ``--root`` or the server's first root (trust on first use).

    Raises:
        NotFoundError: ``--root`` does not exist.
        TransportError: the server cannot be reached.
        InputError: the file or the answer is not root metadata.
    """
    if path is not None:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"trusted root {path} does not exist") from None
    else:
        url = f"{server.rstrip('/')}/metadata/1.root.json"
        try:
            response = requests.get(url, timeout=30)
        except requests.RequestException as e:
            raise TransportError(f"GET {url}: {e}") from e
        if response.status_code != 200:
            raise TransportError(f"GET {url}: HTTP {response.status_code}")
        data = response.content
        print(f"note: trusting {url} on first use (pass --root to pin it)", file=sys.stderr)
    try:
        root = Metadata.from_bytes(data)
    except Exception as e:  # tuf's deserializer raises several kinds
        raise InputError(f"trusted root is not TUF metadata: {e}") from e
    if root.signed.type != "root":
        raise InputError("trusted root is not root metadata")
    return data


def _progress_line(status: dict[str, Any]) -> str:
    total = status["total"]
    return (
        f"{status['rollout_id']}: {status['state']} wave {status['current_wave'] + 1}/"
        f"{len(status['waves'])} '{status['current_wave_name']}', "
        f"{total['succeeded']}/{total['eligible']} succeeded, {total['failed']} failed, "
        f"{total['downloading']} downloading"
    )


def summarise(results: Iterable[SimResult]) -> str:
    """One line per run, for the demo and benchmarks."""
    return "\n".join(json.dumps(r.to_json(), sort_keys=True) for r in results)
