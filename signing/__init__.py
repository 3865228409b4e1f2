"""The offline side of tufota: keys, root and targets metadata, release signing.

Everything here runs on a release engineer's (possibly air-gapped) machine.
Private keys are addressed by securesystemslib signer URI; this package adds
the ``encfile:`` scheme for passphrase-encrypted key files.
"""

from signing._keys import (
    KEY_TYPES,
    EncryptedFileSigner,
    KeyFile,
    generate_key,
    load_public_key,
    load_signer,
    passphrase_from_env,
)
from signing._metadata import (
    Expiry,
    add_product_line,
    add_release,
    empty_delegated,
    find_product,
    latest_version,
    new_root,
    new_targets,
    product_lines,
    sign_all,
)

__all__ = [
    "KEY_TYPES",
    "EncryptedFileSigner",
    "Expiry",
    "KeyFile",
    "add_product_line",
    "add_release",
    "empty_delegated",
    "find_product",
    "generate_key",
    "latest_version",
    "load_public_key",
    "load_signer",
    "new_root",
    "new_targets",
    "passphrase_from_env",
    "product_lines",
    "sign_all",
]
