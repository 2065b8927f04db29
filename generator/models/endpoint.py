"""One endpoint as every client sees it: the runtime shared by all clients of an endpoint (HTTP client,
concurrency bound, rate limiter, what was learned about the server) and the base of every client (chat,
guards, images).

Why its own module: the clients need the hub's cache, budget meter and usage flushing, and the hub makes
the clients. Typing that back-reference as `ClientHost`, a Protocol the hub satisfies, keeps the imports
one way: hub -> clients -> endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import openai

from generator.config import ConfigError, Endpoint
from generator.models.cache import RequestCache
from generator.models.context import TokenRate
from generator.models.resilience import RateLimiter, call_with_retries
from generator.models.structured import MODES
from generator.models.usage import UsageMeter

log = logging.getLogger(__name__)


class ClientHost(Protocol):
    """What a client needs from the hub that made it (`generator.models.hub.ModelHub`)."""

    cache: RequestCache | None
    meter: UsageMeter

    def maybe_flush_usage(self) -> None: ...


NO_KEY_PLACEHOLDER = "no-key"
"""Sent to endpoints without `api_key_env`: never the user's OPENAI_API_KEY to an arbitrary server."""


class EndpointRuntime:
    """What is shared by every client of one endpoint: the HTTP client, the concurrency bound, the
    rate limiter, and what was learned about the server (`n`, structured-output mode)."""

    def __init__(
        self,
        name: str,
        endpoint: Endpoint,
        secrets: tuple[str, ...],
        cache: RequestCache | None,
        serve_url: str | None = None,
    ):
        self.name = name
        self.endpoint = endpoint
        self.base_url = endpoint.base_url.rstrip("/")
        """The configured address: the identity of the server in cache keys and learnt facts."""
        self.serve_url = (serve_url or endpoint.base_url).rstrip("/")
        """Where requests go: the configured address, or where a managed server was started for this
        process (generator/models/servers.py); a port chosen at start never changes a cache key."""
        self.secrets = secrets
        self.semaphore = asyncio.Semaphore(endpoint.max_concurrency)
        self.limiter = RateLimiter(endpoint.requests_per_minute)
        self.supports_n = endpoint.supports_n
        self._cache = cache
        self.token_rate = TokenRate(cache, f"token_rate|{self.base_url}|{endpoint.model}")
        """Prompt tokens per byte, learnt from replies (and kept in the cache's meta table across stages):
        sizes prompts for `context_window`."""
        self._client: openai.AsyncOpenAI | None = None
        self.structured_mode: str | None = None
        """The structured-output mode known to work here (None: not yet known, probe in order)."""
        if endpoint.supports_json_schema is True:
            self.structured_mode = "json_schema"
        elif cache is not None:
            remembered = cache.get_meta(self._mode_meta_name)
            if remembered in MODES and not (remembered == "json_schema" and endpoint.supports_json_schema is False):
                self.structured_mode = remembered

    @property
    def _mode_meta_name(self) -> str:
        return f"structured_mode|{self.base_url}|{self.endpoint.model}"

    def first_structured_mode(self) -> str:
        if self.structured_mode:
            return self.structured_mode
        return "json_object" if self.endpoint.supports_json_schema is False else "json_schema"

    def remember_structured_mode(self, mode: str) -> None:
        if self.structured_mode != mode:
            log.info("endpoint %s: structured output works with %s", self.name, mode)
            self.structured_mode = mode
            if self._cache is not None:
                self._cache.set_meta(self._mode_meta_name, mode)

    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            key = self.endpoint.api_key()
            if self.endpoint.api_key_env and not key:
                raise ConfigError(
                    f"endpoint {self.name!r}: environment variable {self.endpoint.api_key_env} is not set "
                    "(it should hold the API key)"
                )
            self._client = openai.AsyncOpenAI(
                base_url=self.serve_url,
                api_key=key or NO_KEY_PLACEHOLDER,
                max_retries=0,
                timeout=self.endpoint.timeout_s,
            )
        return self._client

    def check_key(self) -> None:
        """Raise ConfigError now (not mid-run) when the endpoint's key variable is missing."""
        _ = self.client

    async def call(self, make_call: Callable[[], Awaitable[Any]], fail_fast_on_status: bool = False) -> Any:
        return await call_with_retries(
            make_call,
            self.endpoint,
            self.semaphore,
            self.limiter,
            self.secrets,
            fail_fast_on_status=fail_fast_on_status,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


async def gather_or_cancel(*aws: Awaitable[Any]) -> list[Any]:
    """asyncio.gather that cancels the siblings when one raises (e.g. BudgetExceeded: stop promptly,
    keep what was written) and waits for them to finish, instead of leaving them running unobserved."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class EndpointClient:
    """What every client of one endpoint holds: the hub (cache, budget, usage), the endpoint's runtime
    (limits, retries), and the key its usage is booked under (the role, `role:endpoint`, or the endpoint)."""

    def __init__(self, hub: ClientHost, runtime: EndpointRuntime, usage_key: str):
        self._hub = hub
        self._rt = runtime
        self.usage_key = usage_key
        self.name = runtime.name
        self.model = runtime.endpoint.model
        self.endpoint = runtime.endpoint
