"""The agent installs through signed deltas, and falls back to the full image on any refusal.

Real TUF repository and HTTP server on loopback (``conftest.env``), real A/B
slot files, deltas made by ``signing._delta.make_delta``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner

from device_agent import init_slots
from device_agent._agent import ACTION_REBOOTING, ACTION_REFUSED
from device_agent._delta import (
    DELTA_MALFORMED,
    DELTA_RESULT_MISMATCH,
    DELTA_SOURCE_MISMATCH,
    DELTA_TOO_LONG,
    DELTA_TRUNCATED,
    DELTA_UNSUPPORTED,
    DELTA_WRONG_HARDWARE,
)
from signing._delta import make_delta
from tests.delta.test_deflate_tokens import _changelog, _gnu_gzip
from tests.delta.test_delta import _binary, _shift, _tar
from tests.device_agent.conftest import FACTORY, HW, Env
from tufota_core import DeltaInfo, delta_target_path, firmware_target_path
from tufota_core._delta import DELTA_FORMAT_2

NEW = "1.1.0"
FULL = firmware_target_path(HW, NEW, "fw.bin")
DELTA = delta_target_path(HW, NEW, "fw.bin", FACTORY)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _images(tmp: Path) -> tuple[bytes, bytes]:
    lib, mod = _binary(21, 200_000), _binary(22, 80_000)
    old = _tar(tmp / "old.tar", {"lib/6.1.0-53/a.so": lib, "lib/6.1.0-53/m.ko": mod})
    new = _tar(tmp / "new.tar", {"lib/6.1.0-54/a.so": _shift(lib, 5), "lib/6.1.0-54/m.ko": mod})
    return old.read_bytes(), new.read_bytes()


def _publish(env: Env, tmp: Path, old: bytes, new: bytes, *, delta: bytes | None = None,
             **custom: Any) -> bytes:  # fmt: skip
    """Factory ``old`` in slot A; release ``new`` with a delta from it; a rollout to it."""
    init_slots(env.config.slots_dir, FACTORY, old, overwrite=True)
    if delta is None:
        (tmp / "o").write_bytes(old)
        (tmp / "n").write_bytes(new)
        make_delta(tmp / "o", tmp / "n", tmp / "d")
        delta = (tmp / "d").read_bytes()
    env.repo.add_firmware(NEW, new)
    info = DeltaInfo(HW, FACTORY, len(old), _sha(old), FULL, NEW, len(new), _sha(new))
    fields = info.to_custom()
    fields.update(custom)
    env.repo._add_target(env.repo.firmware_role, DELTA, delta, fields)
    env.repo.set_rollout(NEW)
    env.repo.publish()
    return delta


def _downloaded(env: Env) -> Any:
    return next(r for r in env.server.reports if r.state == "downloaded")


def _slot_b(env: Env) -> bytes:
    return (env.config.slots_dir / "b" / "image.bin").read_bytes()


def test_agent_rebuilds_the_image_from_a_delta_and_reports_the_bytes_saved(
    env: Env, tmp_path: Path
) -> None:
    old, new = _images(tmp_path)
    delta = _publish(env, tmp_path, old, new)
    assert len(delta) < len(new) // 5

    result = env.agent().run_once()

    assert result.action == ACTION_REBOOTING
    assert _slot_b(env) == new
    assert env.server.downloads_of(FULL) == 0
    assert env.server.downloads_of(DELTA) == 1
    report = _downloaded(env)
    assert (report.delta_from, report.bytes_fetched, report.bytes_total) == (
        FACTORY,
        len(delta),
        len(new),
    )
    assert f"delta from {FACTORY}: fetched {len(delta)} of {len(new)} bytes" in report.message


def _other_result(tmp: Path, old: bytes, new: bytes) -> bytes:
    """A well-formed delta from ``old`` to an image of ``new``'s length with other bytes."""
    (tmp / "o").write_bytes(old)
    (tmp / "x").write_bytes(new[:-1] + bytes([new[-1] ^ 1]))
    make_delta(tmp / "o", tmp / "x", tmp / "dx")
    return (tmp / "dx").read_bytes()


def _good(tmp: Path, old: bytes, new: bytes) -> bytes:
    (tmp / "o").write_bytes(old)
    (tmp / "n").write_bytes(new)
    make_delta(tmp / "o", tmp / "n", tmp / "d")
    return (tmp / "d").read_bytes()


CASES = {
    # The signed delta rebuilds other bytes than the signed full image.
    "result-mismatch": (DELTA_RESULT_MISMATCH, lambda t, o, n: _other_result(t, o, n), {}),
    # Truncated and endless deltas, signed as they are (TUF hashes match).
    "truncated": (DELTA_TRUNCATED, lambda t, o, n: _good(t, o, n)[:-40], {}),
    "endless": (DELTA_TOO_LONG, lambda t, o, n: _good(t, o, n) + b"\0" * 4096, {}),
    "garbage": (DELTA_MALFORMED, lambda t, o, n: b"not a delta at all" * 10, {}),
    # A format this agent does not know: refused from the signed field, never fetched.
    "unknown-format": (
        DELTA_UNSUPPORTED,
        lambda t, o, n: _good(t, o, n),
        {"delta_format": "tufota-delta/9"},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_refused_delta_falls_back_to_the_full_image(env: Env, tmp_path: Path, case: str) -> None:
    code, make, custom = CASES[case]
    old, new = _images(tmp_path)
    _publish(env, tmp_path, old, new, delta=make(tmp_path, old, new), **custom)

    result = env.agent().run_once()

    assert result.action == ACTION_REBOOTING
    assert _slot_b(env) == new
    assert env.server.downloads_of(FULL) == 1
    report = _downloaded(env)
    assert report.delta_from is None
    assert f"delta refused ({code})" in report.message
    assert report.bytes_fetched >= len(new)


def test_agent_rebuilds_a_recompressed_changelog_from_a_format_2_delta(
    env: Env, tmp_path: Path
) -> None:
    text = _changelog(41, 300)
    lib = _binary(23, 100_000)
    old = _tar(tmp_path / "old.tar", {"a.so": lib, "changelog.gz": _gnu_gzip(text)})
    new = _tar(
        tmp_path / "new.tar", {"a.so": lib, "changelog.gz": _gnu_gzip(b"new entry\n" + text)}
    )
    stats = make_delta(old, new, tmp_path / "d")
    assert stats.format == DELTA_FORMAT_2
    delta = _publish(
        env,
        tmp_path,
        old.read_bytes(),
        new.read_bytes(),
        delta=(tmp_path / "d").read_bytes(),
        delta_format=DELTA_FORMAT_2,
    )

    assert env.agent().run_once().action == ACTION_REBOOTING

    assert _slot_b(env) == new.read_bytes()
    assert env.server.downloads_of(FULL) == 0
    assert _downloaded(env).bytes_fetched == len(delta)


def test_delta_for_another_source_image_falls_back(env: Env, tmp_path: Path) -> None:
    old, new = _images(tmp_path)
    _publish(env, tmp_path, old, new)
    # The active slot does not hold the delta's (signed) source bytes.
    (env.config.slots_dir / "a" / "image.bin").write_bytes(old[:-1] + b"\x09")

    assert env.agent().run_once().action == ACTION_REBOOTING

    assert _slot_b(env) == new
    assert env.server.downloads_of(FULL) == 1
    assert f"delta refused ({DELTA_SOURCE_MISMATCH})" in _downloaded(env).message


def test_delta_for_another_hardware_line_falls_back(env: Env, tmp_path: Path) -> None:
    old, new = _images(tmp_path)
    other = f"firmware/gw-200/{NEW}/fw.bin"
    _publish(env, tmp_path, old, new, hardware_id="gw-200", result={
        "target": other, "version": NEW, "length": len(new), "sha256": _sha(new)})  # fmt: skip

    assert env.agent().run_once().action == ACTION_REBOOTING

    assert _slot_b(env) == new
    assert env.server.downloads_of(DELTA) == 0  # refused from its signed facts alone
    assert f"delta refused ({DELTA_WRONG_HARDWARE})" in _downloaded(env).message


def test_delta_signed_by_the_wrong_key_is_never_applied(env: Env, tmp_path: Path) -> None:
    old, new = _images(tmp_path)
    # The product line's role (image and delta) signed by a key it does not delegate to.
    env.repo.signers[env.repo.firmware_role] = CryptoSigner.generate_ed25519()
    _publish(env, tmp_path, old, new)

    result = env.agent().run_once()

    assert result.action == ACTION_REFUSED
    assert result.error_code == "bad_signature"
    assert env.server.downloads_of(DELTA) == 0
    assert env.server.downloads_of(FULL) == 0
    assert env.boot_control()["pending"] is None


def test_a_cut_delta_download_resumes_where_it_stopped(env: Env, tmp_path: Path) -> None:
    old, new = _images(tmp_path)
    delta = _publish(env, tmp_path, old, new)
    assert len(delta) > 600
    env.server.cuts[".tfdelta"] = 300

    first = env.agent().run_once()
    if first.action != ACTION_REBOOTING:  # the cut ended the cycle: the next one resumes
        assert env.agent().run_once().action == ACTION_REBOOTING

    assert _slot_b(env) == new
    assert env.server.downloads_of(FULL) == 0
    assert "bytes=300-" in env.server.ranges
    assert _downloaded(env).delta_from == FACTORY
    assert sum(n for p, n in env.server.bytes_sent.items() if p.endswith(".tfdelta")) == len(delta)


def test_a_delta_fits_a_data_budget_the_full_image_would_exceed(env: Env, tmp_path: Path) -> None:
    old, new = _images(tmp_path)
    delta = _publish(env, tmp_path, old, new)
    env.config = dataclasses.replace(env.config, data_budget=len(new) // 2)

    assert env.agent().run_once().action == ACTION_REBOOTING

    assert _slot_b(env) == new
    budget = json.loads((env.config.state_dir / "budget.json").read_text())
    assert budget["used"] == len(delta)  # the delta is charged to the budget, nothing else
