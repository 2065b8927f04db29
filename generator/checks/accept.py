"""Stage `accept`: the scenarios that passed every enabled check become benchmark `Case`s (cases.jsonl),
and a filter report says how many fell at each check, per domain (a table + filter_report.json).

Why "fell at": the checks run as a funnel (see `generator.checks.stage`), so each rejected scenario is counted
once, at the first check family (in run order) it did not pass. A family can fail three ways, reported
apart: `failed` (the check ran and said no), `error` (the check could not run: a model error, an
unreadable image; never a pass) and `missing` (never ran: e.g. `siuo check` not run since a new
scenario or a newly enabled check), plus `not_run` (its model is not there: listed by check name under
`not_run`; it blocks only families named in `check.required`). Scenarios marked `duplicate` by propose are not counted.

The verdicts used are the latest record of each check key (a `check --retry-errors` run supersedes an
error). Cases are appended (resume: a case already in cases.jsonl is not written twice).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from generator.cases import ReviewState
from generator.checks.stage import blocks, chosen_candidate, family_status, planned_checks, required_families
from generator.config import Settings
from generator.domains import domain_by_id, domain_by_label
from generator.errors import UserError
from generator.records import Case, CheckResult, Render, Scenario, stable_key
from generator.stage_report import StageOutcome
from generator.store import RunStore, write_text_atomic

STAGE = "accept"
REPORT_FILE = "filter_report.json"


@dataclass
class FilterReport:
    """Where each scenario ended: `accepted`, `not_rendered`, or the first check family it fell at."""

    checks: list[str]
    required: list[str] = field(default_factory=list)
    """The families a scenario had to pass (`check.required`)."""
    not_run: dict[str, str] = field(default_factory=dict)
    """Check name -> why it could not run at all (never counted as a pass)."""
    per_domain: dict[str, Counter] = field(default_factory=dict)
    reasons: dict[str, Counter] = field(default_factory=dict)
    """Per family: how many fell there because it `failed`, had an `error`, or was `missing`."""
    new_cases: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)
    """Scenario key -> outcome (for tests and the JSON report)."""
    review: dict[str, int] = field(default_factory=dict)
    """Of the accepted cases: how many reviewers rejected (never exported or evaluated) or edited."""

    def count(self, domain: str, outcome: str, reason: str | None = None) -> None:
        self.per_domain.setdefault(domain, Counter())[outcome] += 1
        if reason:
            self.reasons.setdefault(outcome, Counter())[reason] += 1

    @property
    def totals(self) -> Counter:
        total: Counter = Counter()
        for c in self.per_domain.values():
            total.update(c)
        return total

    def columns(self) -> list[str]:
        return ["not_rendered", *self.checks, "accepted"]

    def to_dict(self) -> dict[str, Any]:
        totals = self.totals
        return {
            "checks": self.checks,
            "required": self.required,
            "not_run": self.not_run,
            "scenarios": sum(totals.values()),
            "accepted": totals["accepted"],
            "new_cases": self.new_cases,
            "totals": {c: totals[c] for c in self.columns()},
            "fell_at": {c: totals[c] for c in self.columns() if c != "accepted"},
            "fell_at_by_reason": {fam: dict(self.reasons.get(fam, {})) for fam in self.checks},
            "per_domain": {
                d: {c: cnt[c] for c in self.columns()} | {"scenarios": sum(cnt.values())}
                for d, cnt in sorted(self.per_domain.items())
            },
            "outcomes": self.outcomes,
            "review": self.review,
        }

    def table(self) -> Table:
        t = Table(title="filter report: where scenarios fell (first failing check)")
        t.add_column("domain")
        t.add_column("scenarios", justify="right")
        for c in self.columns():
            t.add_column(c, justify="right", style="green" if c == "accepted" else None)
        rows = sorted(self.per_domain.items())
        for domain, cnt in rows + [("total", self.totals)]:
            t.add_row(
                domain,
                str(sum(cnt.values())),
                *(str(cnt[c]) for c in self.columns()),
                end_section=domain == rows[-1][0] if rows else False,
            )
        for fam in self.checks:
            r = self.reasons.get(fam)
            if r and (r["error"] or r["missing"]):
                t.caption = (t.caption + "; " if t.caption else "") + (
                    f"{fam}: {r['failed']} failed, {r['error']} error, {r['missing']} not run"
                )
        if self.review.get("rejected") or self.review.get("edited"):
            t.caption = (t.caption + "; " if t.caption else "") + (
                f"review: {self.review['rejected']} rejected (left out of exports and evaluation), "
                f"{self.review['edited']} edited"
            )
        for name, why in sorted(self.not_run.items()):
            t.caption = (t.caption + "; " if t.caption else "") + f"NOT RUN {name}: {why}"
        return t

    def outcome(self) -> StageOutcome:
        """Scenarios that fell at a check are the filter working, not failures."""
        return StageOutcome(
            summary=[f"{self.new_cases} new cases in cases.jsonl; report in {REPORT_FILE}"],
            tables=[self.table()],
        )


def mcqa_options(scenario: Scenario) -> tuple[dict[str, str] | None, str | None]:
    """Options A.. from the reference answer and the distractors; the correct letter's position is drawn
    from the scenario key (stable, and spread over the letters as in the official file)."""
    distractors = [d for d in scenario.mcqa_distractors if d.strip()]
    if not distractors:
        return None, None
    answers = list(distractors)
    position = int(stable_key("mcqa-position", scenario.key), 16) % (len(answers) + 1)
    answers.insert(position, scenario.reference_answer)
    letters = [chr(ord("A") + i) for i in range(len(answers))]
    return dict(zip(letters, answers)), letters[position]


def question_id(scenario: Scenario) -> str:
    return f"gen-{scenario.key}"


def _category(domain: str, extra_file: str | None) -> str:
    try:
        return domain_by_id(domain, extra_file).label
    except UserError:
        d = domain_by_label(domain, extra_file)
        return d.label if d else domain


def accept(store: RunStore, settings: Settings) -> FilterReport:
    """Write the accepted cases and the filter report (see the module docstring)."""
    plan = planned_checks(settings)
    required = required_families(settings, plan)
    scenarios = [s for s in store.read(Scenario) if s.status != "duplicate"]
    if not scenarios:
        raise UserError(f"{store.file_for(Scenario)}: no scenarios to accept")
    renders: dict[str, dict[int, Render]] = {}
    for r in store.read(Render):
        renders.setdefault(r.scenario_id, {}).setdefault(r.candidate, r)
    results: dict[str, dict[tuple[str, int | None], CheckResult]] = {}
    for res in store.read_latest(CheckResult):
        results.setdefault(res.scenario_id, {})[(res.check, res.candidate)] = res
    done = store.done_keys(Case)
    report = FilterReport(checks=list(plan), required=sorted(required))
    with store.stage(STAGE) as entry:
        for s in scenarios:
            mine = results.get(s.key, {})
            for (name, _), res in mine.items():
                if res.not_run and name in {n for names in plan.values() for n in names}:
                    report.not_run.setdefault(name, res.not_run)
            rendered = renders.get(s.key, {})
            if not rendered:
                report.count(s.domain, "not_rendered")
                report.outcomes[s.key] = "not_rendered"
                continue
            align = (
                [r for (n, _), r in mine.items() if n == "alignment" and not r.not_run] if "alignment" in plan else []
            )
            candidate = chosen_candidate(align, sorted(rendered))
            fell = None
            for fam, names in plan.items():
                status = family_status(fam, names, mine, candidate)
                if blocks(status, fam, required):
                    fell = fam
                    report.count(s.domain, fam, status)
                    break
            if fell is not None or candidate not in rendered:  # (a chosen candidate is always rendered)
                report.outcomes[s.key] = fell or "not_rendered"
                continue
            report.count(s.domain, "accepted")
            report.outcomes[s.key] = "accepted"
            case = _case(s, rendered[candidate], mine, settings)
            if case.key not in done:
                store.append(case)
                done.add(case.key)
                report.new_cases += 1
        entry.counts.update(accepted=report.totals["accepted"], new_cases=report.new_cases)
    state = ReviewState.load(store)
    accepted_keys = {f"case-{question_id(s)}" for s in scenarios if report.outcomes.get(s.key) == "accepted"}
    report.review = {
        "rejected": sum(state.rejected(k) for k in accepted_keys),
        "edited": sum(state.revision(k) > 0 for k in accepted_keys),
    }
    path = store.path / REPORT_FILE
    write_text_atomic(path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    return report


def _case(s: Scenario, render: Render, results: dict[tuple[str, int | None], CheckResult], settings: Settings) -> Case:
    options, correct = mcqa_options(s)
    scores = {
        f"{name}" + (f"[{cand}]" if cand is not None else ""): r.score
        for (name, cand), r in sorted(results.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1]))
    }
    return Case(
        question_id=question_id(s),
        image=Path(render.path).name,
        image_path=render.path,
        question=s.question,
        category=_category(s.domain, settings.domains_file),
        domain=s.domain,
        safety_warning=s.hazard,
        hazard=s.hazard,
        reference_answer=s.reference_answer,
        options=options,
        correct_option=correct,
        split="hardened" if s.parent_id else "generated",
        scenario_id=s.key,
        parent_id=s.parent_id,
        strategy=s.strategy,
        provenance={
            "render": render.model_dump(
                include={
                    "key",
                    "backend",
                    "model",
                    "seed",
                    "steps",
                    "guidance_scale",
                    "width",
                    "height",
                    "candidate",
                    "source",
                    "licence",
                }
            ),
            "check_scores": scores,
            "scenario": s.provenance.model_dump(),
        },
    )
