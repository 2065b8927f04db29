"""A scripted "model" that plays every role of the pipeline on the loopback server.

Used by the end-to-end tests of `siuo run` (in-process, and in a separate server process for the
kill-and-resume test): it reads what each request asks for and answers in the shape that task needs.
Deterministic: the same request always gets the same reply, so an interrupted run and an uninterrupted
run see the same "model".

- structured requests (a JSON schema in `response_format`): an instance of the schema, with varied
  words drawn from a hash of the request, so proposals are not near-duplicates of each other;
  a hazard check with the image says "unsafe" (the pair carries the hazard), without it "safe"
  (no leakage); a hazard match is 0.9;
- judge prompts (`VERDICT-<token>: ...` options in the prompt): a verdict chosen by a hash of the request,
  written with the prompt's token;
- anything else is a target's answer; an MCQA prompt gets a letter.

    python -m generator.testing.pipeline_script --port 0     # prints the base URL, serves until killed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from typing import Any

from generator.testing.fake_openai import FakeOpenAI, has_image, last_user_text

WORDS = (
    "harbour lantern quarry orchard glacier meadow tram bakery attic canal ferry vineyard lighthouse "
    "workshop pharmacy stadium market rooftop subway library garden kitchen garage bridge museum "
    "tunnel balcony cellar forest river beach mountain desert island village factory hospital school "
    "temple chapel courtyard alley plaza pier dock warehouse greenhouse barn stable pond lake cliff "
    "volcano canyon prairie jungle swamp tundra reef lagoon delta valley ridge summit plateau marsh"
).split()


def _digest(*parts: Any) -> int:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def _words(seed: int, n: int) -> str:
    out, x = [], seed
    for _ in range(n):
        out.append(WORDS[x % len(WORDS)])
        x = x // len(WORDS) + 7919 * (x % 104729) + 1
    return " ".join(out)


def _instance(schema: dict, defs: dict, seed: int, name: str = "") -> Any:
    """A value valid for `schema` (the subset pydantic emits: objects, arrays, strings, numbers, refs)."""
    if "$ref" in schema:
        return _instance(defs[schema["$ref"].split("/")[-1]], defs, seed, name)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return _instance(options[0], defs, seed, name)
    if "enum" in schema:
        return schema["enum"][seed % len(schema["enum"])]
    kind = schema.get("type", "object")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _instance(v, defs, _digest(seed, k), k) for k, v in props.items()}
    if kind == "array":
        n = max(schema.get("minItems", 3), 3)
        return [_instance(schema.get("items", {"type": "string"}), defs, _digest(seed, i), name) for i in range(n)]
    if kind == "boolean":
        return False
    if kind in ("number", "integer"):
        lo, hi = schema.get("minimum", 0), schema.get("maximum", 1)
        return lo + (hi - lo) * 0.9 if kind == "number" else int(lo)
    # the field's name after the words, as a finished sentence (`name: words` is what check well_formed rejects)
    return f"{_words(seed, 10)} ({name.replace('_', ' ')})." if name else _words(seed, 10)


def _schema_of(body: dict) -> tuple[str, dict] | None:
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        js = rf.get("json_schema") or {}
        return js.get("name", ""), js.get("schema") or {}
    if rf.get("type") == "json_object" and isinstance(rf.get("schema"), dict):
        return rf["schema"].get("title", ""), rf["schema"]
    return None


def _all_text(body: dict) -> str:
    parts = []
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
    return "\n".join(parts)


VERDICT_OPTIONS = re.compile(r"^VERDICT(-[0-9A-F]+)?: ([A-Z]+)\s*$", re.MULTILINE)


def respond(body: dict) -> str | list[str]:
    """The reply to one chat request (a list of replies when `n` > 1)."""
    seed = _digest(body.get("messages"), body.get("model"))
    schema = _schema_of(body)
    if schema is not None:
        name, sch = schema
        props = sch.get("properties", {})
        if set(props) >= {"unsafe", "hazard"} and len(props) <= 3:
            unsafe = has_image(body)
            return json.dumps(
                {"unsafe": unsafe, "hazard": "the pair implies a real risk to the user" if unsafe else ""}
            )
        if "match" in props:
            return json.dumps({"match": 0.9, "reason": "names the same risk"})
        return json.dumps(_instance(sch, sch.get("$defs", {}), seed, name))
    text = _all_text(body)
    options = VERDICT_OPTIONS.findall(text)
    n = int(body.get("n") or 1)
    if options:
        token, word = options[seed % len(options)]
        return f"The response was read as data.\nVERDICT{token}: {word}"
    if "option" in last_user_text(body).lower() and re.search(r"^\(?[A-D][).:]", text, re.MULTILINE):
        return [f"The answer is ({'ABCD'[(seed + i) % 4]})." for i in range(n)]
    return [f"Answer {i}: be careful; {_words(seed + i, 8)}." for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve the scripted pipeline model on the loopback interface.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args(argv)
    fake = FakeOpenAI(port=args.port, latency=args.latency)
    fake.on_chat(respond)
    fake.serve_forever()


if __name__ == "__main__":  # pragma: no cover
    main()
