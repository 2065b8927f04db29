"""The one progress bar every stage shows: counts, rate, elapsed / remaining time, and, for stages that
call models, the cost so far and the requests that failed for good.

Why one place: a person watching a long run compares stages; they should read the same columns in the
same order, and see money and failures move while the run goes, not only in the end summary.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second (or seconds per item when slower than one a second)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("", style="progress.data.speed")
        shown = f"{speed:.1f}/s" if speed >= 1 else f"{1 / speed:.1f}s/it"
        return Text(shown, style="progress.data.speed")


class HubColumn(ProgressColumn):
    """Cost so far and failed requests, read live from the stage's ModelHub (when it has one)."""

    def __init__(self, hub: Any = None):
        super().__init__()
        self.hub = hub

    def render(self, task: Task) -> Text:
        if self.hub is None:
            return Text("")
        text = Text(f"${self.hub.total_cost:.4f}", style="green")
        failed = self.hub.failed_requests
        if failed:
            text.append(f"  {failed} failed", style="bold red")
        return text


class _NoProgress:
    """A silent stand-in with Progress's methods (tests, nested stages)."""

    def add_task(self, *args: Any, **kwargs: Any) -> TaskID:
        return TaskID(0)

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextmanager
def stage_progress(
    console: Console | None = None, hub: Any = None, enabled: bool = True
) -> Iterator[Progress | _NoProgress]:
    """A rich progress bar on stderr; `hub` adds the live cost and failure columns."""
    if not enabled:
        yield _NoProgress()
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    if hub is not None:
        columns.append(HubColumn(hub))
    with Progress(*columns, console=console or Console(stderr=True), transient=False) as progress:
        yield progress
