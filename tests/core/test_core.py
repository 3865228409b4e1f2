"""The wire contract: versions, names, waves, cohorts, rollout docs, reports."""

from __future__ import annotations

import pytest
from securesystemslib.signer import CryptoSigner

from tufota_core import (
    FirmwareInfo,
    InputError,
    Report,
    RolloutDoc,
    VerificationError,
    Version,
    Wave,
    cohort_bucket,
    firmware_target_path,
    is_newer,
    parse_wave_spec,
    sign_report,
    verify_report,
    wave_index,
)


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.0.0", "1.0.1"),
        ("1.9.0", "1.10.0"),
        ("1.0.0-alpha", "1.0.0"),
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
        ("1.0.0-beta.2", "1.0.0-beta.11"),
        ("1.0.0-rc.1", "1.0.0"),
    ],
)
def test_semver_precedence_follows_the_specification(lower: str, higher: str) -> None:
    assert Version.parse(lower) < Version.parse(higher)
    assert is_newer(higher, lower)
    assert not is_newer(lower, higher)


def test_build_metadata_does_not_make_a_version_newer() -> None:
    assert not is_newer("1.0.0+build.5", "1.0.0")


@pytest.mark.parametrize("text", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "", "1.0.0.0", "x" * 100])
def test_malformed_versions_are_refused(text: str) -> None:
    with pytest.raises(InputError, match="semantic version"):
        Version.parse(text)


@pytest.mark.parametrize(
    ("hw", "version", "name"),
    [
        ("../x", "1.0.0", "a.bin"),
        ("gw", "1.0.0", "../a"),
        ("gw", "1.0.0", ".hidden"),
        ("GW", "1.0.0", "a"),
    ],
)
def test_target_paths_cannot_escape(hw: str, version: str, name: str) -> None:
    with pytest.raises(InputError):
        firmware_target_path(hw, version, name)


def test_wave_spec_with_tags_devices_and_percentages() -> None:
    waves = parse_wave_spec("lab:tag=lab,pilot:devices=a,b,canary:1%,10%;100%")
    assert [w.name for w in waves] == ["lab", "pilot", "canary", "wave-4", "wave-5"]
    assert waves[1].devices == ("a", "b")
    assert waves[0].tags == ("lab",)
    assert [w.percent for w in waves[2:]] == [1.0, 10.0, 100.0]


@pytest.mark.parametrize("spec", ["", "50%,10%", "x:y", "a:10%,a:20%", "canary:abc%", "101%"])
def test_bad_wave_specs_are_refused(spec: str) -> None:
    with pytest.raises(InputError):
        parse_wave_spec(spec)


def test_cohorts_are_cumulative_and_close_to_their_percentages() -> None:
    waves = [Wave("a", 10.0), Wave("b", 50.0), Wave("c", 100.0)]
    indexes = [wave_index("r1", waves, f"dev-{n}", []) for n in range(4000)]
    share_a = indexes.count(0) / len(indexes)
    share_ab = (indexes.count(0) + indexes.count(1)) / len(indexes)
    assert 0.08 < share_a < 0.12
    assert 0.46 < share_ab < 0.54
    assert None not in indexes
    assert cohort_bucket("r1", "dev-1") == cohort_bucket("r1", "dev-1")
    # Another rollout reshuffles the fleet: cohorts do not always hit the same devices.
    assert {cohort_bucket("r1", f"d{n}") for n in range(50)} != {
        cohort_bucket("r2", f"d{n}") for n in range(50)
    }


def _doc(**changes: object) -> RolloutDoc:
    fields: dict[str, object] = {
        "rollout_id": "gw-1.1.0-a",
        "hardware_id": "gw",
        "version": "1.1.0",
        "target_path": "firmware/gw/1.1.0/fw.bin",
        "waves": (Wave("canary", tags=("canary",)), Wave("all", 100.0)),
        "current_wave": 0,
        "state": "active",
    }
    fields.update(changes)
    return RolloutDoc(**fields)  # type: ignore[arg-type]


def test_rollout_doc_round_trips_and_gates_eligibility() -> None:
    doc = _doc()
    assert RolloutDoc.from_bytes(doc.to_bytes()) == doc
    assert doc.eligible_wave("d1", ["canary"]) == 0
    assert doc.eligible_wave("d1", []) is None  # the 100% wave is not open yet
    assert _doc(current_wave=1).eligible_wave("d1", []) == 1
    assert _doc(state="paused").eligible_wave("d1", ["canary"]) is None
    assert _doc(state="aborted", current_wave=1).eligible_wave("d1", []) is None
    # Stragglers that were offline when the last gate was met still catch up.
    assert _doc(state="completed", current_wave=1).eligible_wave("d1", []) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"target_path": "firmware/other/1.1.0/fw.bin"},
        {"current_wave": 2},
        {"state": "running"},
        {"rollout_id": "../x"},
    ],
)
def test_inconsistent_rollout_docs_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(InputError):
        _doc(**changes)


def test_rollout_doc_from_garbage_is_an_input_error() -> None:
    for data in (b"not json", b"[]", b'{"schema": "tufota.rollout/1"}'):
        with pytest.raises(InputError):
            RolloutDoc.from_bytes(data)


def test_firmware_info_validates_security_fields() -> None:
    info = FirmwareInfo("gw", "1.2.0", severity="critical", cvss=9.8, fixes=("CVE-2026-1234",))
    assert FirmwareInfo.from_custom(info.to_custom()) == info
    with pytest.raises(InputError, match="CVSS"):
        FirmwareInfo("gw", "1.2.0", cvss=11.0)
    with pytest.raises(InputError, match="CVE"):
        FirmwareInfo("gw", "1.2.0", fixes=("not-a-cve",))


def test_signed_report_verifies_and_tampering_is_detected() -> None:
    signer = CryptoSigner.generate_ed25519()
    other = CryptoSigner.generate_ed25519()
    envelope = sign_report(Report("dev-1", "gw", 1, "succeeded", installed_version="1.1.0"), signer)
    assert verify_report(envelope, signer.public_key).state == "succeeded"
    with pytest.raises(VerificationError):
        verify_report(envelope, other.public_key)
    envelope["report"]["installed_version"] = "9.9.9"
    with pytest.raises(VerificationError):
        verify_report(envelope, signer.public_key)


@pytest.mark.parametrize(
    "report",
    [
        {"device_id": "d", "hardware_id": "gw", "seq": 0, "state": "idle"},
        {"device_id": "d", "hardware_id": "gw", "seq": 1, "state": "exploded"},
        {"device_id": "d", "hardware_id": "gw", "seq": 1, "state": "idle", "extra": 1},
        {"device_id": "d", "hardware_id": "gw", "seq": 1.5, "state": "idle"},
        {"device_id": "d", "hardware_id": "gw", "seq": True, "state": "idle"},
        {"device_id": "d", "hardware_id": "gw", "seq": 1, "state": "idle", "message": "a\x00"},
        {"device_id": "d", "hardware_id": "gw", "seq": 1, "state": "idle", "time": "\ud800"},
    ],
)
def test_malformed_reports_are_refused(report: dict[str, object]) -> None:
    with pytest.raises(InputError):
        Report.from_json(report)


def test_errors_carry_a_stable_code_that_callers_may_narrow() -> None:
    from tufota_core import InputError, NotFoundError

    assert NotFoundError("x").code == "not_found"
    narrowed = InputError("older than installed", code="downgrade_refused")
    assert narrowed.code == "downgrade_refused"
    assert str(narrowed) == "older than installed"
    assert InputError("y").code == "bad_input"
