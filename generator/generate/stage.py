"""The machinery propose and harden share: model requests run under one progress bar and committed in
order, per-group tallies and the summary table, which work is already done, and the manifest entry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from generator.concurrency import bounded_map
from generator.progress import stage_progress
from generator.prompts import Prompt
from generator.records import Failure, Scenario
from generator.stage_report import StageOutcome
from generator.store import RunStore


@dataclass
class Tally:
    asked: int = 0
    written: int = 0
    failed: int = 0
    duplicates: int = 0
    skipped: int = 0
    """Already done in an earlier run (no request made)."""


@dataclass
class StageSummary:
    """Counts per group (domain for propose, strategy for harden) of one stage run."""

    stage: str
    group_label: str
    groups: dict[str, Tally] = field(default_factory=dict)
    embedder: str | None = None
    stopped: str | None = None
    """Why the run stopped early (e.g. the budget), None when it finished."""

    def tally(self, group: str) -> Tally:
        return self.groups.setdefault(group, Tally())

    @property
    def total(self) -> Tally:
        t = Tally()
        for g in self.groups.values():
            t.asked += g.asked
            t.written += g.written
            t.failed += g.failed
            t.duplicates += g.duplicates
            t.skipped += g.skipped
        return t

    def counts(self) -> dict[str, int]:
        t = self.total
        return {
            "asked": t.asked,
            "written": t.written,
            "failed": t.failed,
            "duplicates": t.duplicates,
            "skipped": t.skipped,
        }

    def table(self) -> Table:
        table = Table(
            title=f"{self.stage}: {self.total.written} written, rejected {self.total.duplicates} "
            f"near-duplicates, {self.total.failed} failed"
        )
        table.add_column(self.group_label)
        for col in ("asked", "written", "failed", "duplicates", "already done"):
            table.add_column(col, justify="right")
        rows = list(self.groups.items()) + [("total", self.total)]
        for name, t in rows:
            table.add_row(
                name,
                str(t.asked),
                str(t.written),
                str(t.failed),
                str(t.duplicates),
                str(t.skipped),
                style="bold" if name == "total" else None,
            )
        return table

    def outcome(self) -> StageOutcome:
        t = self.total
        return StageOutcome(
            summary=[f"stopped early: {self.stopped}"] if self.stopped else [],
            tables=[self.table()],
            failed=t.failed,
            asked=t.asked,
        )


async def run_stage_requests(
    store: RunStore,
    stage: str,
    label: str,
    jobs: Sequence[Callable[[], Awaitable[Any]]],
    commit: Callable[[int, Any], None],
    summary: StageSummary,
    console: Console | None,
    hub: Any,
    limit: int,
) -> None:
    """Run a stage's model requests under its progress bar and stage log (propose, harden), at most
    `limit` at once, committing results in job order; the counts reach run.json even when the run stops
    early (budget).

    Why in order: de-duplication decides between near-twins by who came first, and that must not
    depend on which reply arrived first.
    """
    with store.stage(stage) as stage_log, stage_progress(console, hub) as bar:
        task = bar.add_task(label, total=len(jobs))
        try:
            await bounded_map(lambda job: job(), jobs, limit, commit, ordered=True, on_done=lambda: bar.advance(task))
        finally:
            stage_log.counts.update(summary.counts())


def done_work_keys(store: RunStore, stage: str, retry_failed: bool = False) -> set[str]:
    """Work already finished by `stage`: scenarios written (their key is the work key) and, unless
    `retry_failed`, recorded failures (a failure is not asked again by a plain re-run)."""
    done = store.done_keys(Scenario)
    if not retry_failed:
        done |= {f.work_key for f in store.iter_records(Failure) if f.stage == stage}
    return done


def record_manifest(store: RunStore, stage: str, client: Any, prompt: Prompt, extra: dict[str, str]) -> None:
    with store.update_manifest() as m:
        m.models[stage] = f"{client.name}:{client.model}"
        m.prompt_hashes[stage] = prompt.sha256
        for name, value in extra.items():
            m.prompt_hashes[name] = value
