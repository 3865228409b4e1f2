"""Hostile archives against the real server process: refused early, short answers, bounded memory.

The server runs in its own process so its peak resident memory (``VmHWM``)
can be read from /proc before and after the bombs. Each bomb is a few hundred
KiB to 1 MiB of gzip (concatenated gzip members, as tar.gz readers accept)
that claims hundreds of MiB once unpacked.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from repo_server import Repository
from tests.conftest import PASSPHRASE

_MiB = 1024 * 1024
_SERVER = """
import json, sys
from pathlib import Path
from repo_server import Repository, ServerContext, ServerThread, TokenStore, create_app
from staging import RolloutController, SqliteTrackerStore
repo = Repository.open(Path(sys.argv[1]))
publisher = repo.publisher(lambda: sys.argv[2])
store = SqliteTrackerStore(repo.tracker_path)
tokens = repo.token_store()
token = tokens.create("bombs", "uploader")
ctx = ServerContext(publisher, store, RolloutController(store, publisher), tokens=tokens)
with ServerThread(create_app(ctx, background=False)) as thread:
    print(json.dumps({"port": thread.port, "token": token}), flush=True)
    sys.stdin.read()
"""


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    url: str
    token: str

    def peak_rss(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    def upload(self, body: Path) -> requests.Response:
        with body.open("rb") as f:
            return requests.post(
                f"{self.url}/api/v1/releases",
                data=f,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=60,
            )


@pytest.fixture
def server_process(released_repo: Repository) -> Iterator[ServerProcess]:
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(released_repo.path), PASSPHRASE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=released_repo.path,
    )
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        yield ServerProcess(process, f"http://127.0.0.1:{info['port']}", info["token"])
    finally:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.close()
        process.wait(timeout=20)
        process.stdout.close()


def _header(name: str, size: int, kind: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _write(out: Path, parts: list[tuple[bytes, int]]) -> Path:
    """A tar.gz of ``(bytes, repeat)`` parts, each repeated part compressed once."""
    with out.open("wb") as f:
        for data, repeat in parts:
            member = gzip.compress(data, mtime=0)
            for _ in range(repeat):
                f.write(member)
    return out


def _padded(header: bytes, payload_block: bytes, payload_size: int) -> list[tuple[bytes, int]]:
    assert payload_size % len(payload_block) == 0
    return [(header, 1), (payload_block, payload_size // len(payload_block))]


def _end(name: str = "bundle.json") -> list[tuple[bytes, int]]:
    return [(_header(name, 0, tarfile.REGTYPE) + bytes(1024), 1)]


def long_name_bomb(tmp: Path) -> Path:
    size = 256 * _MiB
    return _write(
        tmp / "longname.tar.gz",
        _padded(_header("././@LongLink", size, tarfile.GNUTYPE_LONGNAME), b"a" * _MiB, size)
        + _end(),
    )


def pax_bomb(tmp: Path) -> Path:
    size = 256 * _MiB
    record_head = f"{size} path=".encode()
    first = record_head + b"a" * (_MiB - len(record_head))
    parts = [
        (_header("pax", size, tarfile.XHDTYPE), 1),
        (first, 1),
        (b"a" * _MiB, size // _MiB - 2),
        (b"a" * (_MiB - 1) + b"\n", 1),
    ]
    return _write(tmp / "pax.tar.gz", parts + _end())


def metadata_members(tmp: Path) -> Path:
    parts: list[tuple[bytes, int]] = []
    for i in range(12):
        parts += _padded(
            _header(f"metadata/role-{i}.json", 32 * _MiB, tarfile.REGTYPE), b" " * _MiB, 32 * _MiB
        )
    return _write(tmp / "metadata.tar.gz", parts + _end())


def zero_blob(tmp: Path) -> Path:
    size = 1024 * _MiB
    name = "targets/firmware/gw-100/9.9.9/zero.img"
    return _write(
        tmp / "zero.tar.gz",
        _padded(_header(name, size, tarfile.REGTYPE), bytes(_MiB), size) + _end(),
    )


BOMBS = {
    "long_name": (long_name_bomb, "GNU long name header"),
    "pax": (pax_bomb, "pax header"),
    "metadata_members": (metadata_members, "compression bomb"),
    "zero_blob": (zero_blob, "compression bomb"),
}


def test_tar_bombs_are_refused_early_with_short_answers_and_bounded_memory(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    # Warm up: one ordinary refused upload, so imports and buffers are counted.
    small = _write(tmp_path / "small.tar.gz", _end("junk"))
    assert server_process.upload(small).status_code == 400
    before = server_process.peak_rss()
    for name, (make, expected) in BOMBS.items():
        bomb = make(tmp_path)
        assert bomb.stat().st_size < 2 * _MiB, name
        start = time.monotonic()
        response = server_process.upload(bomb)
        elapsed = time.monotonic() - start
        assert response.status_code == 400, (name, response.text[:300])
        assert len(response.content) < 400, name
        assert expected in response.json()["message"], (name, response.text)
        assert elapsed < 15, (name, elapsed)
    growth = server_process.peak_rss() - before
    assert growth < 48 * _MiB, f"server peak memory grew {growth // _MiB} MiB"
