"""The device's identity key: the signer for its status reports.

Invariants: the private key never leaves this module's signer object and is
never logged; a signer is returned only when the private key matches the
public key in ``device.pub`` (``CryptoSigner`` checks), so a mismatched key
pair fails at start-up instead of producing reports the server rejects.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.exceptions import KeyMismatchError
from securesystemslib.signer import CryptoSigner, Signer, SSlibKey

from tufota_core import InputError, NotFoundError

logger = logging.getLogger(__name__)


def load_public_key(path: Path) -> SSlibKey:
    """Read ``device.pub`` (``SSlibKey.to_dict()`` plus ``keyid``, optional ``uri``).

    Raises:
        NotFoundError: the file does not exist.
        InputError: it is not a public key file.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        keyid = str(data.pop("keyid"))
        data.pop("uri", None)
        return SSlibKey.from_dict(keyid, data)
    except FileNotFoundError:
        raise NotFoundError(f"device public key {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path} is not a device public key file: {e}") from e


def load_device_signer(key_path: Path, public_key_path: Path) -> Signer:
    """A signer for the device key (unencrypted PKCS8 PEM) matching ``device.pub``.

    Raises:
        NotFoundError: a key file does not exist.
        InputError: a key file is malformed, or the two keys do not belong together.
    """
    public_key = load_public_key(public_key_path)
    try:
        private_key = load_pem_private_key(key_path.read_bytes(), password=None)
        return CryptoSigner(private_key, public_key)
    except FileNotFoundError:
        raise NotFoundError(f"device key {key_path} does not exist") from None
    except KeyMismatchError as e:
        raise InputError(f"{key_path} does not match the public key in {public_key_path}") from e
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"{key_path} is not an unencrypted PKCS8 PEM private key: {e}") from e
