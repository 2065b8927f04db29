"""Structured output: modes and their fallback, fences, the repair retry, recorded failure, cache."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel, Field

from generator.config import settings_from_dict
from generator.models import ModelHub, parse_structured, strip_fences, user_message
from generator.testing.fake_openai import Fault


class Verdict(BaseModel):
    label: str
    score: int = Field(ge=0, le=10)


def run(coro):
    return asyncio.run(coro)


async def ask_structured(settings, prompt="rate this", hub_box=None, **kw):
    async with ModelHub(settings) as hub:
        if hub_box is not None:
            hub_box.append(hub)
        return await hub.chat("judge").structured([user_message(prompt)], Verdict, **kw)


def modes(fake):
    return [(b.get("response_format") or {}).get("type", "none") for b in fake.chat_requests()]


def test_json_schema_mode_when_the_server_takes_it(fake_openai):
    fake_openai.push('{"label": "safe", "score": 3}')
    sr = run(ask_structured(fake_openai.settings(), temperature=0.2))
    assert sr.ok and sr.value == Verdict(label="safe", score=3) and sr.mode == "json_schema" and sr.attempts == 1
    [body] = fake_openai.chat_requests()
    rf = body["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["name"] == "Verdict"
    assert rf["json_schema"]["schema"]["required"] == ["label", "score"]
    assert body["messages"] == [{"role": "user", "content": "rate this"}], "json_schema mode adds no prompt text"


def test_falls_back_to_json_object_with_schema_like_llama_cpp_and_remembers(fake_openai):
    fake_openai.json_schema_status = 500  # llama.cpp's answer to json_schema
    fake_openai.on_chat(lambda body: '{"label": "unsafe", "score": 9}')
    settings = fake_openai.settings()

    async def go():
        async with ModelHub(settings) as hub:
            client = hub.chat("judge")
            first = await client.structured([user_message("a")], Verdict)
            second = await client.structured([user_message("b")], Verdict)
            return first, second

    first, second = run(go())
    assert first.ok and first.mode == "json_object" and first.attempts == 2
    assert second.ok and second.mode == "json_object" and second.attempts == 1
    assert modes(fake_openai) == ["json_schema", "json_object", "json_object"]
    body = fake_openai.chat_requests()[1]
    assert body["response_format"]["schema"]["title"] == "Verdict", "llama.cpp takes the schema under `schema`"
    assert "JSON schema" in body["messages"][-1]["content"], "json_object mode spells the schema out"
    # a new hub (a new run) remembers the mode from the cache file: no wasted json_schema request
    fake_openai.reset_counts()
    sr = run(ask_structured(settings, prompt="c"))
    assert sr.ok and modes(fake_openai) == ["json_object"]


def test_falls_back_to_instructions_when_no_json_mode_is_accepted(fake_openai):
    def script(body):
        if body.get("response_format"):
            return Fault.status(400, message="response_format is not supported")
        assert "JSON schema" in body["messages"][-1]["content"]
        return '{"label": "safe", "score": 1}'

    fake_openai.on_chat(script)
    sr = run(ask_structured(fake_openai.settings()))
    assert sr.ok and sr.mode == "instructions" and sr.attempts == 3
    assert modes(fake_openai) == ["json_schema", "json_object", "none"]


def test_an_endpoint_declared_without_json_schema_starts_at_json_object(fake_openai):
    data = fake_openai.settings().model_dump()
    data["endpoints"]["fake"]["supports_json_schema"] = False
    fake_openai.push('{"label": "safe", "score": 0}')
    sr = run(ask_structured(settings_from_dict(data)))
    assert sr.ok and modes(fake_openai) == ["json_object"]


def test_transient_5xx_in_a_known_mode_is_retried_not_downgraded(fake_openai):
    data = fake_openai.settings().model_dump()
    data["endpoints"]["fake"]["supports_json_schema"] = True
    fake_openai.push(Fault.status(502), '{"label": "x", "score": 2}')
    sr = run(ask_structured(settings_from_dict(data)))
    assert sr.ok and sr.mode == "json_schema" and modes(fake_openai) == ["json_schema", "json_schema"]


def test_code_fences_are_stripped():
    assert strip_fences('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_fences('```\n{"a": 1}```') == '{"a": 1}'
    assert strip_fences('  {"a": 1} ') == '{"a": 1}'
    value, err = parse_structured(
        'Sure! Here it is:\n```json\n{"label": "ok", "score": 2}\n```\nAnything else?', Verdict
    )
    assert value == Verdict(label="ok", score=2) and err is None


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("", "empty"),
        ("not json at all", "not valid JSON"),
        ("[1, 2]", "not an object"),
        ('{"label": "x"}', "field score: Field required"),
        ('{"label": "x", "score": 99}', "field score"),
        ('{"label": "x", "score": "high"}', "field score"),
    ],
)
def test_invalid_replies_say_why(reply, reason):
    value, err = parse_structured(reply, Verdict)
    assert value is None and reason in err


def test_repair_retry_shows_the_validation_error_and_succeeds(fake_openai):
    fake_openai.push('```json\n{"label": "safe", "score": 42}\n```', '{"label": "safe", "score": 4}')
    sr = run(ask_structured(fake_openai.settings()))
    assert sr.ok and sr.value.score == 4 and sr.attempts == 2
    repair = fake_openai.chat_requests()[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": '```json\n{"label": "safe", "score": 42}\n```'}
    assert "field score" in repair[-1]["content"] and "less than or equal to 10" in repair[-1]["content"]


def test_after_one_repair_the_failure_is_recorded_never_defaulted(fake_openai):
    fake_openai.on_chat(lambda body: '{"label": "safe"}')
    sr = run(ask_structured(fake_openai.settings()))
    assert sr.value is None and sr.attempts == 2 and fake_openai.hits == 2
    assert "no valid Verdict after one repair retry" in sr.error and "field score" in sr.error
    assert sr.raw == '{"label": "safe"}'


def test_request_failure_is_recorded(fake_openai):
    data = fake_openai.settings().model_dump()
    data["endpoints"]["fake"]["supports_json_schema"] = True
    fake_openai.on_chat(lambda body: Fault.status(500))
    sr = run(ask_structured(settings_from_dict(data)))
    assert sr.value is None and sr.error.startswith("request failed: HTTP 500")


def test_structured_rerun_is_free_and_bypass_works(fake_openai):
    fake_openai.json_schema_status = 500
    fake_openai.push('{"label": "a", "score": 11}')  # forces a repair on the first run
    fake_openai.on_chat(lambda body: '{"label": "a", "score": 1}')
    settings = fake_openai.settings()
    first = run(ask_structured(settings, sample_index=0))
    hits = fake_openai.hits
    assert first.ok and hits == 3
    again = run(ask_structured(settings, sample_index=0))
    assert again.cached and again.value == first.value and again.attempts == 0 and fake_openai.hits == hits
    other_sample = run(ask_structured(settings, sample_index=1))
    assert other_sample.ok and not other_sample.cached and fake_openai.hits == hits + 1
    run(ask_structured(settings, sample_index=0, use_cache=False))
    assert fake_openai.hits == hits + 2


def test_usage_of_all_attempts_is_counted(fake_openai):
    fake_openai.push('{"label": "a"}', '{"label": "a", "score": 1}')
    box = []
    sr = run(ask_structured(fake_openai.settings(), hub_box=box))
    bodies = fake_openai.chat_requests()
    assert sr.usage.completion_tokens == 2 + 4  # words of both replies, as the fake server counts
    assert box[0].usage["judge:fake"] == sr.usage
    assert json.dumps(bodies[0]["messages"])  # sent bodies are plain JSON
