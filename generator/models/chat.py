"""The chat client: one endpoint, async, cached, bounded, retried, accounted.

Why per-sample cache keys: a stage asks for `n` samples of one prompt; each sample is cached under its
own index, so a re-run serves all of them from the cache and asking for more samples later pays only
for the new ones. `n` goes to the server in one request when it honours it; a server that answers
fewer choices is remembered and asked once per missing sample instead.

Model failures never raise here: after retries they come back as `ChatResult(error=...)` for the
stage to record. Only `BudgetExceeded` (stop the run) and programming errors propagate.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from generator.models.cache import request_key
from generator.models.context import DoesNotFit, TokenRate, fit_max_tokens
from generator.models.endpoint import EndpointClient, gather_or_cancel
from generator.models.messages import Message, assistant_message, cache_form
from generator.models.resilience import MalformedReply, RequestFailed
from generator.models.structured import (
    CONSTRAINED_MODES,
    StructuredResult,
    next_mode,
    parse_structured,
    repair_message,
    response_format,
    with_schema_instructions,
)
from generator.models.usage import cost_of, estimate_cost
from generator.records import Usage
from generator.untrusted import loads_untrusted

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)


@dataclass
class ChatResult:
    """One sample of one prompt: its text, or the error that stopped it (after retries)."""

    text: str | None
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    cached: bool = False
    sample_index: int = 0
    finish_reason: str | None = None
    status: int | None = None
    """HTTP status of a failed request (None: no HTTP answer, e.g. a timeout)."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class ChatClient(EndpointClient):
    """Chat completions against one endpoint, on behalf of one role (usage is booked to `usage_key`)."""

    @property
    def token_rate(self) -> TokenRate:
        """What this endpoint's replies taught about its tokenizer (see models/context.py)."""
        return self._rt.token_rate

    def __repr__(self) -> str:
        return f"ChatClient({self.name!r}, model={self.model!r}, usage_key={self.usage_key!r})"

    # -- public ---------------------------------------------------------------------------------------

    async def complete(
        self,
        messages: list[Message],
        n: int = 1,
        temperature: float | None = None,
        max_tokens: int | None = None,
        sample_offset: int = 0,
        use_cache: bool = True,
        **params: Any,
    ) -> list[ChatResult]:
        """`n` samples (indices sample_offset .. sample_offset+n-1), each from the cache or the server.

        Extra keyword arguments (top_p, seed, stop, ...) are sent as request fields and are part of
        the cache key. Raises only BudgetExceeded; model failures come back as results with `error`.
        """
        if n < 1:
            raise ValueError("n must be at least 1")
        return await self._complete(
            messages, n, self._params(temperature, max_tokens, params), sample_offset, use_cache
        )

    async def structured(
        self,
        messages: list[Message],
        schema: type[T],
        temperature: float | None = None,
        max_tokens: int | None = None,
        sample_index: int = 0,
        use_cache: bool = True,
        **params: Any,
    ) -> StructuredResult[T]:
        """One reply parsed into `schema` (see generator/models/structured.py for the modes and repair)."""
        schema_json = schema.model_json_schema()
        base = self._params(temperature, max_tokens, params)
        cache = self._hub.cache if use_cache else None
        final_key = None
        if cache is not None:
            final_key = request_key(
                kind="structured",
                base_url=self._rt.base_url,
                model=self.model,
                messages=cache_form(messages),
                schema=schema_json,
                params=base,
                extra_body=self.endpoint.extra_body,
                sample=sample_index,
            )
            hit = await cache.get(final_key)
            if hit is not None:
                value, _ = parse_structured(hit.get("raw"), schema)
                if value is not None:
                    return StructuredResult(
                        value=value,
                        raw=hit["raw"],
                        usage=Usage(**hit.get("usage", {})),
                        attempts=0,
                        cached=True,
                        mode=hit.get("mode"),
                    )

        usage = Usage()
        attempts = 0
        mode: str = self._rt.first_structured_mode()
        while True:
            request_messages = with_schema_instructions(messages, schema_json, mode)
            request_params = {**base, **response_format(mode, schema, schema_json)}
            fallback = next_mode(mode)
            probing = self._rt.structured_mode is None and fallback is not None
            [reply] = await self._complete(
                request_messages, 1, request_params, sample_index, use_cache, fail_fast_on_status=probing
            )
            attempts += 1
            usage = usage + reply.usage
            if reply.error and fallback is not None and probing and reply.status is not None and reply.status != 429:
                log.info(
                    "endpoint %s rejected structured mode %s (%s); trying %s", self.name, mode, reply.error, fallback
                )
                mode = fallback
                continue
            break
        if reply.error is not None:
            return StructuredResult(
                value=None, error=f"request failed: {reply.error}", usage=usage, attempts=attempts, mode=mode
            )
        self._rt.remember_structured_mode(mode)

        raw = reply.text
        value, problem = parse_structured(raw, schema)
        if value is None:
            repair = [
                *request_messages,
                assistant_message(raw or ""),
                repair_message(problem or "no JSON object", schema_json),
            ]
            [fixed] = await self._complete(repair, 1, request_params, sample_index, use_cache)
            attempts += 1
            usage = usage + fixed.usage
            if fixed.error is not None:
                return StructuredResult(
                    value=None,
                    error=f"{problem}; the repair request failed: {fixed.error}",
                    raw=raw,
                    usage=usage,
                    attempts=attempts,
                    mode=mode,
                )
            raw = fixed.text
            value, second_problem = parse_structured(raw, schema)
            if value is None:
                return StructuredResult(
                    value=None,
                    raw=raw,
                    usage=usage,
                    attempts=attempts,
                    mode=mode,
                    error=f"no valid {schema.__name__} after one repair retry: {second_problem}",
                )
        if cache is not None and final_key is not None:
            await cache.put(final_key, {"raw": raw, "usage": usage.model_dump(), "mode": mode}, "structured", self.name)
        return StructuredResult(value=value, raw=raw, usage=usage, attempts=attempts, mode=mode)

    async def complete_constrained(
        self,
        messages: list[Message],
        schema_name: str,
        schema_json: dict[str, Any],
        temperature: float | None = None,
        max_tokens: int | None = None,
        sample_offset: int = 0,
        use_cache: bool = True,
    ) -> tuple[ChatResult, str | None]:
        """One reply decoded under `schema_json` by the server itself, and the mode that did it.

        Unlike `structured`, the reply is returned raw (the caller parses it by its own rules) and the
        schema is never only spelt out in the prompt: `json_schema` is tried, then `json_object` with a
        schema (llama.cpp), and an endpoint that takes neither gives an error result (mode None)."""
        base = self._params(temperature, max_tokens, {})
        mode: str | None = self._rt.first_structured_mode()
        if mode not in CONSTRAINED_MODES:
            mode = "json_object"
        while True:
            params = {**base, **response_format(mode, schema_name, schema_json)}
            probing = self._rt.structured_mode is None and mode != CONSTRAINED_MODES[-1]
            [reply] = await self._complete(messages, 1, params, sample_offset, use_cache, fail_fast_on_status=probing)
            if reply.error and probing and reply.status is not None and reply.status != 429:
                log.info(
                    "endpoint %s rejected structured mode %s (%s); trying json_object", self.name, mode, reply.error
                )
                mode = "json_object"
                continue
            break
        if reply.error is None:
            self._rt.remember_structured_mode(mode)
        elif reply.status is not None and 400 <= reply.status < 500 and reply.status != 429:
            reply.error = f"{reply.error} (the endpoint takes no constrained decoding: json_schema or json_object)"
        return reply, mode

    # -- internals ------------------------------------------------------------------------------------

    @staticmethod
    def _params(temperature: float | None, max_tokens: int | None, extra: dict[str, Any]) -> dict[str, Any]:
        params = {"temperature": temperature, "max_tokens": max_tokens, **extra}
        return {k: v for k, v in params.items() if v is not None}

    async def _complete(
        self,
        messages: list[Message],
        n: int,
        params: dict[str, Any],
        offset: int,
        use_cache: bool,
        fail_fast_on_status: bool = False,
    ) -> list[ChatResult]:
        cache = self._hub.cache if use_cache else None
        indices = list(range(offset, offset + n))
        results: dict[int, ChatResult] = {}
        keys: dict[int, str] = {}
        if cache is not None:
            base = {
                "kind": "chat",
                "base_url": self._rt.base_url,
                "model": self.model,
                "messages": cache_form(messages),
                "params": params,
                "extra_body": self.endpoint.extra_body,
            }
            keys = {i: request_key(**base, sample=i) for i in indices}
            hits = await asyncio.to_thread(lambda: {i: cache.get_sync(k) for i, k in keys.items()})
            for i, hit in hits.items():
                if hit is not None:
                    results[i] = ChatResult(
                        text=hit["text"],
                        usage=Usage(**hit.get("usage", {})),
                        cached=True,
                        sample_index=i,
                        finish_reason=hit.get("finish_reason"),
                    )
        missing = [i for i in indices if i not in results]
        if missing:
            fresh = await self._fetch(messages, missing, params, fail_fast_on_status)
            results.update(fresh)
            if cache is not None:
                to_store = [
                    (keys[i], {"text": r.text, "finish_reason": r.finish_reason, "usage": r.usage.model_dump()})
                    for i, r in fresh.items()
                    if r.ok
                ]
                if to_store:
                    await asyncio.to_thread(cache.put_many_sync, to_store, "chat", self.name)
        return [results[i] for i in indices]

    async def _fetch(
        self, messages: list[Message], indices: list[int], params: dict[str, Any], fail_fast_on_status: bool
    ) -> dict[int, ChatResult]:
        """Ask the server for the samples `indices`: one request with `n` when the server honours it,
        separate requests for whatever it did not answer."""
        if len(indices) == 1 or self._rt.supports_n is False:
            if len(indices) == 1:
                return await self._request(messages, indices, params, fail_fast_on_status)
            parts = await gather_or_cancel(
                *(self._request(messages, [i], params, fail_fast_on_status) for i in indices)
            )
            return {i: r for part in parts for i, r in part.items()}
        got = await self._request(messages, indices, params, fail_fast_on_status)
        rest = [i for i in indices if i not in got]
        if rest:
            if self._rt.supports_n is None:
                log.info(
                    "endpoint %s ignores n (asked %d, got %d choices): asking per sample from now on",
                    self.name,
                    len(indices),
                    len(got),
                )
                self._rt.supports_n = False
            parts = await gather_or_cancel(*(self._request(messages, [i], params, fail_fast_on_status) for i in rest))
            for part in parts:
                got.update(part)
        elif self._rt.supports_n is None:
            self._rt.supports_n = True
        return got

    async def _request(
        self, messages: list[Message], indices: list[int], params: dict[str, Any], fail_fast_on_status: bool
    ) -> dict[int, ChatResult]:
        """One HTTP request for len(indices) choices. Failures become error results for every index; a
        reply with fewer choices than asked returns only those (the caller asks for the rest).

        The body is posted as plain JSON and the reply read as plain JSON through the openai client's
        own transport, auth and error mapping; its typed params/models layer is skipped because it
        costs about a millisecond of CPU per request (bench/bench_client.py)."""
        n = len(indices)
        try:
            max_tokens = fit_max_tokens(
                self.endpoint, messages, params.get("max_tokens"), params.get("response_format"), self._rt.token_rate
            )
        except DoesNotFit as exc:
            log.warning("endpoint %s: %s", self.name, exc)
            return {i: ChatResult(text=None, error=str(exc), sample_index=i) for i in indices}
        if max_tokens is not None and max_tokens != params.get("max_tokens"):
            log.info(
                "endpoint %s: max_tokens lowered to %d to fit context_window %d",
                self.name,
                max_tokens,
                self.endpoint.context_window,
            )
            params = {**params, "max_tokens": max_tokens}
        meter = self._hub.meter
        reservation = meter.reserve(estimate_cost(self.endpoint, messages, n, params.get("max_tokens")))
        body: dict[str, Any] = {**self.endpoint.extra_body, **params, "model": self.model, "messages": messages}
        if n > 1:
            body["n"] = n
        client = self._rt.client

        async def post() -> dict[str, Any]:
            return parse_chat_reply(await client.post("/chat/completions", body=body, cast_to=str))

        try:
            reply = await self._rt.call(post, fail_fast_on_status)
        except RequestFailed as failed:
            meter.settle(reservation, self.usage_key, Usage(), failed=True)
            (log.info if fail_fast_on_status else log.warning)(
                "endpoint %s: request failed: %s", self.name, failed.message
            )
            return {
                i: ChatResult(text=None, error=failed.message, sample_index=i, status=failed.status) for i in indices
            }
        except BaseException:
            meter.settle(reservation, self.usage_key, Usage())
            raise
        choices = reply["choices"][:n]
        if reply["replaced_chars"]:
            log.warning(
                "endpoint %s: the reply held %d invalid Unicode character(s) (lone surrogates), replaced with U+FFFD",
                self.name,
                reply["replaced_chars"],
            )
        prompt_tokens, completion_tokens = reply["prompt_tokens"], reply["completion_tokens"]
        self._rt.token_rate.learn(messages, prompt_tokens)
        total = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost_of(self.endpoint, prompt_tokens, completion_tokens),
        )
        meter.settle(reservation, self.usage_key, total)
        self._hub.maybe_flush_usage()
        if not choices:
            return {
                i: ChatResult(
                    text=None, error="the reply had no choices", sample_index=i, usage=total if j == 0 else Usage()
                )
                for j, i in enumerate(indices)
            }
        p_split, c_split = _split(prompt_tokens, len(choices)), _split(completion_tokens, len(choices))
        out: dict[int, ChatResult] = {}
        for j, (text, finish_reason, refusal) in enumerate(choices):
            i = indices[j]
            share = Usage(
                prompt_tokens=p_split[j],
                completion_tokens=c_split[j],
                cost_usd=cost_of(self.endpoint, p_split[j], c_split[j]),
            )
            if text is None:
                why = f"refused: {refusal}" if refusal else f"no text in the reply (finish_reason={finish_reason})"
                out[i] = ChatResult(text=None, error=why, usage=share, sample_index=i, finish_reason=finish_reason)
            else:
                out[i] = ChatResult(text=text, usage=share, sample_index=i, finish_reason=finish_reason)
        return out


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def parse_chat_reply(text: str) -> dict[str, Any]:
    """The parts of a chat completion body the door uses: choices as (text, finish_reason, refusal) in
    index order, token counts, and how many invalid characters were replaced (lone surrogates: see
    generator/untrusted.py). A body that is not a chat completion raises MalformedReply (retried)."""
    try:
        data, replaced = loads_untrusted(text)
    except RecursionError:
        raise MalformedReply("the reply body is JSON nested too deeply to read") from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise MalformedReply(f"not a chat completion: {text[:200]!r}")
    choices = []
    for pos, choice in enumerate(data["choices"]):
        if not isinstance(choice, dict):
            raise MalformedReply(f"a choice is not an object: {choice!r:.200}")
        message = choice.get("message")
        msg: dict[str, Any] = message if isinstance(message, dict) else {}
        content = msg.get("content")
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if content is not None and not isinstance(content, str):
            raise MalformedReply(f"message content is not text: {content!r:.200}")
        index = choice.get("index")
        choices.append(
            (index if isinstance(index, int) else pos, content, choice.get("finish_reason"), msg.get("refusal"))
        )
    choices.sort(key=lambda c: c[0])
    reported = data.get("usage")
    usage: dict[str, Any] = reported if isinstance(reported, dict) else {}
    return {
        "choices": [c[1:] for c in choices],
        "prompt_tokens": _count(usage.get("prompt_tokens")),
        "completion_tokens": _count(usage.get("completion_tokens")),
        "replaced_chars": replaced,
    }
