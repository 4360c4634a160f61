"""User-supplied text, cleaned at input: names (organizations, datasets, nodes, jobs) and
free text (a dispute's reason, a verification note). Control characters (C0, DEL, C1) and
the invisible bidirectional controls that can make a name read as another ("Trojan
Source") are removed; templates escape what is left. A leaf: imports only the standard
library."""

import re
import unicodedata

# Bidirectional embeddings, overrides and isolates, and the marks a name has no use for.
_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
_SPACES = re.compile(r"[ \t\r\n\u00a0\u2028\u2029]+")


def _strip_controls(value: str, *, keep: str = "") -> str:
    return "".join(ch for ch in value
                   if ch in keep or (unicodedata.category(ch) != "Cc" and ch not in _BIDI
                                     and ch not in "\u2028\u2029"))


def clean_name(value: str | None) -> str:
    """A one-line name: line breaks and tabs become one space, other control and bidi
    characters go, the ends are trimmed ("Cohort\\x00 A\\n" → "Cohort A")."""
    text = _SPACES.sub(" ", str(value or ""))
    return _strip_controls(text).strip()


def clean_text(value: str | None) -> str:
    """Free text of several lines: line breaks and tabs stay (as \\n), other control and
    bidi characters go, the ends are trimmed."""
    text = str(value or "").replace("\r\n", "\n").replace("\r", "\n")
    return _strip_controls(text, keep="\n\t").strip()
