"""Stage `check`: is each modality benign alone, does the image show what was meant, does the pair carry
the hazard? One `CheckResult` per (scenario, check[, candidate]) in checks.jsonl.

Each check is one unit in `generator.checks` (one interface: local image models score batches of image
files, remote ones are one request each); this module plans them, runs them in order and writes.

Checks, by family (`check.enabled` lists families), in the order they run:

- `well_formed`: no model; the texts are finished prose, not a model's scaffolding (template residue,
  JSON or markdown fragments, near-empty fields, duplicate MCQA options, a question that is not one;
  generator/checks/wellformed.py).
- `alignment` (per candidate): CLIP cosine between the image and `image_description`; the candidate with
  the best score is the scenario's chosen image, and the family passes when that score reaches
  `check.alignment_threshold`. Every later image check looks at the chosen candidate only.
- `image_benign`: `image_benign.clip`, a CLIP zero-shot screen (best unsafe concept of
  prompts/unsafe_concepts.txt minus best safe concept of prompts/safe_concepts.txt must not exceed
  `check.unsafe_concept_margin`); plus `image_benign.safety_checker` (diffusers' checker, when
  `check.safety_checker` is set) and `image_benign.guard` (role `image_guard`: moderation endpoint with
  image input or a chat-based safety model, when the role is set; `image_guard = "opennsfw"` runs open_nsfw
  locally, with the other local image models).
- `text_benign`: the text guard (role `text_guard`) on the question.
- `no_leakage`: `no_leakage.question`, a text-only judge (role `text_checker`, default the first judge)
  reads the question alone and must not find it unsafe (strict on purpose: SIUO's premise is that the
  question is harmless on its own); `no_leakage.description`, the image description alone must not be
  flagged (text guard when set, else the text-only judge).
- `pair_hazard`: a VLM (role `vlm_checker`) sees image + question and must answer {unsafe, hazard}; then
  the same model rates 0..1 how well the hazard it named matches the scenario's `hazard`
  (prompts/check_hazard_match.md). We chose a judged match over embedding similarity: two hazards worded
  differently ("may jump" / "suicide risk") are the same to a judge and far apart to a sentence embedder.
  Passes when unsafe and match >= `check.hazard_match_threshold`.

Why a funnel (`check.stop_at_first_failure`, default on): cheap local checks run first and a scenario that
failed (or errored) one family is not sent to the paid judges. Turn it off to score every family of every
scenario (costlier, more informative).

A check that could not run (model error, unreadable image) is written with `passed=None` and its `error`:
never a pass. A check whose model is not there at all (CLIP without its weights file) is written with
`passed=None` and `not_run` (the reason): the summary, filter report and report list it as not run, a
family with a result that did run is judged on that, and `check.required` says whether a family that did
not run at all blocks acceptance (by default it does). `retry_errors=True` runs those again (the latest record of a key wins, see `accept`).
Everything else resumes: written keys are skipped, so a re-run sends no request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from generator.checks import (
    AlignmentCheck,
    Check,
    CheckNotRun,
    ConceptScreenCheck,
    LocalImageCheck,
    RemoteCheck,
    Subject,
    WellFormedCheck,
    build_units,
    read_concepts,
    text_checker_endpoint,
)

__all__ = [
    "check",
    "CheckRunner",
    "CheckReport",
    "planned_checks",
    "family_status",
    "chosen_candidate",
    "required_families",
    "blocks",
    "read_concepts",
    "text_checker_endpoint",
]
from generator.concurrency import bounded_map
from generator.config import Settings
from generator.errors import UserError
from generator.progress import stage_progress
from generator.prompts import load_prompt
from generator.records import CheckResult, Render, Scenario
from generator.stage_report import StageOutcome
from generator.store import RunStore

log = logging.getLogger(__name__)

STAGE = "check"
CHECK_ORDER = ("well_formed", "alignment", "image_benign", "text_benign", "no_leakage", "pair_hazard")
PROMPTS = ("check_pair_hazard", "check_hazard_match", "check_text_only")


# ----------------------------------------------------------------------------------------------------
# What runs, and what a scenario's results say
# ----------------------------------------------------------------------------------------------------


def family_of(check_name: str) -> str:
    return check_name.split(".", 1)[0]


def planned_checks(settings: Settings) -> dict[str, list[str]]:
    """Check names per enabled family, in run order: what `accept` requires of every scenario."""
    cs = settings.check
    unknown = [f for f in cs.enabled if f not in CHECK_ORDER]
    if unknown:
        raise UserError(f"check.enabled: unknown check(s) {', '.join(unknown)} (known: {', '.join(CHECK_ORDER)})")
    plan: dict[str, list[str]] = {}
    for fam in CHECK_ORDER:
        if fam not in cs.enabled:
            continue
        if fam == "image_benign":
            names = ["image_benign.clip"]
            if cs.safety_checker:
                names.append("image_benign.safety_checker")
            if settings.roles.image_guard:
                names.append("image_benign.guard")
        elif fam == "no_leakage":
            names = ["no_leakage.question", "no_leakage.description"]
        else:
            names = [fam]
        plan[fam] = names
    return plan


def _require_roles(settings: Settings, plan: dict[str, list[str]]) -> None:
    need = []
    if "text_benign" in plan and not settings.roles.text_guard:
        need.append("text_benign needs roles.text_guard")
    if "no_leakage" in plan and not text_checker_endpoint(settings):
        need.append("no_leakage needs roles.text_checker (or roles.judge)")
    if "pair_hazard" in plan and not settings.roles.vlm_checker:
        need.append("pair_hazard needs roles.vlm_checker")
    if need:
        raise UserError(
            "check: " + "; ".join(need) + ": set the role in the config or remove the check from check.enabled"
        )


def chosen_candidate(alignment: Sequence[CheckResult], rendered: Sequence[int]) -> int | None:
    """The scenario's image: the candidate with the best alignment score (the lowest rendered candidate
    when alignment is not checked). None when no candidate could be scored."""
    scored = [r for r in alignment if r.score is not None and r.candidate is not None]
    if scored:
        return max(scored, key=lambda r: (r.score, -(r.candidate or 0))).candidate
    if alignment:
        return None
    return min(rendered) if rendered else None


def family_status(
    family: str, names: Sequence[str], results: dict[tuple[str, int | None], CheckResult], candidate: int | None
) -> str:
    """`passed`, `failed`, `error` or `missing` for one scenario, from its results (name, candidate) -> result."""
    if family == "alignment":
        align = [r for (n, _), r in results.items() if n == "alignment"]
        if not align:
            return "missing"
        if all(r.not_run for r in align):
            return "not_run"
        best = results.get(("alignment", candidate)) if candidate is not None else None
        if best is not None and best.passed:
            return "passed"
        if best is not None and best.passed is False:
            return "failed"
        return "error" if any(r.passed is None for r in align) else "failed"
    statuses = []
    for name in names:
        key_candidate = candidate if name.startswith(("image_benign", "pair_hazard")) else None
        r = results.get((name, key_candidate))
        statuses.append(
            "missing"
            if r is None
            else "not_run"
            if r.not_run
            else "passed"
            if r.passed
            else "failed"
            if r.passed is False
            else "error"
        )
    for s in ("failed", "error", "missing"):
        if s in statuses:
            return s
    # checks that did not run are left out when another check of the family ran and passed
    return "passed" if "passed" in statuses else "not_run"


def required_families(settings: Settings, plan: dict[str, list[str]]) -> set[str]:
    """The families a scenario must pass (`check.required`, default every enabled one)."""
    required = settings.check.required
    if required is None:
        return set(plan)
    unknown = [f for f in required if f not in CHECK_ORDER]
    if unknown:
        raise UserError(f"check.required: unknown check(s) {', '.join(unknown)} (known: {', '.join(CHECK_ORDER)})")
    return set(required) & set(plan)


def blocks(status: str, family: str, required: set[str]) -> bool:
    """Whether a family's status stops a scenario: anything but a pass, except a not-run optional family."""
    return status != "passed" and not (status == "not_run" and family not in required)


# ----------------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------------


@dataclass
class CheckReport:
    new: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    not_run: dict[str, str] = field(default_factory=dict)
    """Check name -> why it could not run at all."""
    skipped: int = 0

    def add(self, r: CheckResult) -> None:
        self.new[r.check] += 1
        if r.not_run:
            self.not_run[r.check] = r.not_run
        elif r.passed is False:
            self.failed[r.check] += 1
        elif r.passed is None:
            self.errors[r.check] += 1

    def summary(self) -> str:
        if not self.new:
            return f"check: nothing new ({self.skipped} results already written)"
        parts = [
            f"{n}: NOT RUN ({self.not_run[n]})"
            if n in self.not_run
            else f"{n}: {c} new ({self.failed[n]} failed, {self.errors[n]} errors)"
            for n, c in sorted(self.new.items())
        ]
        return "check: " + "; ".join(parts) + f"; {self.skipped} already written"

    def outcome(self) -> StageOutcome:
        """A check that ran and did not pass is a result, not a failure; one that could not run is."""
        return StageOutcome(
            summary=[self.summary()],
            failed=sum(self.errors.values()),
            asked=sum(self.new.values()),
            what="check(s)",
            retry="--retry-errors",
        )


REMOTE_LABELS = {
    "image_benign": "image guard",
    "text_benign": "text guard",
    "no_leakage": "text-only judge",
    "pair_hazard": "pair judge",
}


def has_image(subject: Subject, name: str) -> bool:
    """The stage's rule: a scenario without an image is not checked at all (it falls at `not_rendered`)."""
    return bool(subject.images)


class CheckRunner:
    """Runs check units over subjects: the results so far (latest per key), the funnel, and the writing.

    `write` receives every new record (the stage appends to checks.jsonl; calibration to its own file).
    `wants(subject, name)` says whether a check applies to a subject at all.
    """

    def __init__(
        self,
        settings: Settings,
        subjects: Sequence[Subject],
        existing: Iterable[CheckResult],
        write: Callable[[CheckResult], None],
        *,
        store: RunStore,
        retry_errors: bool = False,
        funnel: bool | None = None,
        wants: Callable[[Subject, str], bool] = has_image,
        console: Console | None = None,
    ):
        self.settings, self.subjects, self.store = settings, list(subjects), store
        self.retry_errors, self.wants, self.console = retry_errors, wants, console
        self.funnel = settings.check.stop_at_first_failure if funnel is None else funnel
        self.plan = planned_checks(settings)
        _require_roles(settings, self.plan)
        self.units: list[Check] = build_units(settings, self.plan)
        self._write = write
        self.hub: Any = None
        """The ModelHub while the remote checks run (its cost and failures show in the progress bar)."""
        self.report = CheckReport()
        self.latest: dict[str, CheckResult] = {}
        self.by_subject: dict[str, dict[tuple[str, int | None], CheckResult]] = {}
        for r in existing:
            self._remember(r)
        self._counted: set[str] = set()

    # -- bookkeeping --------------------------------------------------------------------------------

    def is_done(self, subject: Subject, name: str, candidate: int | None) -> bool:
        r = self.latest.get(CheckResult(scenario_id=subject.key, check=name, candidate=candidate).key)
        if r is None or (self.retry_errors and r.passed is None):
            return False
        if r.key not in self._counted:
            self._counted.add(r.key)
            self.report.skipped += 1
        return True

    def _remember(self, r: CheckResult) -> None:
        self.latest[r.key] = r
        self.by_subject.setdefault(r.scenario_id, {})[(r.check, r.candidate)] = r

    def write(self, r: CheckResult) -> None:
        self._write(r)
        self._remember(r)
        self.report.add(r)

    def results_of(self, subject: Subject) -> dict[tuple[str, int | None], CheckResult]:
        return self.by_subject.get(subject.key, {})

    def chosen(self, subject: Subject) -> int | None:
        align = (
            [r for (n, _), r in self.results_of(subject).items() if n == "alignment" and not r.not_run]
            if "alignment" in self.plan
            else []
        )
        return chosen_candidate(align, sorted(subject.images))

    def alive(self, subject: Subject, name: str) -> bool:
        """Whether check `name` should run for this subject: it applies, and (funnel) nothing failed before."""
        family = family_of(name)
        if not self.wants(subject, name):
            return False
        if not self.funnel:
            return True
        results = self.results_of(subject)
        candidate = self.chosen(subject)
        for fam, names in self.plan.items():
            if fam == family:
                return True
            if family_status(fam, names, results, candidate) not in ("passed", "not_run"):
                return False
        return True

    def work(self, unit: Check) -> list[tuple[Subject, int | None]]:
        """What `unit` still has to do: every candidate for alignment, the chosen image for the other image
        checks, the texts for the rest."""
        out: list[tuple[Subject, int | None]] = []
        for s in self.subjects:
            if unit.name == "alignment":
                if self.wants(s, unit.name):
                    out += [(s, k) for k in sorted(s.images) if not self.is_done(s, unit.name, k)]
                continue
            if not self.alive(s, unit.name):
                continue
            k = self.chosen(s) if unit.on_image else None
            if unit.on_image and k is None:
                continue
            if not self.is_done(s, unit.name, k):
                out.append((s, k))
        return out

    # -- rules without a model ------------------------------------------------------------------------

    def run_rules(self) -> None:
        for unit in self.units:
            if isinstance(unit, WellFormedCheck):
                for s, _ in self.work(unit):
                    self.write(unit.record(s))

    # -- local image models -------------------------------------------------------------------------

    def run_local(self) -> None:
        for unit in self.units:
            if isinstance(unit, LocalImageCheck):
                self.run_local_unit(unit)

    def run_local_unit(self, unit: LocalImageCheck) -> None:
        work = self.work(unit)
        if not work:
            return
        try:
            unit.load()
        except CheckNotRun as exc:
            for s, k in work:
                self.write(unit.not_run(s, k, str(exc)))
            return
        # Where the batches run is the executor's business (this process, or Ray actors that each load the
        # unit once: generator/executors.py); the records are written here, by the driver alone.
        from generator.executors import Loader, batches_of, loaded_unit, map_batches, unit_batch

        chunks = batches_of(self.settings, work, self.settings.check.batch)
        batches = [[(s.images[k], s.image_description or "") for s, k in chunk] for chunk in chunks]
        with stage_progress(self.console, self.hub) as progress:
            task = progress.add_task(f"{unit.name}: {len(work)} images", total=len(work))
            for i, outcomes in map_batches(
                self.settings, Loader(loaded_unit, (unit,)), unit_batch, batches, loaded=unit
            ):
                if isinstance(outcomes, Exception):  # the batch function itself failed: each image records it
                    outcomes = [outcomes] * len(chunks[i])
                for (s, k), outcome in zip(chunks[i], outcomes):
                    self.write(unit.record(s, k, outcome))
                progress.advance(task, len(chunks[i]))

    # -- models behind the model door ---------------------------------------------------------------

    async def run_remote(self) -> None:
        remote = [u for u in self.units if isinstance(u, RemoteCheck)]
        if not remote:
            return
        from generator.models import ModelHub

        hub = self.hub = ModelHub(self.settings, store=self.store)
        async with hub:
            models = {u.name: u.bind(hub) for u in remote}
            for family in dict.fromkeys(u.family for u in remote):
                units = [u for u in remote if u.family == family]
                jobs = [u.job(s, k) for u in units for s, k in self.work(u)]
                await self.gather(REMOTE_LABELS[family], jobs, *[m for u in units for m in models[u.name]])

    async def gather(self, label: str, jobs: list, *models: Any) -> None:
        """Run the jobs, at most as many at once as the models' endpoints allow (memory bound)."""
        if not jobs:
            return
        with stage_progress(self.console, self.hub) as progress:
            task = progress.add_task(f"{label}: {len(jobs)}", total=len(jobs))

            async def run(job) -> None:
                self.write(await job())
                progress.advance(task)

            await bounded_map(run, jobs, max(_concurrency(m) for m in models))

    def run(self) -> CheckReport:
        self.run_rules()
        self.run_local()
        asyncio.run(self.run_remote())
        return self.report

    @property
    def clip_model(self) -> str | None:
        """The CLIP model's name when a CLIP check loaded it (for the run manifest)."""
        for u in self.units:
            if isinstance(u, (AlignmentCheck, ConceptScreenCheck)) and u.clip.loaded:
                return u.clip.name
        return None


def _concurrency(model: Any) -> int:
    """How many of a model's checks may be pending at once: its endpoint's bound (a local model: a few)."""
    endpoint = getattr(model, "endpoint", None) or getattr(getattr(model, "chat", None), "endpoint", None)
    return endpoint.max_concurrency if endpoint is not None else 4


def scenario_subjects(store: RunStore) -> list[Subject]:
    """The run's scenarios (duplicates left out) with their rendered candidates."""
    renders: dict[str, dict[int, Render]] = {}
    for r in store.read(Render):
        renders.setdefault(r.scenario_id, {}).setdefault(r.candidate, r)
    return [
        Subject(
            key=s.key,
            question=s.question,
            image_description=s.image_description,
            hazard=s.hazard,
            images={k: store.resolve(r.path) for k, r in sorted(renders.get(s.key, {}).items())},
            reference_answer=s.reference_answer,
            options=(s.reference_answer, *s.mcqa_distractors) if s.mcqa_distractors else (),
            image_prompt=s.image_prompt,
        )
        for s in store.read(Scenario)
        if s.status != "duplicate"
    ]


def check(
    store: RunStore, settings: Settings, *, retry_errors: bool = False, console: Console | None = None
) -> CheckReport:
    """Run every enabled check that is not written yet (see the module docstring)."""
    subjects = scenario_subjects(store)
    runner = CheckRunner(
        settings,
        subjects,
        store.read_latest(CheckResult),
        store.append,
        store=store,
        retry_errors=retry_errors,
        console=console,
    )
    if not subjects:
        raise UserError(f"{store.file_for(Scenario)}: no scenarios to check")
    prompts = {name: load_prompt(name) for name in PROMPTS}
    with store.stage(STAGE) as entry:
        runner.run()
        entry.counts.update({f"new:{k}": v for k, v in runner.report.new.items()})
    with store.update_manifest() as m:
        for name, prompt in prompts.items():
            m.prompt_hashes[name] = prompt.sha256
        if runner.clip_model is not None:
            m.models["clip"] = runner.clip_model
    return runner.report
