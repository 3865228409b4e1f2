"""AWS KMS keys (``awskms:`` signer URIs) against moto's KMS server on loopback."""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, utils
from moto.kms.responses import KmsResponse
from moto.kms.utils import ECDSAPrivateKey
from moto.server import ThreadedMotoServer
from tuf.api.metadata import Metadata, Targets

from repo_server import Repository
from signing import KeyPassphrases, import_kms_key, load_public_key, load_signer, sign_checked
from tufota_cli.main import main as tufota
from tufota_core import InputError

_DIGEST = contextvars.ContextVar("digest", default=False)


@pytest.fixture
def kms(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # moto 5.2 ignores MessageType=DIGEST and signs the 32-byte digest as if it
    # were the message (hashing it again), so every ECDSA signature that
    # securesystemslib's AWSSigner asks for would fail to verify. Real KMS
    # signs the digest as given; teach the fake to do the same. Verification
    # is untouched: every signature below is checked with Key.verify_signature.
    original_response_sign = KmsResponse.sign
    original_key_sign = ECDSAPrivateKey.sign

    def response_sign(self: KmsResponse) -> str:
        token = _DIGEST.set(self._get_param("MessageType") == "DIGEST")
        try:
            return original_response_sign(self)
        finally:
            _DIGEST.reset(token)

    def key_sign(self: ECDSAPrivateKey, message: bytes, signing_algorithm: str) -> bytes:
        if not _DIGEST.get():
            return original_key_sign(self, message, signing_algorithm)
        algorithm = self._ECDSAPrivateKey__hash_algorithm(signing_algorithm)  # type: ignore[attr-defined]
        return self.private_key.sign(message, ec.ECDSA(utils.Prehashed(algorithm)))  # type: ignore[no-any-return]

    monkeypatch.setattr(KmsResponse, "sign", response_sign)
    monkeypatch.setattr(ECDSAPrivateKey, "sign", key_sign)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = boto3.client("kms")
    try:
        yield client
    finally:
        server.stop()


def _ecc_key(client: Any, alias: str) -> str:
    key_id = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"][
        "KeyId"
    ]
    client.create_alias(AliasName=alias, TargetKeyId=key_id)
    return str(key_id)


def test_kms_key_signs_metadata_that_verifies(kms: Any, tmp_path: Path) -> None:
    key_id = _ecc_key(kms, "alias/release-gw")
    assert tufota(["key", "import-kms", key_id, "--out", str(tmp_path / "kms")]) == 0
    key_file = load_public_key(tmp_path / "kms.pub")
    assert key_file.uri == f"awskms:{key_id}"
    signer = load_signer(key_file, lambda: pytest.fail("a KMS key needs no passphrase"))
    md = Metadata(Targets())
    signature = sign_checked(md, signer)  # raises unless Key.verify_signature accepts it
    key_file.key.verify_signature(signature, md.signed_bytes)


def test_a_kms_signer_that_is_not_the_listed_key_is_caught(kms: Any, tmp_path: Path) -> None:
    first = import_kms_key(_ecc_key(kms, "alias/a"), tmp_path / "a")
    second = import_kms_key(_ecc_key(kms, "alias/b"), tmp_path / "b")
    # b.pub's key, but a's KMS key behind the URI: the signature must not be accepted.
    signer = load_signer(type(second)(second.key, first.uri, second.path), lambda: "")
    md = Metadata(Targets())
    with pytest.raises(Exception, match="does not verify"):
        sign_checked(md, signer)
    assert md.signatures == {}


def test_importing_a_symmetric_kms_key_is_refused(kms: Any, tmp_path: Path) -> None:
    key_id = kms.create_key(KeySpec="SYMMETRIC_DEFAULT")["KeyMetadata"]["KeyId"]
    with pytest.raises(InputError):
        import_kms_key(key_id, tmp_path / "sym")
    assert not (tmp_path / "sym.pub").exists()


def test_servers_share_a_kms_online_key_without_a_private_key_file(
    kms: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("TUFOTA_PASSPHRASE"):
            monkeypatch.delenv(name)
    for name in ("ROOT", "TARGETS", "ROLLOUTS", "RELEASE_GW_100"):
        monkeypatch.setenv(f"TUFOTA_PASSPHRASE_{name}", f"{name.lower()} passphrase")
    assert tufota(["key", "import-kms", _ecc_key(kms, "alias/online"), "--out",
                   str(tmp_path / "online-kms")]) == 0  # fmt: skip
    repo = tmp_path / "repo"
    assert tufota(["init", str(repo), "--online-key", str(tmp_path / "online-kms.pub")]) == 0
    assert not (repo / "keys" / "online.key").exists()
    assert load_public_key(repo / "keys" / "online.pub").uri.startswith("awskms:")
    fw = tmp_path / "fw.img"
    fw.write_bytes(b"kms firmware\n" * 100)
    assert tufota(["release", "add", str(fw), "--repo", str(repo), "--hardware", "gw-100",
                   "--version", "1.0.0"]) == 0  # fmt: skip
    # A second server state directory names the same KMS key: it re-signs the online roles.
    other = Repository.open(repo)
    state = other.state()
    online = load_public_key(repo / "keys" / "online.pub").keyid
    assert set(state.root.signed.roles["timestamp"].keyids) == {online}
    state.root.verify_delegate("snapshot", state.snapshot)
    state.root.verify_delegate("timestamp", state.timestamp)
    # Only the rollouts key file needs a passphrase; the KMS key needs none.
    other.publisher(KeyPassphrases()).refresh_online(margin=timedelta(days=400))
    assert other.state().timestamp.signed.version > state.timestamp.signed.version
    assert tufota(["repo", "verify", "--repo", str(repo)]) == 0
