"""ModelHub: the one door. Stages ask it for a role; it hands back a client for the endpoint behind it.

Why one object per run: endpoints are shared between roles (the judge and the checker may be the same
server), and their concurrency bound, rate limit, learned quirks, the request cache and the budget must
be shared too. Usage is booked per role and written to the run manifest on close.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from generator.config import ConfigError, Settings
from generator.models.cache import RequestCache
from generator.models.chat import ChatClient
from generator.models.endpoint import EndpointRuntime
from generator.models.guards import OPENNSFW, ChatGuard, Guard, ModerationGuard, OpenNSFWGuard
from generator.models.images import ImagesClient
from generator.models.resilience import remember_secrets
from generator.models.servers import SERVERS, ServerLease
from generator.models.usage import UsageMeter
from generator.records import Usage

log = logging.getLogger(__name__)

LIST_ROLES = frozenset({"judge", "targets"})
USAGE_FLUSH_S = 10.0
"""How often (at most) usage is written to run.json while a run goes on."""


class ModelHub:
    """Clients by role, sharing per-endpoint limits, the request cache and the budget.

    `cache`: a RequestCache to use instead of the one named in settings (`False`: no cache at all).
    """

    def __init__(self, settings: Settings, store: Any = None, *, cache: RequestCache | bool | None = None):
        self.settings = settings
        self.store = store
        self._owns_cache = False
        if cache is False:
            self.cache: RequestCache | None = None
        elif isinstance(cache, RequestCache):
            self.cache = cache
        elif settings.cache.enabled:
            self.cache = RequestCache(settings.cache.path)
            self._owns_cache = True
        else:
            self.cache = None
        self.meter = UsageMeter(settings.budget.max_cost_usd)
        self._runtimes: dict[str, EndpointRuntime] = {}
        self._opennsfw: OpenNSFWGuard | None = None
        self._leases: list[ServerLease] = []
        self._closed = False
        remember_secrets(self.secrets)
        self._last_flush = time.monotonic()

    # -- context ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> ModelHub:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Write usage to the run manifest, close HTTP clients and the cache. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.flush_usage()
        try:
            for rt in self._runtimes.values():
                await rt.aclose()
        finally:
            for lease in self._leases:
                lease.release()
        if self._owns_cache and self.cache is not None:
            self.cache.close()

    def flush_usage(self) -> None:
        """Add the usage booked since the last flush to the store's run.json (a no-op without a store)."""
        self._last_flush = time.monotonic()
        delta = self.meter.unflushed()
        if self.store is not None and delta:
            self.store.add_usage(delta)

    def maybe_flush_usage(self) -> None:
        """Flush at most every USAGE_FLUSH_S seconds, so a killed run still has its spend in run.json."""
        if self.store is not None and time.monotonic() - self._last_flush >= USAGE_FLUSH_S:
            self.flush_usage()

    # -- secrets ----------------------------------------------------------------------------------------

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every API key value the configured endpoints read from the environment (to scrub them)."""
        keys = []
        for ep in self.settings.endpoints.values():
            key = ep.api_key()
            if key:
                keys.append(key)
        return tuple(keys)

    # -- lookups ----------------------------------------------------------------------------------------

    def runtime(self, endpoint_name: str) -> EndpointRuntime:
        rt = self._runtimes.get(endpoint_name)
        if rt is None:
            endpoint = self.settings.endpoint(endpoint_name)
            # A managed server (endpoint.server) starts here, the first time any stage needs it.
            run_dir = getattr(self.store, "path", None)
            log_dir = Path(run_dir) / "servers" if run_dir is not None else None
            lease = SERVERS.acquire(endpoint_name, endpoint, log_dir)
            if lease is not None:
                self._leases.append(lease)
            rt = EndpointRuntime(endpoint_name, endpoint, self.secrets, self.cache, lease.url if lease else None)
            self._runtimes[endpoint_name] = rt
        return rt

    def _resolve(self, role: str) -> list[tuple[str, str]]:
        """(endpoint name, usage key) for each endpoint behind `role` (a role name or an endpoint name)."""
        names = self.settings.role_endpoints(role)
        if role in self.settings.endpoints:
            return [(role, role)]
        if role in LIST_ROLES:
            return [(name, f"{role}:{name}") for name in names]
        return [(name, role) for name in names]

    def _checked(self, endpoint_name: str, role: str, kinds: tuple[str, ...]) -> EndpointRuntime:
        rt = self.runtime(endpoint_name)
        if rt.endpoint.kind not in kinds:
            raise ConfigError(
                f"role {role!r} uses endpoint {endpoint_name!r} of kind {rt.endpoint.kind!r}; it needs kind "
                + " or ".join(repr(k) for k in kinds)
            )
        rt.check_key()
        return rt

    def chat(self, role: str) -> ChatClient:
        """A chat client for `role` (the first endpoint of a list role; see `chat_all`)."""
        return self.chat_all(role)[0]

    def chat_all(self, role: str) -> list[ChatClient]:
        """One chat client per endpoint behind `role` (judge and targets may list several)."""
        return [
            ChatClient(self, self._checked(name, role, ("chat", "chat_guard")), key)
            for name, key in self._resolve(role)
        ]

    def guard(self, role: str, prompt_file: str | Path | None = None) -> Guard:
        """The guard behind `role` (text_guard, image_guard, or an endpoint name): a moderation endpoint,
        or a chat-based safety model (kind `chat_guard`, prompted with prompts/guard_chat.md or
        `prompt_file`), or the offline open_nsfw classifier when `image_guard = "opennsfw"`."""
        if (
            role == "image_guard"
            and self.settings.roles.image_guard == OPENNSFW
            and OPENNSFW not in self.settings.endpoints
        ):
            if self._opennsfw is None:
                self._opennsfw = OpenNSFWGuard(threshold=self.settings.check.opennsfw_threshold)
            return self._opennsfw
        name, key = self._resolve(role)[0]
        rt = self._checked(name, role, ("moderation", "chat_guard", "chat"))
        if rt.endpoint.kind == "moderation":
            return ModerationGuard(self, rt, key)
        return ChatGuard(ChatClient(self, rt, key), prompt_file=prompt_file)

    def images(self, role: str = "images") -> ImagesClient:
        name, key = self._resolve(role)[0]
        return ImagesClient(self, self._checked(name, role, ("images",)), key)

    # -- accounting ---------------------------------------------------------------------------------------

    @property
    def usage(self) -> dict[str, Usage]:
        """Tokens and cost per usage key: the role (`proposer`), `role:endpoint` for list roles
        (`targets:gpt4o`), or the endpoint name when a client was asked for by endpoint."""
        return dict(self.meter.by_key)

    @property
    def total_cost(self) -> float:
        return self.meter.spent

    @property
    def failed_requests(self) -> int:
        """Requests that failed for good after their retries (recorded by the stages, never scored)."""
        return self.meter.failed

    @property
    def requests_sent(self) -> dict[str, int]:
        """Network requests per usage key (cache hits are not requests)."""
        return dict(self.meter.requests)
