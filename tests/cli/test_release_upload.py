"""``tufota release sign`` + ``release upload`` against a real server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from repo_server import Repository, ServerThread, create_app
from tests.conftest import ask
from tufota_cli.main import main
from tufota_cli.repo_cmds import build_context


def test_signed_bundle_is_uploaded_once_and_bad_tokens_are_refused(
    released_repo: Repository,
    tmp_path: Path,
    passphrase_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tokens = released_repo.token_store()
    uploader = tokens.create("ci", "uploader")
    viewer = tokens.create("dash", "viewer")
    image = tmp_path / "fw-2.0.0.img"
    image.write_bytes(b"release 2.0.0\n" * 500)
    bundle = tmp_path / "rel.tar.gz"
    assert main(["release", "sign", str(image), "--hardware", "gw-100", "--version", "2.0.0",
                 "--key", str(released_repo.signing_dir / "release-gw-100.key"), "--repo",
                 str(released_repo.path), "--out", str(bundle), "--yes"]) == 0  # fmt: skip
    capsys.readouterr()
    ctx = build_context(released_repo, ask)
    try:
        with ServerThread(create_app(ctx, background=False)) as server:
            upload = ["release", "upload", str(bundle), "--server", server.url, "--token"]
            before = released_repo.storage.list("")
            assert main([*upload, viewer]) == 3  # refused by authorisation
            assert "403" in capsys.readouterr().err
            assert main([*upload, "tfo_0_bogus"]) == 3
            assert "401" in capsys.readouterr().err
            assert released_repo.storage.list("") == before

            assert main([*upload, uploader]) == 0
            assert "published" in capsys.readouterr().out
            assert main([*upload, uploader]) == 0
            assert "already published" in capsys.readouterr().out
    finally:
        ctx.store.close()
    targets = released_repo.state().roles["firmware-gw-100"].signed.targets
    assert "firmware/gw-100/2.0.0/fw-2.0.0.img" in targets
