"""The model door against a real local model: SmolLM2-135M-Instruct under llama.cpp's OpenAI server.

What a fake server cannot show: a real server's quirks. llama.cpp ignores `n` (one choice back) and
answers `json_schema` with HTTP 500 while taking `json_object` + `schema`; the door must cope with both.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel

from generator.config import settings_from_dict
from generator.models import ModelHub, system_message, user_message
from generator.store import RunStore
from generator.testing.smollm2 import MODEL_ID

pytestmark = pytest.mark.integration


class Capital(BaseModel):
    country: str
    capital: str


def make_settings(base_url, cache_path):
    return settings_from_dict(
        {
            "endpoints": {
                "smol": {
                    "base_url": base_url,
                    "model": MODEL_ID,
                    "retry_base_delay_s": 0.05,
                    "timeout_s": 60,
                    "max_concurrency": 2,
                    "price_input_per_1k": 0.001,
                    "price_output_per_1k": 0.002,
                }
            },
            "roles": {"judge": "smol", "proposer": "smol"},
            "cache": {"path": str(cache_path)},
        }
    )


def test_smollm2_chat_n_structured_usage_and_cache(smollm2_server, tmp_path):
    settings = make_settings(smollm2_server, tmp_path / "cache.sqlite")
    store = RunStore.open("smol", root=tmp_path)

    async def session():
        async with ModelHub(settings, store=store) as hub:
            chat = hub.chat("proposer")
            [plain] = await chat.complete(
                [system_message("You are a helpful assistant."), user_message("What is the capital of France?")],
                temperature=0.0,
                seed=7,
                max_tokens=24,
            )
            samples = await chat.complete([user_message("Name a colour.")], n=3, temperature=0.9, max_tokens=12)
            structured = await hub.chat("judge").structured(
                [user_message("What is the capital of France? Give the country and its capital.")],
                Capital,
                temperature=0.0,
                seed=7,
                max_tokens=60,
            )
            return plain, samples, structured, hub.usage, hub.runtime("smol")

    plain, samples, structured, usage, runtime = asyncio.run(session())

    # Wire behaviour only: a 135M model may not know the capital of France (it once answered "la femme
    # de france"), so its words are never asserted, just that an answer came back within max_tokens.
    assert plain.ok and plain.text.strip()
    assert plain.usage.prompt_tokens > 5 and 0 < plain.usage.completion_tokens <= 24

    assert [s.sample_index for s in samples] == [0, 1, 2] and all(s.ok and s.text.strip() for s in samples)
    assert runtime.supports_n is False, "llama.cpp answers one choice for n=3: the door asked per sample"

    assert structured.ok, structured.error
    assert structured.mode == "json_object", "json_schema gets HTTP 500 here; json_object + schema works"
    assert isinstance(structured.value, Capital) and structured.value.capital.strip()
    assert runtime.structured_mode == "json_object"

    spent = plain.usage + structured.usage
    for s in samples:
        spent = spent + s.usage
    assert usage["proposer"].prompt_tokens + usage["judge:smol"].prompt_tokens == spent.prompt_tokens
    assert usage["proposer"].completion_tokens + usage["judge:smol"].completion_tokens == spent.completion_tokens
    assert usage["proposer"].cost_usd > 0
    manifest = json.loads((store.path / "run.json").read_text())
    assert manifest["usage"]["judge:smol"]["completion_tokens"] == usage["judge:smol"].completion_tokens

    # A re-run is free: everything comes from the cache, nothing new is booked.
    plain2, samples2, structured2, usage2, _ = asyncio.run(session())
    assert plain2.cached and plain2.text == plain.text
    assert all(s.cached for s in samples2) and [s.text for s in samples2] == [s.text for s in samples]
    assert structured2.cached and structured2.value == structured.value
    assert usage2 == {}
