"""The one door to every model: stages ask `ModelHub` for a role and get a client.

See docs/model-door.md for the contract. Everything a stage needs is importable from here.
"""

from generator.models.cache import CacheStats, RequestCache, request_key
from generator.models.chat import ChatClient, ChatResult
from generator.models.guards import (
    ChatGuard,
    Guard,
    GuardVerdict,
    ModerationGuard,
    parse_guard_reply,
    parse_moderation_result,
)
from generator.models.hub import ModelHub
from generator.models.images import ImagesClient
from generator.models.messages import assistant_message, image_data_url, system_message, user_message
from generator.models.resilience import BudgetExceeded, ModelError, ScrubSecrets, scrub
from generator.models.structured import StructuredResult, parse_structured, strip_fences

__all__ = [
    "BudgetExceeded",
    "CacheStats",
    "ChatClient",
    "ChatGuard",
    "ChatResult",
    "Guard",
    "GuardVerdict",
    "ImagesClient",
    "ModelError",
    "ModelHub",
    "ModerationGuard",
    "RequestCache",
    "StructuredResult",
    "assistant_message",
    "image_data_url",
    "parse_guard_reply",
    "parse_moderation_result",
    "parse_structured",
    "request_key",
    "scrub",
    "ScrubSecrets",
    "strip_fences",
    "system_message",
    "user_message",
]
