"""One bounded work loop for every stage that sends model requests.

Why bounded: creating every unit of work up front (`gather` over all cases) keeps each pending
request's message, base64 image included, alive at once, so memory grew with the run's size. Here at
most `limit` units exist at a time; the next one is created only when one finishes, so memory is
O(concurrency), not O(cases).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def bounded_map(
    fn: Callable[[T], Awaitable[Any]],
    items: Iterable[T],
    limit: int,
    commit: Callable[[int, Any], None] | None = None,
    *,
    ordered: bool = False,
    on_done: Callable[[], None] | None = None,
) -> None:
    """Run `fn(item)` for each item with at most `limit` running; `commit(index, result)` for each result.

    `ordered`: commit in item order (a finished unit waits for the earlier ones; the window is still
    `limit`), else as they finish. A failure (e.g. the budget) cancels the units in flight, waits for
    them, and propagates; everything committed before it stays committed. `items` is read lazily.
    """
    source = iter(enumerate(items))
    window: deque[tuple[int, asyncio.Future[Any]]] = deque()

    def refill() -> None:
        while len(window) < max(1, limit):
            nxt = next(source, None)
            if nxt is None:
                return
            task = asyncio.ensure_future(fn(nxt[1]))
            if on_done is not None:
                task.add_done_callback(lambda _t: on_done())
            window.append((nxt[0], task))

    try:
        refill()
        while window:
            if ordered:
                index, task = window[0]
                result = await task
                window.popleft()
                if commit is not None:
                    commit(index, result)
            else:
                await asyncio.wait([t for _, t in window], return_when=asyncio.FIRST_COMPLETED)
                for entry in [e for e in window if e[1].done()]:
                    window.remove(entry)
                    result = entry[1].result()
                    if commit is not None:
                        commit(entry[0], result)
            refill()
    finally:
        for _, t in window:
            if not t.done():
                t.cancel()
        await asyncio.gather(*(t for _, t in window), return_exceptions=True)  # no stray warnings
