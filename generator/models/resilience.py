"""Retries, timeouts, rate limits and secret scrubbing: what keeps a long run alive on flaky servers.

Why our own retry loop (the `openai` client runs with `max_retries=0`): the door must record a request
as failed after a bounded number of tries (never loop forever), stop early when the very same failure
repeats, honour `Retry-After`, and release its concurrency slot while it waits.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import re
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import openai

from generator.config import Endpoint
from generator.errors import UserError

T = TypeVar("T")

RETRY_AFTER_CAP_S = 120.0
"""Longest wait a `Retry-After` header can impose."""
BACKOFF_CAP_S = 60.0
"""Longest exponential-backoff wait."""

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


class ModelError(Exception):
    """A model call failed after its retries (raised by `images.generate`; chat calls return it as data)."""


class BudgetExceeded(UserError):
    """The next request would pass `budget.max_cost_usd`. Raised *before* sending it; finished records stay."""


class MalformedReply(ValueError):
    """A 2xx reply whose body is not what the API defines (retried like a dropped connection)."""


@dataclass
class RequestFailed(Exception):
    """One request failed for good (after retries, or at once when not retryable). Text is scrubbed."""

    message: str
    status: int | None = None
    kind: str = "error"
    attempts: int = 1

    def __str__(self) -> str:
        return self.message


# ----------------------------------------------------------------------------------------------------
# Secrets
# ----------------------------------------------------------------------------------------------------

_KEY_LIKE = re.compile(r"\b((?:sk|rk|pk)-(?:proj-|ant-|live-|test-)?)[A-Za-z0-9_\-*.]{6,}")
_BEARER = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret, anything shaped like an API key, and bearer tokens masked.

    Servers echo keys in error bodies (OpenAI: "Incorrect API key provided: sk-...abcd"), so every
    error text is scrubbed before it reaches a record, a log or the screen.
    """
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    text = _KEY_LIKE.sub(r"\1***", text)
    return _BEARER.sub(r"\1***", text)


_KNOWN_SECRETS: set[str] = set()


def remember_secrets(secrets: Iterable[str]) -> None:
    """Key values the process has read (ModelHub registers them) so every log line can mask them."""
    _KNOWN_SECRETS.update(s for s in secrets if s and len(s) >= 4)


class ScrubSecrets(logging.Filter):
    """A handler filter that scrubs each log line: with `-v`, openai's debug log prints response headers,
    and a server may echo the key in one; no logger of ours or of a library may print it."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = scrub(text, _KNOWN_SECRETS)
        if clean != text:
            record.msg, record.args = clean, None
        return True


# ----------------------------------------------------------------------------------------------------
# Rate limit
# ----------------------------------------------------------------------------------------------------


class RateLimiter:
    """At most `limit` request starts in any `period` seconds (sliding window); None: no limit."""

    def __init__(self, limit: int | None, period: float = 60.0):
        self.limit = limit
        self.period = period
        self._starts: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.limit is None:
            return
        async with self._lock:  # waiters queue in order behind the one sleeping
            now = time.monotonic()
            while self._starts and now - self._starts[0] >= self.period:
                self._starts.popleft()
            if len(self._starts) >= self.limit:
                await asyncio.sleep(self._starts[0] + self.period - now)
                now = time.monotonic()
                while self._starts and now - self._starts[0] >= self.period:
                    self._starts.popleft()
            self._starts.append(time.monotonic())


# ----------------------------------------------------------------------------------------------------
# Classifying failures
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Failure:
    retryable: bool
    signature: str
    message: str
    status: int | None = None
    retry_after: float | None = None


def _retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date); None when absent."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
        value = headers.get("retry-after")
    except Exception:  # noqa: BLE001 - headers of an odd type: ignore the hint, keep the backoff
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error_text(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        msg = body.get("message") or body.get("error") or body.get("detail")
        if isinstance(msg, dict):
            msg = msg.get("message")
        if msg:
            return str(msg)
    try:
        text = exc.response.text
    except Exception:  # noqa: BLE001 - a streamed or closed body
        text = ""
    return text or str(exc)


def classify(exc: BaseException) -> _Failure | None:
    """What a failure means for the retry loop; None for exceptions that are bugs (let them raise)."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status in RETRYABLE_STATUSES or status >= 500
        return _Failure(
            retryable,
            f"http-{status}",
            f"HTTP {status}: {_error_text(exc)[:500]}",
            status,
            _retry_after(exc.response.headers),
        )
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError, TimeoutError)):
        return _Failure(True, "timeout", "timed out")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__}: {cause})" if cause else ""
        return _Failure(True, "connection", f"connection failed{detail}"[:500])
    if isinstance(exc, (openai.APIResponseValidationError, json.JSONDecodeError, MalformedReply)):
        return _Failure(True, "malformed", f"malformed reply body: {exc}"[:500])
    if isinstance(exc, openai.OpenAIError):
        return _Failure(False, type(exc).__name__, f"{type(exc).__name__}: {exc}"[:500])
    return None


# ----------------------------------------------------------------------------------------------------
# The retry loop
# ----------------------------------------------------------------------------------------------------

_HAS_ASYNCIO_TIMEOUT = sys.version_info >= (3, 11)

if _HAS_ASYNCIO_TIMEOUT:

    async def with_timeout(coro: Awaitable[T], seconds: float) -> T:
        async with asyncio.timeout(seconds):  # type: ignore[attr-defined]  # 3.11+, guarded above
            return await coro

else:  # pragma: no cover - Python 3.10

    async def with_timeout(coro: Awaitable[T], seconds: float) -> T:
        return await asyncio.wait_for(coro, seconds)


def backoff_delay(attempt: int, base: float) -> float:
    """Jittered exponential backoff: about base * 2^attempt, +-50 %, capped."""
    return min(BACKOFF_CAP_S, base * (2**attempt)) * random.uniform(0.5, 1.5)


async def call_with_retries(
    make_call: Callable[[], Awaitable[T]],
    endpoint: Endpoint,
    semaphore: asyncio.Semaphore,
    limiter: RateLimiter,
    secrets: Iterable[str] = (),
    *,
    fail_fast_on_status: bool = False,
) -> T:
    """Run `make_call()` under the endpoint's concurrency bound, rate limit and timeout, retrying
    429 / 5xx / timeouts / dropped connections / malformed bodies with jittered backoff.

    Gives up (raises RequestFailed) after `endpoint.max_retries` retries, or earlier when the same
    failure repeats `endpoint.max_identical_failures` times in a row. A failed connection is first
    retried for up to `endpoint.outage_patience_s` seconds in all, outside that count: a server down
    for a few seconds must not turn every request in flight into a recorded failure.
    `fail_fast_on_status`: an HTTP error other than 429 is final at once (used to probe a request
    shape the server may reject).
    """
    secrets = tuple(secrets)
    attempts = endpoint.max_retries + 1
    last_signature = None
    identical = 0
    attempt = 0  # failures counted against max_retries
    sent = 0
    outage_waits = 0
    outage_waited = 0.0
    while True:
        if limiter.limit is not None:
            await limiter.acquire()
        async with semaphore:
            try:
                if _HAS_ASYNCIO_TIMEOUT:  # inline: one coroutine frame less on every resume of a hot path
                    async with asyncio.timeout(endpoint.timeout_s):  # type: ignore[attr-defined]  # 3.11+
                        return await make_call()
                return await with_timeout(make_call(), endpoint.timeout_s)
            except Exception as exc:  # noqa: BLE001 - classified just below; bugs re-raise
                failure = classify(exc)
                if failure is None:
                    raise
        failure.message = scrub(failure.message, secrets)
        sent += 1
        if not failure.retryable or (fail_fast_on_status and failure.status is not None and failure.status != 429):
            raise RequestFailed(failure.message, failure.status, failure.signature, sent)
        patience_left = endpoint.outage_patience_s - outage_waited
        if failure.signature == "connection" and patience_left > 0:
            # a floor on the wait, so the patience is spent in time even with retry_base_delay_s = 0
            delay = min(patience_left, backoff_delay(outage_waits, max(endpoint.retry_base_delay_s, 0.05)))
            outage_waits += 1
            outage_waited += delay
            await asyncio.sleep(delay)
            continue
        attempt += 1
        identical = identical + 1 if failure.signature == last_signature else 1
        last_signature = failure.signature
        if identical >= endpoint.max_identical_failures or attempt >= attempts:
            why = (
                f"{identical} identical failures in a row"
                if identical >= endpoint.max_identical_failures
                else f"{sent} attempts"
            )
            if outage_waited:
                why += f", {outage_waited:.0f} s of connection retries"
            raise RequestFailed(f"{failure.message} (gave up after {why})", failure.status, failure.signature, sent)
        if failure.retry_after is not None:
            delay = min(failure.retry_after, RETRY_AFTER_CAP_S)
        else:
            delay = backoff_delay(attempt - 1, endpoint.retry_base_delay_s)
        await asyncio.sleep(delay)
