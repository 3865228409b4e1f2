"""The offline side of tufota: keys, root and targets metadata, release signing.

Everything here runs on a release engineer's (possibly air-gapped) machine.
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
from signing._keys import (
    KEY_TYPES,
    EncryptedFileSigner,
    KeyFile,
    generate_key,
    import_kms_key,
    load_public_key,
    load_signer,
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
    "PROPOSAL_FORMAT",
    "BundleCheck",
    "BundleLimits",
    "CurrentMetadata",
    "EncryptedFileSigner",
    "Expiry",
    "KeyFile",
    "KeyState",
    "ProposalStatus",
    "ReleaseBundle",
    "RootProposal",
    "ThresholdState",
    "add_product_line",
    "add_release",
    "change_product_keys",
    "empty_delegated",
    "fetch_current",
    "find_product",
    "finished_root",
    "generate_key",
    "import_kms_key",
    "latest_version",
    "load_public_key",
    "load_root",
    "load_signer",
    "merge_proposals",
    "new_root",
    "new_targets",
    "passphrase_from_env",
    "product_lines",
    "proposal_status",
    "propose_root",
    "propose_rotation",
    "read_bundle",
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
