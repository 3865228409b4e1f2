"""A bundle manifest nested deeper than the JSON parser's recursion is one clear error."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from signing import read_bundle
from tufota_core import InputError


def test_a_deeply_nested_manifest_is_refused_in_one_line(tmp_path: Path) -> None:
    data = b"[" * 200_000
    bundle = tmp_path / "deep.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        info = tarfile.TarInfo("bundle.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(InputError, match=r"bundle\.json nests too deeply"), read_bundle(bundle):
        pass
