"""The offline side of tufota: keys, root and targets metadata, release signing.

Everything here runs on a release engineer's (possibly air-gapped) machine.
Keys live in three homes (``_custody``): offline keys in a signing
directory outside the server's tree, each with its own passphrase
(``KeyPassphrases``); online keys with the server; tokens with operators.
Private keys are addressed by securesystemslib signer URI (``encfile:`` for
passphrase-encrypted key files, added here; ``awskms:``, ``hsm:`` and any other
registered scheme); every signature made is checked with ``Key.verify_signature``
before it is written. Release bundles (``read_bundle``/``write_bundle``) carry
signed metadata and firmware from this machine to the repository server.
"""

from signing._bundle import (
    BUNDLE_FORMAT,
    BundleLimits,
    ReleaseBundle,
    read_bundle,
    write_bundle,
)
from signing._ceremony import (
    PROPOSAL_FORMAT,
    KeyState,
    ProposalStatus,
    RootProposal,
    ThresholdState,
    finished_root,
    load_root,
    merge_proposals,
    proposal_status,
    propose_root,
    propose_rotation,
    sign_proposal,
    verify_root_update,
)
from signing._custody import (
    SIGNING_SUFFIX,
    TRUSTED_ROOT,
    KeyFinding,
    default_signing_dir,
    is_inside,
    offline_key_findings,
    online_key_misuse,
    online_roles_by_keyid,
    private_key_files,
    product_key_name,
    refuse_online_keys,
)
from signing._delta import DeltaConfig, DeltaRelease, DeltaStats, add_deltas, make_delta
from signing._fs import atomic_file, atomic_write
from signing._keys import (
    KEY_TYPES,
    PASSPHRASE_ENV,
    EncryptedFileSigner,
    KeyFile,
    KeyPassphrases,
    generate_key,
    import_kms_key,
    load_public_key,
    load_signer,
    passphrase_env_name,
    passphrase_from_env,
    resolve_key_file,
    sign_checked,
    write_public_key,
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
from signing._products import change_product_keys, resign_role, resign_targets
from signing._source import CurrentMetadata, fetch_current
from signing._verify import BundleCheck, verify_bundle, verify_delegate

__all__ = [
    "BUNDLE_FORMAT",
    "KEY_TYPES",
    "PASSPHRASE_ENV",
    "PROPOSAL_FORMAT",
    "SIGNING_SUFFIX",
    "TRUSTED_ROOT",
    "BundleCheck",
    "BundleLimits",
    "CurrentMetadata",
    "DeltaConfig",
    "DeltaRelease",
    "DeltaStats",
    "EncryptedFileSigner",
    "Expiry",
    "KeyFile",
    "KeyFinding",
    "KeyPassphrases",
    "KeyState",
    "ProposalStatus",
    "ReleaseBundle",
    "RootProposal",
    "ThresholdState",
    "add_deltas",
    "add_product_line",
    "add_release",
    "atomic_file",
    "atomic_write",
    "change_product_keys",
    "default_signing_dir",
    "empty_delegated",
    "fetch_current",
    "find_product",
    "finished_root",
    "generate_key",
    "import_kms_key",
    "is_inside",
    "latest_version",
    "load_public_key",
    "load_root",
    "load_signer",
    "make_delta",
    "merge_proposals",
    "new_root",
    "new_targets",
    "offline_key_findings",
    "online_key_misuse",
    "online_roles_by_keyid",
    "passphrase_env_name",
    "passphrase_from_env",
    "private_key_files",
    "product_key_name",
    "product_lines",
    "proposal_status",
    "propose_root",
    "propose_rotation",
    "read_bundle",
    "refuse_online_keys",
    "resign_role",
    "resign_targets",
    "resolve_key_file",
    "sign_all",
    "sign_checked",
    "sign_proposal",
    "verify_bundle",
    "verify_delegate",
    "verify_root_update",
    "write_bundle",
    "write_public_key",
]
