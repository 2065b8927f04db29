"""Requests that fit the model's context window (an endpoint's `context_window`).

A server answers a request whose prompt plus `max_tokens` exceeds its window with HTTP 400 (llama.cpp
serving SmolLM2 has 2048 tokens; `harden` once asked for 2471 + 1500). The door never sends such a request:
the prompt is measured before sending, `max_tokens` is lowered to the room left, and a prompt that leaves
less than `MIN_REPLY_TOKENS` is a recorded failure of that request, never a call. Stages with optional
prompt parts (few-shot examples in `propose`) drop them first, with `fits`.

Without the server's tokenizer the prompt is estimated from its UTF-8 size at `BYTES_PER_TOKEN` = 3, which
over-counts English (about 4 characters per token for BPE tokenizers) and roughly matches CJK text
(3 bytes, about one token, per character): the estimate errs towards a shorter reply, never an overflow.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..config import Endpoint
from .messages import Message, count_images, message_texts
from .usage import IMAGE_TOKENS_ESTIMATE

BYTES_PER_TOKEN = 3.0
PER_MESSAGE_TOKENS = 8
"""Chat-template tokens around each message (role markers, separators)."""
MIN_REPLY_TOKENS = 64
"""A request that leaves less room than this for the reply is not sent."""


class DoesNotFit(ValueError):
    """The prompt alone leaves no useful room for a reply in the endpoint's context window."""


def prompt_tokens_estimate(messages: list[Message], response_format: dict[str, Any] | None = None) -> int:
    """An upper-leaning count of the prompt tokens: text at 3 UTF-8 bytes per token, a fixed cost per
    message and per image, and a JSON schema sent in `response_format` (servers put it in the prompt)."""
    text_bytes = len(message_texts(messages).encode("utf-8"))
    if response_format:
        text_bytes += len(json.dumps(response_format, ensure_ascii=False).encode("utf-8"))
    return (math.ceil(text_bytes / BYTES_PER_TOKEN) + PER_MESSAGE_TOKENS * len(messages)
            + IMAGE_TOKENS_ESTIMATE * count_images(messages))


def fit_max_tokens(endpoint: Endpoint, messages: list[Message], max_tokens: int | None,
                   response_format: dict[str, Any] | None = None) -> int | None:
    """`max_tokens` lowered so prompt + reply fit `endpoint.context_window` (unchanged without a window).
    Raises DoesNotFit when the room left is under MIN_REPLY_TOKENS."""
    window = endpoint.context_window
    if not window:
        return max_tokens
    prompt = prompt_tokens_estimate(messages, response_format)
    room = window - prompt
    if room < min(MIN_REPLY_TOKENS, max_tokens or MIN_REPLY_TOKENS):
        raise DoesNotFit(f"the prompt (about {prompt} tokens) leaves no room for a reply in the endpoint's "
                         f"context_window of {window} tokens; not sent")
    return room if max_tokens is None else min(max_tokens, room)


def fits(endpoint: Endpoint, messages: list[Message], max_tokens: int | None) -> bool:
    """Whether the messages leave room for the whole `max_tokens` reply (always, without a window)."""
    window = endpoint.context_window
    if not window:
        return True
    return prompt_tokens_estimate(messages) + (max_tokens or MIN_REPLY_TOKENS) <= window
