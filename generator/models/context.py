"""Requests that fit the model's context window (an endpoint's `context_window`).

A server answers a request whose prompt plus `max_tokens` exceeds its window with HTTP 400 (llama.cpp
serving SmolLM2 has 2048 tokens; `harden` once asked for 2471 + 1500). The door never sends such a request:
the prompt is measured before sending, `max_tokens` is lowered to the room left, and a prompt that leaves
less than `MIN_REPLY_TOKENS` is a recorded failure of that request, never a call. Stages with optional
prompt parts (few-shot examples in `propose`) drop them first, with `fits`.

Without the server's tokenizer the prompt is estimated from its UTF-8 size. Before the endpoint has
answered, at `BYTES_PER_TOKEN` = 3, which over-counts English (about 4 characters per token for BPE
tokenizers) and roughly matches CJK text (3 bytes, about one token, per character). Every reply then tells
the real prompt token count, and the highest tokens-per-byte seen so far (`TokenRate`) replaces the guess:
the estimate errs towards a shorter reply, never an overflow.
"""

from __future__ import annotations

import json
import math
from typing import Any

from generator.config import Endpoint
from generator.models.messages import Message, count_images, message_texts
from generator.models.usage import IMAGE_TOKENS_ESTIMATE

BYTES_PER_TOKEN = 3.0
PER_MESSAGE_TOKENS = 8
"""Chat-template tokens around each message (role markers, separators)."""
MIN_REPLY_TOKENS = 64
"""A request that leaves less room than this for the reply is not sent."""


class DoesNotFit(ValueError):
    """The prompt alone leaves no useful room for a reply in the endpoint's context window."""


class TokenRate:
    """Prompt tokens per UTF-8 byte of one endpoint's tokenizer, learnt from the token counts it reports:
    the highest rate seen (plus 5 %), or 1 / BYTES_PER_TOKEN before any reply."""

    def __init__(self, cache: Any = None, meta_name: str = "") -> None:
        self._cache, self._meta_name = cache, meta_name
        remembered = cache.get_meta(meta_name) if cache is not None and meta_name else None
        self.per_byte: float | None = float(remembered) if remembered else None

    def learn(self, messages: list[Message], prompt_tokens: int) -> None:
        if prompt_tokens <= 0 or count_images(messages):
            return  # image tokens are a guess: they would spoil the text rate
        text_bytes = len(message_texts(messages).encode("utf-8"))
        if text_bytes >= 200:  # short prompts are mostly chat-template tokens
            rate = 1.05 * max(0, prompt_tokens - PER_MESSAGE_TOKENS * len(messages)) / text_bytes
            if rate > (self.per_byte or 0.0):
                self.per_byte = rate
                if self._cache is not None and self._meta_name:
                    self._cache.set_meta(self._meta_name, repr(rate))

    def tokens(self, text_bytes: int) -> int:
        return math.ceil(text_bytes * (self.per_byte or 1.0 / BYTES_PER_TOKEN))


def prompt_tokens_estimate(
    messages: list[Message], response_format: dict[str, Any] | None = None, rate: TokenRate | None = None
) -> int:
    """An upper-leaning count of the prompt tokens: text at the endpoint's learnt rate (3 UTF-8 bytes per
    token before that), a fixed cost per message and per image, and a JSON schema sent in
    `response_format` (servers put it in the prompt)."""
    text_bytes = len(message_texts(messages).encode("utf-8"))
    if response_format:
        text_bytes += len(json.dumps(response_format, ensure_ascii=False).encode("utf-8"))
    return (
        (rate or TokenRate()).tokens(text_bytes)
        + PER_MESSAGE_TOKENS * len(messages)
        + IMAGE_TOKENS_ESTIMATE * count_images(messages)
    )


def fit_max_tokens(
    endpoint: Endpoint,
    messages: list[Message],
    max_tokens: int | None,
    response_format: dict[str, Any] | None = None,
    rate: TokenRate | None = None,
) -> int | None:
    """`max_tokens` lowered so prompt + reply fit `endpoint.context_window` (unchanged without a window).
    Raises DoesNotFit when the room left is under MIN_REPLY_TOKENS."""
    window = endpoint.context_window
    if not window:
        return max_tokens
    prompt = prompt_tokens_estimate(messages, response_format, rate)
    room = window - prompt
    if room < min(MIN_REPLY_TOKENS, max_tokens or MIN_REPLY_TOKENS):
        raise DoesNotFit(
            f"the prompt (about {prompt} tokens) leaves no room for a reply in the endpoint's "
            f"context_window of {window} tokens; not sent"
        )
    return room if max_tokens is None else min(max_tokens, room)


def fits(endpoint: Endpoint, messages: list[Message], max_tokens: int | None, rate: TokenRate | None = None) -> bool:
    """Whether the messages leave room for the whole `max_tokens` reply (always, without a window)."""
    window = endpoint.context_window
    if not window:
        return True
    return prompt_tokens_estimate(messages, rate=rate) + (max_tokens or MIN_REPLY_TOKENS) <= window
