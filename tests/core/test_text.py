"""safe_text: untrusted text shown to people hides nothing and rewrites nothing."""

from __future__ import annotations

import pytest

from tufota_core import safe_text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("live", "live"),
        ("\u202eevil", "\\u{202E}evil"),  # right-to-left override
        ("a\u2066b\u2069", "a\\u{2066}b\\u{2069}"),  # isolates
        ("x\u200by", "x\\u{200B}y"),  # zero-width space
        ("\x1b[31mred", "\\u{001B}[31mred"),  # terminal escape
        ("line\nbreak", "line\\u{000A}break"),
        ("caf\u00e9 \u65e5\u672c", "caf\u00e9 \u65e5\u672c"),  # letters stay letters
    ],
)
def test_control_and_bidi_characters_become_visible_escapes(raw: str, shown: str) -> None:
    assert safe_text(raw) == shown


def test_long_text_is_cut_with_a_marker() -> None:
    assert safe_text("a" * 50, limit=10) == "a" * 10 + "..."
    assert safe_text("short", limit=10) == "short"
