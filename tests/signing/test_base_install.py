"""The base install (``pip install tufota``, no extras) signs: a 2-of-3 root ceremony and a release.

A fresh virtual environment gets the package from a copy of this checkout
with pip and no extras (its dependencies come from the package index), so
fastapi, uvicorn, boto3 and prometheus_client are absent. Every command then
runs as a separate process of that environment, as on an air-gapped signing
workstation. Marked ``base_install`` (registered in pyproject.toml); it runs
in the normal suite and takes about half a minute, most of it pip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "tufota_core", "tufota_cli", "signing",
           "repo_server", "staging", "device_agent")  # fmt: skip
SERVER_PACKAGES = ("fastapi", "uvicorn", "boto3", "prometheus_client")
KEY_NAMES = ("ALICE", "BOB", "CAROL", "ROOT", "TARGETS", "ONLINE", "ROLLOUTS", "RELEASE_GW_100")
PASSPHRASES = {f"TUFOTA_PASSPHRASE_{name}": f"{name.lower()} passphrase 42" for name in KEY_NAMES}


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("base-install")
    source = work / "tufota"
    source.mkdir()
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, source / name)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # This environment's pip installs into the new one: no extras, dependencies from the index.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         str(source)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return venv


@pytest.mark.base_install
def test_base_install_runs_a_root_ceremony_and_signs_a_release(
    base_venv: Path, tmp_path: Path
) -> None:
    python = str(base_venv / "bin" / "python")
    for package in SERVER_PACKAGES:
        probe = subprocess.run([python, "-c", f"import {package}"], capture_output=True)
        assert probe.returncode != 0, f"{package} is in the base install"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUFOTA_PASSPHRASE")}
    env.update(PASSPHRASES)
    env["PATH"] = f"{base_venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    def tufota(*argv: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(base_venv / "bin" / "tufota"), *argv],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode == code, f"tufota {' '.join(argv)}: {done.stdout}{done.stderr}"
        assert "Traceback" not in done.stderr
        return done

    for holder in ("alice", "bob", "carol"):
        tufota("key", "generate", "--out", holder)
    tufota("init", "repo")
    tufota("root", "rotate", "--repo", "repo", "--threshold", "2", "--key", "alice.pub",
           "--key", "bob.pub", "--key", "carol.pub", "--out", "root-v2.json")  # fmt: skip
    shutil.copy(tmp_path / "root-v2.json", tmp_path / "carol-copy.json")
    tufota("root", "sign", "root-v2.json", "--key", "repo-signing/root.key",
           "--key", "alice.key", "--yes")  # fmt: skip
    tufota("root", "sign", "carol-copy.json", "--key", "carol.key", "--yes")
    tufota("root", "merge", "root-v2.json", "carol-copy.json", "--out", "root-v2.signed")
    status = tufota("root", "status", "root-v2.signed", "--check")
    assert "root v2: 2 of 2 required signatures" in status.stdout
    tufota("root", "publish", "root-v2.signed", "--repo", "repo")

    tufota("product", "add", "gw-100", "--repo", "repo", "--yes")
    (tmp_path / "fw.img").write_bytes(b"base install firmware\n" * 100)
    signed = tufota("release", "sign", "fw.img", "--hardware", "gw-100", "--version", "1.0.0",
                    "--key", "repo-signing/release-gw-100.key", "--metadata", "repo/public",
                    "--root", "repo-signing/root.json", "--out", "b.tar.gz", "--yes")  # fmt: skip
    assert "1 of 1 signature(s)" in signed.stdout
    verified = tufota("release", "verify", "b.tar.gz", "--repo", "repo")
    assert "b.tar.gz: OK" in verified.stdout
    tufota("expiry", "check", "--repo", "repo")

    stub = tufota("token", "list", "--repo", "repo", code=1)
    assert stub.stderr.startswith("tufota: error: 'tufota token' needs ")
    assert stub.stderr.endswith(": pip install 'tufota[server]'\n")
    assert len(stub.stderr.splitlines()) == 1
    refused = tufota("serve", "--repo", "repo", code=1)
    assert refused.stderr.strip().splitlines() == [
        "tufota: error: 'tufota serve' needs uvicorn, which the base install leaves out: "
        "pip install 'tufota[server]'"
    ]
