"""Schemathesis fuzzes ``/openapi.json`` against a real server on loopback.

Every check of schemathesis runs (its default: no 5xx, status codes, content
types, headers, response schemas, schema-violating requests refused, ``Allow``
on 405, ...), with an operator token for the API and an uploader token for
release uploads, on bounded examples so the run stays well under a minute.
Only "schema-valid request rejected" is switched off, per operation, where the
server checks what a JSON schema cannot state; each exception says why.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from repo_server import Repository, ServerContext, ServerThread, TokenStore, create_app
from staging import RolloutController, SqliteTrackerStore
from tests.conftest import ask

ST = Path(sys.executable).with_name("st")

# (path, method or "", why the server refuses some schema-valid requests)
SEMANTIC_CHECKS = [
    (
        "/api/v1/devices/{device_id}/reports",
        "",
        "a schema-valid report is never signed by a registered device key, and its "
        "device_id must equal the URL's",
    ),
    ("/api/v1/devices", "POST", "public_key must parse as an accepted key type and size"),
    ("/api/v1/rollouts", "POST", "wave specs, windows and thresholds are small languages"),
    (
        "/api/v1/rollouts/{rollout_id}/{action}",
        "",
        "'complete' needs a reason while the other actions do not: one path, one schema",
    ),
    ("/api/v1/releases", "", "a bundle must be a tar of metadata signed by the release keys"),
    (
        "/api/v1/alert-settings/sinks",
        "POST",
        "a webhook needs an http(s) URL and an SNS sink a topic ARN, by kind",
    ),
    (
        "/api/v1/devices/{device_id}/tags",
        "PUT",
        "a tag may not be both added and removed, and a device has at most max_tags tags",
    ),
]


def _config(operator: str, uploader: str) -> str:
    lines = [f'headers = {{ Authorization = "Bearer {operator}" }}', ""]
    for path, method, why in SEMANTIC_CHECKS:
        lines += [f"# {why}", "[[operations]]", f'include-path = "{path}"']
        if method:
            lines.append(f'include-method = "{method}"')
        if path == "/api/v1/releases":
            lines.append(f'headers = {{ Authorization = "Bearer {uploader}" }}')
        lines += ["[operations.checks.positive_data_acceptance]", "enabled = false", ""]
    return "\n".join(lines)


@pytest.fixture
def server(released_repo: Repository) -> Iterator[tuple[str, TokenStore]]:
    publisher = released_repo.publisher(ask)
    store = SqliteTrackerStore(released_repo.tracker_path)
    tokens = released_repo.token_store()
    ctx = ServerContext(publisher, store, RolloutController(store, publisher), tokens=tokens)
    with ServerThread(create_app(ctx, background=False)) as thread:
        yield thread.url, tokens
    store.close()


@pytest.mark.timeout(180)
def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    server: tuple[str, TokenStore], tmp_path: Path
) -> None:
    assert ST.exists() or shutil.which("st"), "schemathesis is in the dev extra"
    url, tokens = server
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(tokens.create("fuzz", "operator"), tokens.create("up", "uploader")))
    result = subprocess.run(
        [
            str(ST),
            "--config-file",
            str(config),
            "run",
            f"{url}/openapi.json",
            "--max-examples",
            "10",
            "--workers",
            "1",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
