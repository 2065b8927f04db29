"""Text from data or models made safe to print on a terminal through rich.

A case question is model-written (or comes from a file anyone may edit); printed raw, `\x1b[2J` clears the
screen and other escape sequences can recolour, retitle or rewrite what the reviewer sees. Rich strips a
few control codes but not ESC, so every such text goes through `printable` first.
"""

from __future__ import annotations

import re

from rich.markup import escape

_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""C0/C1 control characters (not tab and newline) and the bidi overrides that reorder what is shown."""


def printable(text: str) -> str:
    """`text` for a rich console: control characters shown escaped (`\\x1b`), rich markup escaped."""
    shown = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return escape(shown)
