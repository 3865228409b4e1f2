"""Signing keys on disk: an encrypted private key file and a public key file.

``NAME.key`` holds a PKCS#8 PEM private key encrypted with a passphrase
(``BestAvailableEncryption``), mode 0600. ``NAME.pub`` holds the public key in
TUF's key format plus the signer URI ``encfile:NAME.key``, resolved relative
to the ``.pub`` file so a key directory can move. Private key bytes are never
logged and never written unencrypted.

The ``encfile`` scheme is registered with securesystemslib, so any code that
signs through ``Signer.from_priv_key_uri`` can use these keys beside
``awskms:`` or ``hsm:`` keys.

Each encrypted key file has its own passphrase (``KeyPassphrases``): from
``TUFOTA_PASSPHRASE_<STEM>`` (the file's stem upper-cased, any other character
as ``_``), then ``TUFOTA_PASSPHRASE``, then a prompt naming the file. So the
server's environment can hold the online keys' passphrases without holding
any offline key's.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib import parse

from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.exceptions import VerificationError as SslibVerificationError
from securesystemslib.signer import (
    SIGNER_FOR_URI_SCHEME,
    CryptoSigner,
    Key,
    SecretsHandler,
    Signature,
    Signer,
    SSlibKey,
)
from tuf.api.metadata import Metadata

from signing._fs import atomic_write
from tufota_core import InputError, NotFoundError, TransportError, VerificationError

KEY_TYPES = ("ed25519", "ecdsa")
MIN_PASSPHRASE = 8
PASSPHRASE_ENV = "TUFOTA_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


def passphrase_env_name(key_path: Path) -> str:
    """The per-key variable: ``release-gw-100.key`` -> ``TUFOTA_PASSPHRASE_RELEASE_GW_100``."""
    stem = key_path.stem
    return f"{PASSPHRASE_ENV}_{re.sub(r'[^A-Z0-9]', '_', stem.upper())}"


class KeyPassphrases:
    """Passphrases per encrypted key file, each asked for at most once.

    ``for_key(path)`` answers from ``TUFOTA_PASSPHRASE_<STEM>``, then
    ``TUFOTA_PASSPHRASE``, then a prompt on the terminal that names the file.
    Calling the object itself (no key named) answers from ``TUFOTA_PASSPHRASE``
    or a generic prompt, for callers that predate per-key passphrases.

    Raises (both methods):
        InputError: nothing in the environment and no terminal to ask on, or
            (with ``confirm``) the two answers differ.
    """

    def __init__(
        self,
        confirm: bool = False,
        env: dict[str, str] | None = None,
        prompt: Callable[[str], str] | None = None,
    ) -> None:
        self._confirm = confirm
        self._env = env
        self._prompt = prompt
        self._cache: dict[str, str] = {}

    def _lookup(self, name: str) -> str | None:
        env = os.environ if self._env is None else self._env
        return env.get(name) or None

    def _ask(self, question: str, missing: str) -> str:
        if self._prompt is not None:
            return self._prompt(question)
        if not sys.stdin.isatty():
            raise InputError(missing)
        value = getpass.getpass(question)
        if self._confirm and getpass.getpass("Repeat passphrase: ") != value:
            raise InputError("the passphrases do not match")
        return value

    def for_key(self, key_path: Path) -> str:
        """The passphrase of the encrypted key file ``key_path``."""
        cache_key = str(key_path.resolve())
        if cache_key not in self._cache:
            own = passphrase_env_name(key_path)
            value = self._lookup(own) or self._lookup(PASSPHRASE_ENV)
            if value is None:
                value = self._ask(
                    f"Passphrase for {key_path}: ",
                    f"no passphrase for {key_path}: set {own} or {PASSPHRASE_ENV}, "
                    "or run on a terminal",
                )
            self._cache[cache_key] = value
        return self._cache[cache_key]

    def __call__(self) -> str:
        if "" not in self._cache:
            value = self._lookup(PASSPHRASE_ENV) or self._ask(
                "Key passphrase: ", f"no passphrase: set {PASSPHRASE_ENV} or run on a terminal"
            )
            self._cache[""] = value
        return self._cache[""]


class EncryptedFileSigner(Signer):
    """A signer for ``encfile:<PATH>``: a passphrase-encrypted PKCS#8 PEM key.

    The passphrase comes from the ``secrets_handler`` ("passphrase").
    """

    SCHEME = "encfile"

    def __init__(self, inner: CryptoSigner) -> None:
        self._inner = inner

    @property
    def public_key(self) -> Key:
        return self._inner.public_key

    def sign(self, payload: bytes) -> Signature:
        return self._inner.sign(payload)

    @classmethod
    def from_priv_key_uri(
        cls,
        priv_key_uri: str,
        public_key: Key,
        secrets_handler: SecretsHandler | None = None,
    ) -> EncryptedFileSigner:
        uri = parse.urlparse(priv_key_uri)
        if uri.scheme != cls.SCHEME:
            raise ValueError(f"EncryptedFileSigner does not support {priv_key_uri}")
        if secrets_handler is None:
            raise ValueError("an encfile: key needs a passphrase")
        path = Path(uri.path)
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"private key file {path} does not exist") from None
        if not pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"):
            raise InputError(f"{path} is not an encrypted private key file")
        passphrase = secrets_handler("passphrase")
        try:
            private_key = load_pem_private_key(pem, passphrase.encode())
        except (ValueError, TypeError) as e:
            raise VerificationError(f"cannot decrypt {path}: wrong passphrase?") from e
        if not isinstance(public_key, SSlibKey):
            raise ValueError("encfile keys are SSlibKeys")
        try:
            derived = SSlibKey.from_crypto(private_key.public_key())
        except (ValueError, TypeError) as e:
            raise InputError(f"{path} holds an unsupported key type") from e
        if derived.keyval != public_key.keyval:
            raise InputError(
                f"{path} does not belong to public key {public_key.keyid[:12]} "
                "(mismatched key files)"
            )
        return cls(CryptoSigner(private_key, public_key))


SIGNER_FOR_URI_SCHEME[EncryptedFileSigner.SCHEME] = EncryptedFileSigner


@dataclass(frozen=True)
class KeyFile:
    """A public key and the URI of its private half, as read from ``NAME.pub``."""

    key: SSlibKey
    uri: str
    path: Path

    @property
    def keyid(self) -> str:
        return self.key.keyid


def _private_key(key_type: str) -> CryptoSigner:
    if key_type == "ed25519":
        return CryptoSigner.generate_ed25519()
    if key_type == "ecdsa":
        return CryptoSigner.generate_ecdsa()
    raise InputError(f"key type {key_type!r} is not one of {', '.join(KEY_TYPES)}")


def generate_key(out: Path, passphrase: str, key_type: str = "ed25519") -> KeyFile:
    """Create ``out.key`` (encrypted) and ``out.pub``.

    Raises:
        InputError: weak passphrase, unknown key type, or a file already exists.
    """
    if len(passphrase) < MIN_PASSPHRASE:
        raise InputError(f"passphrase must be at least {MIN_PASSPHRASE} characters")
    priv_path, pub_path = out.with_suffix(".key"), out.with_suffix(".pub")
    for path in (priv_path, pub_path):
        if path.exists():
            raise InputError(f"{path} already exists; refusing to overwrite a key")
    signer = _private_key(key_type)
    # CryptoSigner keeps the pyca key private; re-load its PEM to encrypt it.
    private = load_pem_private_key(signer.private_bytes, None)
    encrypted = private.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(passphrase.encode())
    )
    atomic_write(priv_path, encrypted, mode=0o600)
    uri = f"{EncryptedFileSigner.SCHEME}:{priv_path.name}"
    return write_public_key(pub_path, signer.public_key, uri)


def write_public_key(path: Path, key: SSlibKey, uri: str) -> KeyFile:
    """Write a ``NAME.pub`` file: TUF public key, key id and the private key's signer URI."""
    public: dict[str, Any] = {"keyid": key.keyid, "uri": uri}
    public.update(key.to_dict())
    atomic_write(path, (json.dumps(public, indent=1) + "\n").encode())
    return KeyFile(key=key, uri=uri, path=path)


def import_kms_key(key_id: str, out: Path, scheme: str | None = None) -> KeyFile:
    """Write ``out.pub`` for an AWS KMS key, signer URI ``awskms:<key_id>``.

    The AWS client is configured the usual boto3 way (``AWS_REGION``,
    credentials, ``AWS_ENDPOINT_URL_KMS``); the private key never leaves KMS.

    Raises:
        InputError: ``out.pub`` exists, or the key's algorithm is not usable for TUF.
        TransportError: KMS could not be reached or refused the request.
    """
    from securesystemslib.exceptions import UnsupportedAlgorithmError
    from securesystemslib.signer import AWSSigner

    pub_path = out.with_suffix(".pub")
    if pub_path.exists():
        raise InputError(f"{pub_path} already exists; refusing to overwrite a key")
    try:
        uri, key = AWSSigner.import_(key_id, scheme)
    except (ValueError, UnsupportedAlgorithmError) as e:
        raise InputError(f"KMS key {key_id} cannot sign TUF metadata: {e}") from e
    except Exception as e:  # botocore's ClientError / BotoCoreError, kept out of imports
        raise TransportError(f"AWS KMS refused or failed for {key_id}: {e}") from e
    return write_public_key(pub_path, key, uri)


def resolve_key_file(path: Path) -> KeyFile:
    """The key named by ``path``: ``NAME.pub``, or ``NAME.key`` with ``NAME.pub`` beside it.

    Raises:
        NotFoundError: a file is missing.
        InputError: the public key file is malformed.
    """
    if path.suffix == ".key":
        if not path.is_file():
            raise NotFoundError(f"private key file {path} does not exist")
        pub = path.with_suffix(".pub")
        if not pub.is_file():
            raise NotFoundError(f"{pub}, the public half of {path}, does not exist")
        key_file = load_public_key(pub)
        return KeyFile(key_file.key, f"{EncryptedFileSigner.SCHEME}:{path.name}", pub)
    return load_public_key(path)


def sign_checked(metadata: Metadata[Any], signer: Signer, key: Key | None = None) -> Signature:
    """Sign ``metadata`` (replacing this key's earlier signature) and verify the result.

    The signature is checked with ``key`` (default: the signer's public key)
    through ``Key.verify_signature``, so a signer that is not the key it
    claims to be (a wrong KMS key, a broken HSM) is caught before anything
    is written.

    Raises:
        VerificationError: the new signature does not verify.
    """
    signature = metadata.sign(signer, append=True)
    check = key or signer.public_key
    try:
        check.verify_signature(signature, metadata.signed_bytes)
    except (UnverifiedSignatureError, SslibVerificationError) as e:
        metadata.signatures.pop(signature.keyid, None)
        raise VerificationError(
            f"the signature of key {check.keyid[:12]} does not verify: wrong key?"
        ) from e
    return signature


def load_public_key(path: Path) -> KeyFile:
    """Read ``NAME.pub``.

    Raises:
        NotFoundError: the file does not exist.
        InputError: it is not a tufota public key file.
    """
    try:
        data = json.loads(path.read_text())
        keyid = data.pop("keyid")
        uri = str(data.pop("uri", ""))
        key = SSlibKey.from_dict(keyid, data)
    except FileNotFoundError:
        raise NotFoundError(f"public key file {path} does not exist") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path} is not a public key file: {e}") from e
    except OSError as e:
        raise InputError(f"cannot read {path}: {e}") from e
    if key.keyid != keyid:
        raise InputError(f"{path}: key id does not match the key")
    return KeyFile(key=key, uri=uri, path=path)


def load_signer(key_file: KeyFile, passphrase: Callable[[], str]) -> Signer:
    """A signer for ``key_file``'s private key, asking ``passphrase()`` only if needed.

    A ``KeyPassphrases`` is asked for this key file's own passphrase; any
    other callable gives one passphrase for every key.

    Raises:
        InputError: the key file has no signer URI.
        VerificationError: wrong passphrase.
        NotFoundError: the private key file is missing.
    """
    if not key_file.uri:
        raise InputError(f"{key_file.path} names no private key (no 'uri')")
    uri = key_file.uri
    if uri.startswith(EncryptedFileSigner.SCHEME + ":") and not uri.startswith(
        EncryptedFileSigner.SCHEME + ":/"
    ):
        uri = f"{EncryptedFileSigner.SCHEME}:{key_file.path.parent / uri.split(':', 1)[1]}"

    def secret(_name: str) -> str:
        if isinstance(passphrase, KeyPassphrases) and uri.startswith(
            EncryptedFileSigner.SCHEME + ":"
        ):
            return passphrase.for_key(Path(uri.split(":", 1)[1]))
        return passphrase()

    try:
        return Signer.from_priv_key_uri(uri, key_file.key, secret)
    except (ValueError, OSError) as e:
        raise InputError(f"cannot load the private key of {key_file.path}: {e}") from e


def passphrase_from_env(env: str = "TUFOTA_PASSPHRASE") -> str | None:
    """The passphrase from the environment, or None when it is not set."""
    return os.environ.get(env) or None
