"""``tufota repo verify|status``, ``token``, ``device register|accept|revoke|list``, S3 repos."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from securesystemslib.signer import CryptoSigner

from repo_server import Repository, target_storage_key
from staging import SqliteTrackerStore
from tests.conftest import PASSPHRASE
from tufota_cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _blob_key(repo: Repository) -> str:
    target = (
        repo.state().roles["firmware-gw-100"].signed.targets["firmware/gw-100/1.1.0/gw-1.1.0.img"]
    )
    return target_storage_key(target)


# -- repo verify ----------------------------------------------------------------------


def test_verify_passes_on_a_good_repository(
    released_repo: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "repo", "verify", "--repo", str(released_repo.path))
    assert code == 0, err
    assert "OK" in out
    assert "firmware-gw-100 v2" in out
    assert "2 targets" in out or "targets" in out


def _corrupt(repo: Repository, case: str) -> str:
    """Damage the repository; return the file the verifier must name."""
    public = repo.path / "public"
    if case == "blob_byte":
        key = _blob_key(repo)
        data = bytearray((public / key).read_bytes())
        data[10] ^= 1
        (public / key).write_bytes(bytes(data))
        return key
    if case == "blob_truncated":
        key = _blob_key(repo)
        (public / key).write_bytes((public / key).read_bytes()[:-1])
        return key
    if case == "blob_missing":
        key = _blob_key(repo)
        (public / key).unlink()
        return key
    if case == "role_signature":
        key = "metadata/2.firmware-gw-100.json"
        doc = json.loads((public / key).read_text())
        doc["signed"]["targets"]["firmware/gw-100/1.1.0/gw-1.1.0.img"]["length"] += 1
        (public / key).write_text(json.dumps(doc))
        return key
    if case == "snapshot_garbage":
        version = repo.state().snapshot.signed.version
        key = f"metadata/{version}.snapshot.json"
        (public / key).write_bytes(b"{not json")
        return key
    if case == "timestamp_signature":
        key = "metadata/timestamp.json"
        doc = json.loads((public / key).read_text())
        doc["signed"]["version"] += 5
        (public / key).write_text(json.dumps(doc))
        return key
    if case == "targets_missing":
        key = f"metadata/{repo.state().targets.signed.version}.targets.json"
        (public / key).unlink()
        return key
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("blob_byte", "does not match its signed sha256"),
        ("blob_truncated", "signed as 12000"),
        ("blob_missing", "is missing"),
        ("role_signature", "not signed by a threshold"),
        ("snapshot_garbage", "is not valid TUF metadata"),
        ("timestamp_signature", "not signed by a threshold"),
        ("targets_missing", "cannot be read"),
    ],
)
def test_verify_names_the_corrupted_file_and_exits_non_zero(
    released_repo: Repository, capsys: pytest.CaptureFixture[str], case: str, words: str
) -> None:
    bad = _corrupt(released_repo, case)
    code, out, err = run(capsys, "repo", "verify", "--repo", str(released_repo.path))
    assert code == 1
    assert f"{bad}: " in out
    assert words in out
    assert bad in err  # the one-line diagnosis names it too


def test_verify_with_a_foreign_trusted_root_fails(
    released_repo: Repository, repo: Repository, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = Repository.create(tmp_path / "other", PASSPHRASE)
    foreign = tmp_path / "root.json"
    foreign.write_bytes(other.trusted_root())
    code, out, _err = run(
        capsys, "repo", "verify", "--repo", str(released_repo.path), "--trusted-root", str(foreign)
    )
    assert code == 1
    assert "differs from the trusted root" in out


def test_status_shows_every_roles_validity(
    released_repo: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "repo", "status", "--repo", str(released_repo.path), "--json")
    assert code == 0
    roles = json.loads(out)["roles"]
    assert roles["timestamp"]["online"] is True
    assert roles["firmware-gw-100"]["online"] is False
    assert 0 < roles["timestamp"]["seconds_left"] <= 86400


# -- tokens ---------------------------------------------------------------------------------


def test_token_create_list_revoke(repo: Repository, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "token", "create", "--name", "ci", "--role", "uploader", "--repo", str(repo.path)
    )
    assert code == 0
    token = out.splitlines()[0]
    assert repo.token_store().authenticate(token) is not None
    assert token.encode() not in repo.tracker_path.read_bytes()  # only its hash is stored
    code, out, _ = run(capsys, "token", "list", "--repo", str(repo.path), "--json")
    listed = json.loads(out)["tokens"]
    assert [(t["name"], t["role"]) for t in listed] == [("ci", "uploader")]
    code, out, _ = run(capsys, "token", "revoke", listed[0]["id"], "--repo", str(repo.path))
    assert code == 0
    assert repo.token_store().authenticate(token) is None


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["token", "create", "--name", "", "--role", "viewer"], "needs a name"),
        (["token", "revoke", "deadbeef"], "no token with id deadbeef"),
    ],
)
def test_bad_token_commands_give_one_line(
    repo: Repository, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    code, _out, err = run(capsys, *argv, "--repo", str(repo.path))
    assert code == 1
    assert words in err
    assert repo.token_store().list() == []


# -- devices --------------------------------------------------------------------------------


def _pubkey_files(tmp_path: Path) -> dict[str, Path]:
    signer = CryptoSigner.generate_ed25519()
    json_key = tmp_path / "device.pub"
    json_key.write_text(
        json.dumps({"keyid": signer.public_key.keyid, **signer.public_key.to_dict()})
    )
    pem = tmp_path / "device.pem"
    pem.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    weak = tmp_path / "weak.pem"
    weak.write_bytes(
        rsa.generate_private_key(65537, 1024)  # noqa: S505 - the weak key to refuse
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    lying = tmp_path / "lying.pub"
    lying.write_text(json.dumps({"keyid": "00" * 32, **signer.public_key.to_dict()}))
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("hello")
    return {"json": json_key, "pem": pem, "weak": weak, "lying": lying, "garbage": garbage}


def test_register_accept_revoke_a_device_generated_key(
    released_repo: Repository, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = _pubkey_files(tmp_path)
    repo = str(released_repo.path)
    for device, key in (("dev-json", "json"), ("dev-pem", "pem")):
        code, out, err = run(
            capsys, "device", "register", device, "--hardware", "gw-100",
            "--pubkey", str(keys[key]), "--tags", "canary", "--repo", repo,
        )  # fmt: skip
        assert code == 0, err
        assert "pending" in out
    assert run(capsys, "device", "accept", "dev-json", "--repo", repo)[0] == 0
    assert "already" in run(capsys, "device", "accept", "dev-json", "--repo", repo)[1]
    assert run(capsys, "device", "revoke", "dev-pem", "--repo", repo, "--reason", "stolen")[0] == 0
    code, _out, err = run(capsys, "device", "accept", "dev-pem", "--repo", repo)
    assert code == 1
    assert "revoked for good" in err
    code, out, _ = run(capsys, "device", "list", "--repo", repo, "--json")
    statuses = {d["device_id"]: d["status"] for d in json.loads(out)["devices"]}
    assert statuses == {"dev-json": "accepted", "dev-pem": "revoked"}


@pytest.mark.parametrize(
    ("device", "hardware", "key", "words"),
    [
        ("dev-1", "gw-100", "weak", "at least 2048 bits"),
        ("dev-1", "gw-100", "lying", "keyid is not the key id"),
        ("dev-1", "gw-100", "garbage", "neither a PEM block nor JSON"),
        ("dev-1", "gw-100", "missing", "does not exist"),
        ("dev-1", "gw-999", "json", "has no product line"),
        ("../etc", "gw-100", "json", "device id '../etc' is invalid"),
        ("dev-taken", "gw-100", "json", "already registered to device dev-taken"),
    ],
)
def test_bad_registrations_are_refused_and_register_nothing(
    released_repo: Repository,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    device: str,
    hardware: str,
    key: str,
    words: str,
) -> None:
    keys = _pubkey_files(tmp_path)
    repo = str(released_repo.path)
    expected = []
    if key == "json" and device == "dev-taken":
        run(capsys, "device", "register", "dev-taken", "--hardware", "gw-100",
            "--pubkey", str(keys["json"]), "--repo", repo)  # fmt: skip
        expected = ["dev-taken"]
        device = "dev-2"
    pubkey = str(keys.get(key, tmp_path / "nope.pub"))
    code, _out, err = run(
        capsys, "device", "register", device, "--hardware", hardware, "--pubkey", pubkey,
        "--repo", repo,
    )  # fmt: skip
    assert code == 1
    assert words in err
    with SqliteTrackerStore(released_repo.tracker_path) as store:
        assert [d.device_id for d in store.list_devices()] == expected


# -- S3 repositories from the command line -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_s3_repository_init_release_verify_and_serve(
    bucket: str,
    moto_endpoint: str,
    tmp_path: Path,
    passphrase_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "state"
    url = f"s3://{bucket}/fleet"
    code, _out, err = run(
        capsys, "init", str(state), "--storage", url, "--s3-endpoint-url", moto_endpoint
    )
    assert code == 0, err
    assert not (state / "public").exists()
    image = tmp_path / "fw.img"
    image.write_bytes(b"firmware" * 100)
    code, _out, err = run(
        capsys, "release", "add", str(image), "--repo", str(state),
        "--hardware", "gw-100", "--version", "1.0.0",
    )  # fmt: skip
    assert code == 0, err
    code, _out, err = run(capsys, "repo", "verify", "--repo", url, "--state-dir", str(state))
    assert code == 0, err
    code, _out, err = run(
        capsys, "repo", "verify", "--repo", url, "--s3-endpoint-url", moto_endpoint
    )
    assert code == 0, err
    # An s3 URL needs its state directory, and only its own.
    code, _out, err = run(capsys, "serve", "--repo", url)
    assert code == 1
    assert "needs --state-dir" in err
    other = f"s3://{bucket}/elsewhere"
    code, _out, err = run(capsys, "serve", "--repo", other, "--state-dir", str(state))
    assert code == 1
    assert "belongs to" in err

    port = _free_port()
    env = {**os.environ, "TUFOTA_PASSPHRASE": passphrase_env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tufota_cli.main", "serve", "--repo", url, "--state-dir",
         str(state), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = requests.get(
                    f"http://127.0.0.1:{port}/metadata/timestamp.json", timeout=2
                )
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.json()["signed"]["_type"] == "timestamp"
        again = requests.get(
            f"http://127.0.0.1:{port}/metadata/timestamp.json",
            headers={"If-None-Match": response.headers["ETag"]},
            timeout=5,
        )
        assert again.status_code == 304
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


@pytest.mark.parametrize(
    "argv",
    [
        ["repo", "verify", "--help"],
        ["repo", "status", "--help"],
        ["token", "create", "--help"],
        ["token", "list", "--help"],
        ["token", "revoke", "--help"],
        ["device", "register", "--help"],
        ["device", "accept", "--help"],
        ["device", "revoke", "--help"],
        ["device", "list", "--help"],
    ],
)
def test_every_new_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: tufota" in capsys.readouterr().out


def test_tokens_of_an_older_tokens_json_are_imported_once(
    repo: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = {
        "tokens": [
            {
                "token_id": "0a1b2c3d",
                "name": "old-ci",
                "role": "uploader",
                "sha256": hashlib.sha256(b"tfo_0a1b2c3d_secret").hexdigest(),
                "created": "2026-01-01T00:00:00Z",
                "expires": None,
            }
        ]
    }
    repo.tokens_path.write_text(json.dumps(legacy))
    code, out, _ = run(capsys, "token", "list", "--repo", str(repo.path), "--json")
    assert code == 0
    assert [t["name"] for t in json.loads(out)["tokens"]] == ["old-ci"]
    assert not repo.tokens_path.exists()
    assert repo.tokens_path.with_name("tokens.json.imported").exists()
    with repo.token_store() as tokens:
        assert tokens.authenticate("tfo_0a1b2c3d_secret") is not None
        assert tokens.authenticate("tfo_0a1b2c3d_other") is None
