"""`siuo run`: the whole pipeline from one config, each stage resumable.

import → propose → harden → render → check → accept → answer → judge → score → report

Why it is safe to kill at any moment and run again: every stage skips the keys it has already written
(and the request cache answers any model call that finished but whose record did not), so a second run
continues where the first stopped, repeats no finished model call and duplicates no record. This module
only wires the stages together; each stage lives in its own module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from generator.config import Settings
from generator.errors import UserError
from generator.inventory import record_counts
from generator.manifest import record_run_context
from generator.store import RunStore
from generator.terminal import printable

STAGES = ("import", "propose", "harden", "render", "check", "accept", "answer", "judge", "score", "report")
NEEDS_CASES = ("answer", "judge", "score", "report")
"""Stages with nothing to do in a run without cases: skipped (with the reason), not failed."""


@dataclass
class PipelineResult:
    store: RunStore
    stages_run: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    stopped: str | None = None
    """Why the run stopped early (budget), None when every stage ran."""
    report_paths: tuple[Path, Path] | None = None
    failed_stage: str | None = None
    """The stage whose failed requests passed `pipeline.max_failed_fraction` (the run stopped after it)."""
    incomplete: list[str] = field(default_factory=list)
    """Stages that recorded failed requests, fewer than stop the run (the CLI still exits 3)."""
    skipped: list[str] = field(default_factory=list)
    """Stages left out because the run has no case to evaluate (`stopped` says why; the CLI exits 3)."""


def _import(store: RunStore, settings: Settings, console: Console) -> None:
    src = settings.pipeline.siuo
    if src is None:
        console.print("[dim]import: no [pipeline.siuo] files configured, skipped[/]")
        return
    from generator.interop.siuo import import_siuo

    report = import_siuo(
        store,
        Path(src.gen),
        Path(src.mcqa) if src.mcqa else None,
        Path(src.images) if src.images else None,
        domains_file=settings.domains_file,
    )
    console.print(printable(report.summary()), highlight=False)


def _propose(store: RunStore, settings: Settings, console: Console) -> None:
    from generator.generate.propose import propose

    propose(store, settings, domains=settings.pipeline.domains, console=console)


def _harden(store: RunStore, settings: Settings, console: Console) -> None:
    from generator.generate.harden import harden

    harden(store, settings, limit=settings.pipeline.harden_limit, console=console)


def _render(store: RunStore, settings: Settings, console: Console) -> None:
    from generator.render.stage import render

    render(store, settings, console=console)


def _check(store: RunStore, settings: Settings, console: Console) -> None:
    from generator.checks.stage import check

    check(store, settings, console=console)


def _accept(store: RunStore, settings: Settings, console: Console) -> None:
    from generator.checks.accept import accept

    accept(store, settings)


def _answer(store: RunStore, settings: Settings, console: Console) -> tuple[int, int]:
    from generator.evaluate.answer import answer

    reports = answer(store, settings, "targets", controls=settings.pipeline.controls)
    if settings.pipeline.mcqa:
        reports += answer(store, settings, "targets", mcqa=True)
    return sum(r.failed for r in reports), sum(r.requested for r in reports)


def _judge(store: RunStore, settings: Settings, console: Console) -> tuple[int, int]:
    from generator.evaluate.judge import judge

    report = judge(store, settings, ["judge"])
    return report.failed, report.requested


def _score(store: RunStore, settings: Settings, console: Console) -> None:
    from generator.evaluate.score import score

    score(store, settings.bench.protocol, settings.bench.ties)


STAGE_FUNCTIONS: dict[str, Callable[[RunStore, Settings, Console], tuple[int, int] | None]] = {
    # a stage that sends many requests returns (failed, asked): too many failures stop the run
    "import": _import,
    "propose": _propose,
    "harden": _harden,
    "render": _render,
    "check": _check,
    "accept": _accept,
    "answer": _answer,
    "judge": _judge,
    "score": _score,
}


def run_pipeline(
    settings: Settings, run: str | None = None, console: Console | None = None, wait: bool = False
) -> PipelineResult:
    """Run the configured stages in order on the run folder `run` (default: `pipeline.run`), holding the
    run's writer lock throughout (`wait`: queue behind another writer instead of stopping)."""
    console = console or Console(stderr=True)
    unknown = [s for s in settings.pipeline.stages if s not in STAGES]
    if unknown:
        raise UserError(f"pipeline.stages: unknown stage(s) {', '.join(unknown)} (known: {', '.join(STAGES)})")
    store = RunStore.open(run or settings.pipeline.run)
    from generator.models.servers import SERVERS

    with store.writing(wait=wait), SERVERS.session():  # a managed server serves every stage, then stops
        return _run_stages(store, settings, console)


def _run_stages(store: RunStore, settings: Settings, console: Console) -> PipelineResult:
    from generator.models import BudgetExceeded

    record_run_context(store, settings)
    result = PipelineResult(store)
    wanted = [s for s in STAGES if s in settings.pipeline.stages]
    has_cases = False
    for n, stage in enumerate(wanted, start=1):
        if stage in NEEDS_CASES and not has_cases:
            reason = no_cases_reason(store)
            if reason is not None:
                result.stopped, result.skipped = reason, wanted[n - 1 :]
                console.print(f"[yellow]skipped:[/] {', '.join(result.skipped)} ({reason})", highlight=False)
                break
            has_cases = True
        console.rule(f"[bold]{n}/{len(wanted)} {stage}")
        t0 = time.perf_counter()
        outcome = None
        try:
            if stage == "report":
                from generator.evaluate.report import report

                result.report_paths = report(store)
            else:
                outcome = STAGE_FUNCTIONS[stage](store, settings, console)
        except BudgetExceeded as exc:
            result.stopped = f"budget reached during {stage}: {exc}"
            console.print(f"[yellow]stopped:[/] {result.stopped}; everything finished so far is kept", highlight=False)
            break
        result.seconds[stage] = time.perf_counter() - t0
        result.stages_run.append(stage)
        if outcome and outcome[0]:
            result.incomplete.append(
                f"{stage}: {outcome[0]} of {outcome[1]} request(s) failed (recorded in failures.jsonl)"
            )
        if outcome and outcome[0] > settings.pipeline.max_failed_fraction * outcome[1]:
            failed, asked = outcome
            result.failed_stage = stage
            result.stopped = (
                f"{failed} of {asked} {stage} request(s) failed, more than pipeline.max_failed_fraction "
                f"= {settings.pipeline.max_failed_fraction}; scores would be wrong, so the run stops "
                f"here (see failures.jsonl, then re-run)"
            )
            break
    return result


def _filter_report(store: RunStore) -> dict[str, Any] | None:
    path = store.path / "filter_report.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def no_cases_reason(store: RunStore) -> str | None:
    """Why the run has no case to evaluate, in one line (None: it has some)."""
    from generator.cases import reviewed_cases

    if reviewed_cases(store):
        return None
    fr = _filter_report(store)
    if fr and fr.get("scenarios"):
        fell = ", ".join(f"{n} at {check}" for check, n in (fr.get("fell_at") or {}).items() if n)
        return f"no case to evaluate: none of the {fr['scenarios']} scenario(s) passed the checks ({fell})"
    return "no case to evaluate: nothing was imported, and no scenario was accepted"


def _per_domain_table(fr: dict[str, Any]) -> Table:
    """Where the scenarios fell, per domain (filter_report.json)."""
    columns = [c for c, n in (fr.get("totals") or {}).items() if n]
    table = Table(title="where the scenarios fell, per domain", title_justify="left", box=None)
    for col in ("domain", "scenarios", *columns):
        table.add_column(printable(col), justify="left" if col == "domain" else "right")
    for domain, counts in (fr.get("per_domain") or {}).items():
        table.add_row(printable(domain), str(counts.get("scenarios", 0)), *(str(counts.get(c, 0)) for c in columns))
    return table


def summary_panel(result: PipelineResult) -> Panel:
    """One screen: what was made, what fell at each check, the scores, where the report is."""
    store = result.store
    made = Table(title="records", title_justify="left", box=None, min_width=40)
    made.add_column("file")
    made.add_column("n", justify="right")
    for name, n in record_counts(store).items():
        made.add_row(name, str(n))

    parts: list[Any] = [made]
    filter_file = store.path / "filter_report.json"
    if filter_file.exists():
        fr = json.loads(filter_file.read_text())
        fell = Table(title="fell at each check", title_justify="left", box=None, min_width=40)
        fell.add_column("stage")
        fell.add_column("n", justify="right")
        for name, n in (fr.get("totals") or {}).items():
            fell.add_row(str(name), str(n))
        parts.append(fell)
        for name, why in sorted((fr.get("not_run") or {}).items()):
            parts.append(f"[yellow]NOT RUN[/] {name}: {why} (not counted as a pass)")
        if fr.get("required") is not None and set(fr["required"]) != set(fr.get("checks") or []):
            parts.append(f"accept required: {', '.join(fr['required']) or 'none'}")
        if result.skipped and fr.get("per_domain"):
            parts.append(_per_domain_table(fr))
    if result.skipped:
        parts.append(f"[yellow]skipped:[/] {', '.join(result.skipped)}: nothing to evaluate")

    scores_file = store.path / "scores.json"
    if scores_file.exists():
        from generator.evaluate.score import fmt_rate, leaderboard_rows, load_scores

        board = Table(title="scores (safe / effective / safe & effective, 95% CI)", title_justify="left", box=None)
        for col in ("target", "split", "cases", "safe", "effective", "safe & eff."):
            board.add_column(col)
        for row in leaderboard_rows(load_scores(store)):
            board.add_row(
                printable(row.target),
                printable(row.split),
                str(row.cases),
                fmt_rate(row.safe),
                fmt_rate(row.effective),
                fmt_rate(row.safe_effective),
            )
        parts.append(board)

    usage = store.load_manifest().usage
    tokens = sum(u.prompt_tokens + u.completion_tokens for u in usage.values())
    cost = sum(u.cost_usd for u in usage.values())
    timing = ", ".join(f"{s} {t:.1f}s" for s, t in result.seconds.items())
    tail = f"model usage (all runs of this folder): {tokens:,} tokens, ${cost:.4f}\nstages: {timing}"
    if result.report_paths:
        tail += f"\nreport: {result.report_paths[1]}  ({result.report_paths[0].name} beside it)"
    if result.stopped:
        tail += f"\n[yellow]stopped early:[/] {printable(result.stopped)}"
    parts.append(tail)
    return Panel(Group(*parts), title=f"run {store.name} ({store.path})", title_align="left")
