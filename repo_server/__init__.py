"""The online side of tufota: storage, verified publishing, online roles, the HTTP server.

The server accepts only what offline keys signed (``Publisher.publish``
verifies every role against its delegator before writing), publishes
atomically (``timestamp.json`` last), signs the online roles, serves the static
TUF tree to devices, and takes signed device reports.
"""

from repo_server._app import create_app
from repo_server._auth import ROLES, Principal, TokenStore
from repo_server._context import ServerContext
from repo_server._layout import CONFIG_FILE, RepoConfig, Repository
from repo_server._publisher import (
    Blob,
    OnlineSigners,
    Publisher,
    RepoState,
    load_state,
    target_storage_key,
)
from repo_server._releases import ReleaseResult, add_release_locally
from repo_server._serve import ServerThread, bind_socket, run_forever
from repo_server._storage import LocalStorage, ObjectInfo, Storage, check_key

__all__ = [
    "CONFIG_FILE",
    "ROLES",
    "Blob",
    "LocalStorage",
    "ObjectInfo",
    "OnlineSigners",
    "Principal",
    "Publisher",
    "ReleaseResult",
    "RepoConfig",
    "RepoState",
    "Repository",
    "ServerContext",
    "ServerThread",
    "Storage",
    "TokenStore",
    "add_release_locally",
    "bind_socket",
    "check_key",
    "create_app",
    "load_state",
    "run_forever",
    "target_storage_key",
]
