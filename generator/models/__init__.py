"""The one door to every model: stages ask `ModelHub` for a role and get a client.

See docs/model-door.md for the contract. Everything a stage needs is importable from here.
"""

from .cache import CacheStats, RequestCache, request_key
from .chat import ChatClient, ChatResult
from .guards import ChatGuard, Guard, GuardVerdict, ModerationGuard, parse_guard_reply, parse_moderation_result
from .hub import ModelHub
from .images import ImagesClient
from .messages import assistant_message, image_data_url, system_message, user_message
from .resilience import BudgetExceeded, ModelError, ScrubSecrets, scrub
from .structured import StructuredResult, parse_structured, strip_fences

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
