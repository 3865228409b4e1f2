"""The online side of tufota: storage, verified publishing, online roles, the HTTP server.

The server accepts only what offline keys signed (``Publisher.publish``
verifies every role against its delegator before writing; ``publish_bundle``
does so for uploaded release bundles), publishes atomically to a local
directory or an S3 bucket (``timestamp.json`` last), keeps the online roles
signed, serves the static TUF tree to devices, knows each device by its own
key (pending, accepted, revoked), takes signed device reports, and checks a
whole repository offline (``verify_repository``).
"""

from repo_server._app import create_app
from repo_server._auth import ROLES, Principal, TokenStore
from repo_server._config import ServerLimits
from repo_server._context import RefreshStatus, ServerContext
from repo_server._devices import device_json, parse_public_key
from repo_server._devices import register as register_device
from repo_server._devices import set_status as set_device_status
from repo_server._layout import CONFIG_FILE, RepoConfig, Repository, make_storage
from repo_server._publisher import (
    Blob,
    OnlineSigners,
    Publisher,
    RepoState,
    load_state,
    target_storage_key,
)
from repo_server._releases import ReleaseResult, add_release_locally, release_catalog
from repo_server._s3 import LOCK_KEY, SSE_CHOICES, S3Location, S3Storage, is_s3_url
from repo_server._serve import ServerThread, bind_socket, check_tls, run_forever
from repo_server._storage import LocalStorage, ObjectInfo, Storage, cache_control, check_key
from repo_server._upload import UploadResult, publish_bundle
from repo_server._verify import Problem, VerifyReport, verify_repository

__all__ = [
    "CONFIG_FILE",
    "LOCK_KEY",
    "ROLES",
    "SSE_CHOICES",
    "Blob",
    "LocalStorage",
    "ObjectInfo",
    "OnlineSigners",
    "Principal",
    "Problem",
    "Publisher",
    "RefreshStatus",
    "ReleaseResult",
    "RepoConfig",
    "RepoState",
    "Repository",
    "S3Location",
    "S3Storage",
    "ServerContext",
    "ServerLimits",
    "ServerThread",
    "Storage",
    "TokenStore",
    "UploadResult",
    "VerifyReport",
    "add_release_locally",
    "bind_socket",
    "cache_control",
    "check_key",
    "check_tls",
    "create_app",
    "device_json",
    "is_s3_url",
    "load_state",
    "make_storage",
    "parse_public_key",
    "publish_bundle",
    "register_device",
    "release_catalog",
    "run_forever",
    "set_device_status",
    "target_storage_key",
    "verify_repository",
]
