"""Neutralising untrusted text before a person reads it.

Device ids are checked, but device-supplied free text (report messages,
error reasons, tags echoed in alerts) reaches dashboards, terminals and alert
sinks. Bidirectional overrides make "evil" render as "live", and other control
characters can rewrite a terminal. Invariant: ``safe_text`` output contains no
C0/C1 control character, no bidi embedding/override/isolate
and no zero-width formatting character; each is replaced by a visible
``\\u{XXXX}`` escape, so nothing is hidden and nothing is silently dropped.
"""

from __future__ import annotations

import unicodedata

# Bidi controls: embeddings, overrides, isolates and marks (Unicode TR9).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _visible(ch: str) -> str:
    if ch in _BIDI:
        return f"\\u{{{ord(ch):04X}}}"
    category = unicodedata.category(ch)
    # Cc: control characters; Cf: format characters (zero-width joiners,
    # soft hyphens, tag characters); Cs/Co/Cn: surrogates, private, unassigned.
    if category in ("Cc", "Cf", "Cs"):
        return f"\\u{{{ord(ch):04X}}}"
    return ch


def safe_text(text: str, limit: int | None = None) -> str:
    """``text`` with every control, format and bidi character made visible.

    Args:
        text: untrusted text.
        limit: if given, the result is cut to at most this many characters
            (plus a trailing "...") so one hostile field cannot flood a view.
    """
    cleaned = "".join(_visible(ch) for ch in text)
    if limit is not None and len(cleaned) > limit:
        return cleaned[: max(limit, 0)] + "..."
    return cleaned
