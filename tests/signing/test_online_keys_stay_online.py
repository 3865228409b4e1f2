"""A server's online key never becomes an offline role's key.

The online keys (snapshot/timestamp, rollouts) live with the server, file and
passphrase. Made a product-line, targets or root key, one would hand a
server compromise that role: the commands refuse it in one line and change
nothing, and ``serve`` refuses to start on a repository where it happened.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from repo_server import Repository
from signing import Expiry, finished_root, load_signer, propose_rotation, sign_proposal
from tests.conftest import ask
from tufota_cli.main import main
from tufota_core import utcnow


def _tree(*roots: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def _cases(repo: Repository, tmp_path: Path) -> dict[str, list[str]]:
    r, keys, signing = str(repo.path), repo.keys_dir, repo.signing_dir
    return {
        "product-add-online": ["product", "add", "gw-300", "--repo", r, "--yes",
                               "--key", str(keys / "online.key")],
        "product-add-rollouts": ["product", "add", "gw-300", "--repo", r, "--yes",
                                 "--key", str(keys / "rollouts.key")],
        "product-rotate-online": ["product", "rotate", "gw-100", "--repo", r, "--yes",
                                  "--add-key", str(keys / "online.pub"),
                                  "--key", str(signing / "release-gw-100.key")],
        "root-rotate-rollouts": ["root", "rotate", "--repo", r, "--out", str(tmp_path / "p"),
                                 "--key", str(keys / "rollouts.pub")],
        "root-rotate-targets-online": ["root", "rotate", "--repo", r, "--out",
                                       str(tmp_path / "p"), "--targets-key",
                                       str(keys / "online.pub")],
    }  # fmt: skip


CASES = [
    "product-add-online",
    "product-add-rollouts",
    "product-rotate-online",
    "root-rotate-rollouts",
    "root-rotate-targets-online",
]


@pytest.mark.parametrize("case", CASES)
def test_an_online_key_cannot_become_an_offline_roles_key(
    case: str,
    released_repo: Repository,
    tmp_path: Path,
    passphrase_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = _cases(released_repo, tmp_path)[case]
    before = _tree(released_repo.path, released_repo.signing_dir)
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "is the server's online" in err, err
    assert _tree(released_repo.path, released_repo.signing_dir) == before
    assert not (tmp_path / "p").exists()


def test_serve_refuses_when_an_online_key_also_signs_root(
    released_repo: Repository, passphrase_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a careless ceremony could publish, bypassing the CLI's refusal."""
    state = released_repo.state()
    rollouts = released_repo.key(released_repo.config.rollouts_key)
    proposal = propose_rotation(state.root, utcnow(), Expiry(), root_keys=[rollouts.key])
    sign_proposal(proposal, load_signer(released_repo.key("root"), ask))
    sign_proposal(proposal, load_signer(rollouts, ask))
    assert released_repo.publisher(ask).publish_root(finished_root(proposal, utcnow()))
    capsys.readouterr()
    with socket.socket() as busy:  # should the refusal ever go, serving fails fast, not forever
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert main(["serve", "--repo", str(released_repo.path), "--port", port]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tufota: error: refusing to serve: the server's online key"), err
    assert "offline role root" in err
