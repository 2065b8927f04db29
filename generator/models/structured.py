"""Structured output: ask for JSON matching a pydantic model, parse it strictly, say clearly when it fails.

Why three request shapes: servers differ. OpenAI and vLLM take `response_format: json_schema`;
llama.cpp answers that with HTTP 500 but takes `{"type": "json_object", "schema": ...}`; some servers
take neither, and then the schema goes into the prompt. The client tries them in that order and
remembers per endpoint which one worked. Whatever the shape, the reply is validated with pydantic;
one repair retry shows the model its error; after that the result is a recorded failure, never a
default value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from generator.models.messages import Message
from generator.prompts import load_prompt
from generator.records import Usage
from generator.untrusted import loads_untrusted

T = TypeVar("T", bound=BaseModel)

MODES = ("json_schema", "json_object", "instructions")
"""Request shapes, most to least constrained; the fallback order."""


@dataclass
class StructuredResult(Generic[T]):
    """A validated value, or None with `error` saying why (the raw reply kept for the record)."""

    value: T | None
    error: str | None = None
    raw: str | None = None
    usage: Usage = field(default_factory=Usage)
    attempts: int = 0
    """Chat requests this result took (a cache hit of the final result: 0)."""
    cached: bool = False
    mode: str | None = None
    """The request shape that produced the reply (`json_schema`, `json_object`, `instructions`)."""

    @property
    def ok(self) -> bool:
        return self.value is not None


def next_mode(mode: str) -> str | None:
    i = MODES.index(mode)
    return MODES[i + 1] if i + 1 < len(MODES) else None


def schema_name(schema: type[BaseModel]) -> str:
    """A name OpenAI accepts for `json_schema.name` (letters, digits, `_`, `-`; at most 64)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", schema.__name__)[:64] or "reply"


def response_format(mode: str, schema: type[BaseModel] | str, schema_json: dict) -> dict[str, Any]:
    """The request fields for a mode (`{}` for `instructions`); `schema` a pydantic model or a schema name."""
    if mode == "json_schema":
        name = schema if isinstance(schema, str) else schema_name(schema)
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema_json, "strict": False},
            }
        }
    if mode == "json_object":
        return {"response_format": {"type": "json_object", "schema": schema_json}}
    return {}


CONSTRAINED_MODES = ("json_schema", "json_object")
"""The modes where the server itself holds the reply to the schema (constrained decoding)."""


def _append_to_last_user(messages: list[Message], text: str) -> list[Message]:
    """A copy of `messages` with `text` added to the last user turn (or as a new user turn)."""
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        msg = out[i]
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            out[i] = {**msg, "content": content + "\n\n" + text}
        else:
            out[i] = {**msg, "content": [*(content or []), {"type": "text", "text": text}]}
        return out
    return out + [{"role": "user", "content": text}]


def with_schema_instructions(messages: list[Message], schema_json: dict, mode: str) -> list[Message]:
    """Messages for a mode: `json_object` and `instructions` spell the schema out in the prompt
    (json_object needs the word JSON for OpenAI; small models need the shape); `json_schema` does not."""
    if mode == "json_schema":
        return list(messages)
    text = load_prompt("json_reply").render(schema=json.dumps(schema_json, ensure_ascii=False))
    return _append_to_last_user(messages, text)


def repair_message(error: str, schema_json: dict) -> Message:
    text = load_prompt("json_repair").render(error=error, schema=json.dumps(schema_json, ensure_ascii=False))
    return {"role": "user", "content": text}


_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```\s*$", re.DOTALL)
_INNER_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n(.*?)\n?```", re.DOTALL)


def strip_fences(text: str) -> str:
    """The JSON inside a reply wrapped in ``` fences (``` or ```json); the text itself otherwise."""
    m = _FENCE.match(text)
    return m.group(1).strip() if m else text.strip()


def _json_candidates(text: str) -> list[str]:
    """Where the JSON may be: the whole (unfenced) reply, a fenced block inside prose, or the span from
    the first `{` to the last `}`. Only ever one object is taken; the text never steers anything else."""
    first = strip_fences(text)
    out = [first]
    m = _INNER_FENCE.search(text)
    if m:
        out.append(m.group(1).strip())
    start, end = first.find("{"), first.rfind("}")
    if 0 <= start < end:
        out.append(first[start : end + 1])
    return out


def _summarise(exc: ValidationError, limit: int = 6) -> str:
    parts = []
    for e in exc.errors()[:limit]:
        loc = ".".join(str(x) for x in e.get("loc", ())) or "(object)"
        parts.append(f"field {loc}: {e.get('msg')}")
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def parse_structured(text: str | None, schema: type[T]) -> tuple[T | None, str | None]:
    """(value, None) when `text` holds one JSON object valid for `schema`; else (None, the reason)."""
    if text is None or not text.strip():
        return None, "the reply was empty"
    data: Any = None
    decode_error: ValueError | str | None = None
    for candidate in _json_candidates(text):
        try:
            data, _ = loads_untrusted(candidate)  # an escaped lone surrogate must not reach a record
            break
        except ValueError as exc:
            decode_error = decode_error or exc
        except RecursionError:
            decode_error = decode_error or "nested too deeply to read"
    else:
        return None, f"the reply is not valid JSON ({decode_error})"
    if not isinstance(data, dict):
        return None, f"the reply is JSON but not an object (got {type(data).__name__})"
    try:
        return schema.model_validate(data), None
    except ValidationError as exc:
        return None, f"the JSON does not match the schema: {_summarise(exc)}"
