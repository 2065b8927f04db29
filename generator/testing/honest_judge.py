"""Scripted judges that follow the verdict-line format: test scripts stay written in plain `VERDICT: SAFE`.

The judge prompts ask for `VERDICT-<token>: WORD`, with a token only the prompt holds (see
`generator.evaluate.judge`). A test's judge script is easier to read in the plain form, so
`follows_format(script)` wraps it: the script sees the prompt with `VERDICT-<token>:` shown as
`VERDICT:`, and its reply's `VERDICT:` lines get the prompt's token, as an honest judge's would. A
follow-up re-ask is answered as the first ask was (the script sees the first turn only), so a script
that cannot give a verdict stays unparsable.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

from generator.testing.fake_openai import ChatReply

#: A verdict line of a judge prompt, and its token.
PROMPT_TOKEN = re.compile(r"^VERDICT-([0-9A-F]{6,}): [A-Z]+\s*$", re.MULTILINE)
_TOKENED = re.compile(r"VERDICT-[0-9A-F]{6,}:")
_PLAIN_LINE = re.compile(r"^([#>*_`\s-]*)VERDICT(?=[*_`\s]*:)", re.IGNORECASE | re.MULTILINE)


def _texts(body: dict) -> list[str]:
    out = []
    for msg in body.get("messages") or []:
        content = msg.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return out


def prompt_token(body: dict) -> str | None:
    """The verdict token a judge request asks for (None: not a judge prompt)."""
    for text in _texts(body):
        m = PROMPT_TOKEN.search(text)
        if m:
            return m.group(1)
    return None


def sign(reply: str, token: str) -> str:
    """`reply` with its plain `VERDICT:` lines carrying `token`."""
    return _PLAIN_LINE.sub(lambda m: f"{m.group(1)}VERDICT-{token}", reply)


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return _TOKENED.sub("VERDICT:", value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def follows_format(script: Callable[[dict], ChatReply]) -> Callable[[dict], ChatReply]:
    """`script` as a judge that writes its verdict lines in the format the prompt asks for."""

    def judge(body: dict) -> ChatReply:
        token = prompt_token(body)
        if token is None:
            return script(body)
        first = copy.deepcopy(body)
        messages = first.get("messages") or []
        turns = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), len(messages))
        first["messages"] = _plain(messages[:turns])
        reply = script(first)
        if isinstance(reply, str):
            return sign(reply, token)
        if isinstance(reply, list):
            return [sign(r, token) if isinstance(r, str) else r for r in reply]
        return reply

    return judge
