"""Tokens and cost per role, and the `--max-cost` budget.

Why reservations: with many requests in flight, checking only what has been *spent* would let a burst
of requests pass the budget together. Each request reserves its estimated cost before it is sent and
settles to the real cost (from the reply's `usage`) when it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from generator.config import Endpoint
from generator.models.messages import Message, count_images, message_texts
from generator.models.resilience import BudgetExceeded
from generator.records import Usage

IMAGE_TOKENS_ESTIMATE = 765
"""Prompt tokens an image costs at most (OpenAI, 1024 px high detail); conservative for budgets."""
DEFAULT_MAX_TOKENS_ESTIMATE = 1024
"""Completion tokens assumed per sample when a request sets no `max_tokens`."""


def cost_of(endpoint: Endpoint, prompt_tokens: int, completion_tokens: int) -> float:
    return (
        prompt_tokens / 1000.0 * endpoint.price_input_per_1k + completion_tokens / 1000.0 * endpoint.price_output_per_1k
    )


def estimate_cost(endpoint: Endpoint, messages: list[Message], n: int, max_tokens: int | None) -> float:
    """An upper-leaning estimate of a request's cost: ~4 characters per prompt token, images at high
    detail, and every sample writing `max_tokens`."""
    if not endpoint.price_input_per_1k and not endpoint.price_output_per_1k:
        return 0.0
    prompt = math.ceil(len(message_texts(messages)) / 4) + IMAGE_TOKENS_ESTIMATE * count_images(messages)
    completion = n * (max_tokens or DEFAULT_MAX_TOKENS_ESTIMATE)
    return cost_of(endpoint, prompt, completion)


@dataclass
class _Reservation:
    amount: float
    open: bool = True


class UsageMeter:
    """Running totals per usage key (role, `role:endpoint`, or endpoint) and the budget guard.

    Used from one event loop; no awaits happen between a check and its update, so no lock is needed.
    """

    def __init__(self, max_cost_usd: float | None):
        self.max_cost_usd = max_cost_usd
        self.by_key: dict[str, Usage] = {}
        self.requests: dict[str, int] = {}
        self.failed = 0
        """Requests that failed for good (after their retries): shown live in the progress bars."""
        self.spent = 0.0
        self.reserved = 0.0
        self.stopped = False
        self._flushed: dict[str, Usage] = {}

    def reserve(self, estimate: float) -> _Reservation:
        """Hold `estimate` USD for a request about to be sent, or raise BudgetExceeded."""
        if self.max_cost_usd is not None:
            if self.stopped or self.spent + self.reserved + estimate > self.max_cost_usd + 1e-12:
                self.stopped = True  # once stopped, stay stopped: a run ends cleanly, not in a trickle
                raise BudgetExceeded(
                    f"stopping: the next request (estimated ${estimate:.4f}) would pass the budget of "
                    f"${self.max_cost_usd:.4f} (spent ${self.spent:.4f}, in flight ${self.reserved:.4f}); "
                    "finished records are kept, re-run with a higher --max-cost to go on"
                )
        self.reserved += estimate
        return _Reservation(estimate)

    def settle(self, reservation: _Reservation, key: str, usage: Usage, failed: bool = False) -> None:
        """Replace a reservation by what the request really cost (a failed request: Usage(), failed=True)."""
        self.failed += failed
        if reservation.open:
            self.reserved -= reservation.amount
            reservation.open = False
        self.by_key[key] = self.by_key.get(key, Usage()) + usage
        self.requests[key] = self.requests.get(key, 0) + 1
        self.spent += usage.cost_usd

    def unflushed(self) -> dict[str, Usage]:
        """Usage since the last call (what to add to run.json now), and mark it written."""
        delta: dict[str, Usage] = {}
        for key, total in self.by_key.items():
            before = self._flushed.get(key, Usage())
            d = Usage(
                prompt_tokens=total.prompt_tokens - before.prompt_tokens,
                completion_tokens=total.completion_tokens - before.completion_tokens,
                cost_usd=total.cost_usd - before.cost_usd,
            )
            if d.prompt_tokens or d.completion_tokens or d.cost_usd:
                delta[key] = d
            self._flushed[key] = total.model_copy()
        return delta
