"""One shape for what a stage tells the person who ran it: summary lines, tables, what failed, what was left
undone. Every stage's report gives a `StageOutcome` (`outcome()`), and the CLI prints them all one way and
ends with exit code 3 when anything failed or was skipped, so a script never mistakes a half-done stage for
a finished one. What counts as failed is the stage's to say (a failed request, an image that could not be
made, a check that could not get a verdict), which is why each report builds its own outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from rich.table import Table


@dataclass
class StageOutcome:
    summary: list[str]
    """Plain-text lines of what the stage did (outside text in them is made printable by whoever prints)."""
    tables: list[Table] = field(default_factory=list)
    failed: int = 0
    """Units of work recorded as failed (in failures.jsonl, or as error results)."""
    asked: int = 0
    """Units of work attempted, the denominator of `failed`."""
    what: str = "request(s)"
    """What a unit is, in the closing line: `3 of 40 request(s) failed`."""
    retry: str = "--retry-failed"
    """The option that asks the failed units again."""
    incomplete: list[str] = field(default_factory=list)
    """Work skipped, one reason per kind (a case without its image, an answer that matched no case)."""

    @property
    def complete(self) -> bool:
        return not self.failed and not self.incomplete


class StageReport(Protocol):
    """What every stage returns."""

    def outcome(self) -> StageOutcome: ...
