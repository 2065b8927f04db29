"""Text from data or models made safe to show: on a terminal through rich, in a log line, in report.md.

A case question is model-written (or comes from a file anyone may edit), an endpoint's error text and a
target name are anyone's; printed raw, `\x1b[2J` clears the screen, `\x1bc` resets the terminal, and other
escape sequences can recolour, retitle or rewrite what the reader sees. Rich strips a few control codes
but not ESC, and reads `[bold red]` as markup. So there is one path: `shown` escapes control characters
(plain text: logs, Markdown), `printable` does that and escapes rich markup (console text, table titles
and cells), and `PrintableLogs` applies `shown` to every log record, so no call site can forget.
"""

from __future__ import annotations

import logging
import re

from rich.markup import escape

_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""C0/C1 control characters (not tab and newline) and the bidi overrides that reorder what is shown."""


def shown(text: str) -> str:
    """`text` with control characters shown escaped (`\\x1b`): for plain-text output (logs, Markdown)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def printable(text: str) -> str:
    """`text` for a rich console: control characters shown escaped (`\\x1b`), rich markup escaped."""
    return escape(shown(text))


class PrintableLogs(logging.Filter):
    """A handler filter that shows each log line's control characters escaped: a message may quote an
    endpoint's error body or a model's reply, and must not drive the terminal it is printed on."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = shown(text)
        if clean != text:
            record.msg, record.args = clean, None
        return True
