"""Text from outside the project (model replies, imported files) made valid Unicode where it comes in.

Why: JSON may spell a lone UTF-16 surrogate (`"\\ud800"`), and Python keeps it in a `str` that can never
be encoded as UTF-8: the first write (the request cache, a JSONL record) then raises, the stage stops and
every re-run stops at the same reply. So every outside text passes through here once, at the boundary:
lone surrogates become U+FFFD (a surrogate pair spelt as two escapes stays the character it encodes), and
the caller records how many were replaced. Nothing past the boundary needs to care.
"""

from __future__ import annotations

import json
import re
from typing import Any

REPLACEMENT = "\ufffd"

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""A JSON escape of a UTF-16 surrogate: the only way JSON text that is itself valid yields invalid strings."""


def valid_unicode(text: str) -> tuple[str, int]:
    """`text` with every lone surrogate replaced by U+FFFD, and how many were replaced."""
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        pass
    fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return fixed, fixed.count(REPLACEMENT) - text.count(REPLACEMENT)


def valid_unicode_tree(value: Any) -> tuple[Any, int]:
    """`value` (JSON-like: dicts, lists, strings, numbers) with every string, keys too, made valid."""
    if isinstance(value, str):
        return valid_unicode(value)
    if isinstance(value, list):
        total = 0
        out = []
        for item in value:
            fixed, n = valid_unicode_tree(item)
            out.append(fixed)
            total += n
        return out, total
    if isinstance(value, dict):
        total = 0
        clean: dict[Any, Any] = {}
        for key, item in value.items():
            fixed_key, n_key = valid_unicode_tree(key)
            fixed, n = valid_unicode_tree(item)
            clean[fixed_key] = fixed
            total += n_key + n
        return clean, total
    return value, 0


def loads_untrusted(text: str | bytes) -> tuple[Any, int]:
    """`json.loads` for outside JSON: the value with valid strings only, and how many characters were replaced.

    Raises what `json.loads` raises (ValueError, RecursionError). The tree is walked only when the text
    can hold a surrogate (an escape of one, or one already in the `str`), so clean replies cost a regex scan.
    """
    data = json.loads(text)
    if isinstance(text, bytes):
        suspicious = _SURROGATE_ESCAPE.search(text.decode("utf-8", "replace")) is not None
    else:
        suspicious = _SURROGATE_ESCAPE.search(text) is not None or valid_unicode(text)[1] > 0
    if not suspicious:
        return data, 0
    return valid_unicode_tree(data)


def one_line(text: str, limit: int = 300) -> str:
    """Outside text (a foreign parser's error, a file's value) as one line of at most `limit` characters,
    for the one-line error a user sees: whitespace runs, newlines included, become one space."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
