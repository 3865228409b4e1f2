"""The online side of tufota: storage, verified publishing, online roles, the HTTP server.

The server accepts only what offline keys signed (``Publisher.publish``
verifies every role against its delegator before writing; ``publish_bundle``
does so for uploaded release bundles), publishes atomically to a local
directory or an S3 bucket (``timestamp.json`` last), keeps the online roles
signed, serves the static TUF tree to devices, knows each device by its own
key (pending, accepted, revoked), takes signed device reports, and checks a
whole repository offline (``verify_repository``).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repo_server._app import create_app
    from repo_server._auth import ROLES, Principal, TokenStore
    from repo_server._config import ServerLimits
    from repo_server._context import RefreshStatus, ServerContext
    from repo_server._devices import device_json, parse_public_key
    from repo_server._devices import register as register_device
    from repo_server._devices import set_status as set_device_status
    from repo_server._export import OFFLINE_MANIFEST, OfflineExport, export_offline_bundle
    from repo_server._hosts import server_names
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

# Names load on first use (PEP 562), so that the base install (no fastapi,
# uvicorn, boto3 or prometheus_client) can use the repository layout, the
# publisher and the verifier; the server parts import their extra when used.
_LAZY: dict[str, tuple[str, str]] = {
    "create_app": ("repo_server._app", "create_app"),
    "ROLES": ("repo_server._auth", "ROLES"),
    "Principal": ("repo_server._auth", "Principal"),
    "TokenStore": ("repo_server._auth", "TokenStore"),
    "ServerLimits": ("repo_server._config", "ServerLimits"),
    "RefreshStatus": ("repo_server._context", "RefreshStatus"),
    "ServerContext": ("repo_server._context", "ServerContext"),
    "device_json": ("repo_server._devices", "device_json"),
    "parse_public_key": ("repo_server._devices", "parse_public_key"),
    "register_device": ("repo_server._devices", "register"),
    "set_device_status": ("repo_server._devices", "set_status"),
    "server_names": ("repo_server._hosts", "server_names"),
    "OFFLINE_MANIFEST": ("repo_server._export", "OFFLINE_MANIFEST"),
    "OfflineExport": ("repo_server._export", "OfflineExport"),
    "export_offline_bundle": ("repo_server._export", "export_offline_bundle"),
    "CONFIG_FILE": ("repo_server._layout", "CONFIG_FILE"),
    "RepoConfig": ("repo_server._layout", "RepoConfig"),
    "Repository": ("repo_server._layout", "Repository"),
    "make_storage": ("repo_server._layout", "make_storage"),
    "Blob": ("repo_server._publisher", "Blob"),
    "OnlineSigners": ("repo_server._publisher", "OnlineSigners"),
    "Publisher": ("repo_server._publisher", "Publisher"),
    "RepoState": ("repo_server._publisher", "RepoState"),
    "load_state": ("repo_server._publisher", "load_state"),
    "target_storage_key": ("repo_server._publisher", "target_storage_key"),
    "ReleaseResult": ("repo_server._releases", "ReleaseResult"),
    "add_release_locally": ("repo_server._releases", "add_release_locally"),
    "release_catalog": ("repo_server._releases", "release_catalog"),
    "LOCK_KEY": ("repo_server._s3", "LOCK_KEY"),
    "SSE_CHOICES": ("repo_server._s3", "SSE_CHOICES"),
    "S3Location": ("repo_server._s3", "S3Location"),
    "S3Storage": ("repo_server._s3", "S3Storage"),
    "is_s3_url": ("repo_server._s3", "is_s3_url"),
    "ServerThread": ("repo_server._serve", "ServerThread"),
    "bind_socket": ("repo_server._serve", "bind_socket"),
    "check_tls": ("repo_server._serve", "check_tls"),
    "run_forever": ("repo_server._serve", "run_forever"),
    "LocalStorage": ("repo_server._storage", "LocalStorage"),
    "ObjectInfo": ("repo_server._storage", "ObjectInfo"),
    "Storage": ("repo_server._storage", "Storage"),
    "cache_control": ("repo_server._storage", "cache_control"),
    "check_key": ("repo_server._storage", "check_key"),
    "UploadResult": ("repo_server._upload", "UploadResult"),
    "publish_bundle": ("repo_server._upload", "publish_bundle"),
    "Problem": ("repo_server._verify", "Problem"),
    "VerifyReport": ("repo_server._verify", "VerifyReport"),
    "verify_repository": ("repo_server._verify", "verify_repository"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'repo_server' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


__all__ = [
    "CONFIG_FILE",
    "LOCK_KEY",
    "OFFLINE_MANIFEST",
    "ROLES",
    "SSE_CHOICES",
    "Blob",
    "LocalStorage",
    "ObjectInfo",
    "OfflineExport",
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
    "export_offline_bundle",
    "is_s3_url",
    "load_state",
    "make_storage",
    "parse_public_key",
    "publish_bundle",
    "register_device",
    "release_catalog",
    "run_forever",
    "server_names",
    "set_device_status",
    "target_storage_key",
    "verify_repository",
]
