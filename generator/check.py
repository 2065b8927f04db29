"""Stage `check`: is each modality benign alone, does the image show what was meant, does the pair carry
the hazard? One `CheckResult` per (scenario, check[, candidate]) in checks.jsonl.

Checks, by family (`check.enabled` lists families), in the order they run:

- `alignment` (per candidate): CLIP cosine between the image and `image_description`; the candidate with
  the best score is the scenario's chosen image, and the family passes when that score reaches
  `check.alignment_threshold`. Every later image check looks at the chosen candidate only.
- `image_benign`: `image_benign.clip`, a CLIP zero-shot screen (best unsafe concept of
  prompts/unsafe_concepts.txt minus best safe concept of prompts/safe_concepts.txt must not exceed
  `check.unsafe_concept_margin`); plus `image_benign.safety_checker` (diffusers' checker, when
  `check.safety_checker` is set) and `image_benign.guard` (role `image_guard`: moderation endpoint with
  image input or a chat-based safety model, when the role is set).
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
import hashlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich.console import Console

from .concurrency import bounded_map
from .config import Settings, image_side
from .domains import PROJECT_ROOT
from .errors import UserError
from .progress import stage_progress
from .prompts import load_prompt
from .records import CheckResult, Render, Scenario
from .store import RunStore

log = logging.getLogger(__name__)

STAGE = "check"
CHECK_ORDER = ("alignment", "image_benign", "text_benign", "no_leakage", "pair_hazard")
PROMPTS = ("check_pair_hazard", "check_hazard_match", "check_text_only")


class HazardVerdict(BaseModel):
    """What a checker says about an input: unsafe or not, and the hazard it sees."""

    unsafe: bool
    hazard: str = ""


class HazardMatch(BaseModel):
    """How well a named hazard matches the intended one."""

    match: float = Field(ge=0.0, le=1.0)
    reason: str = ""


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


def text_checker_endpoint(settings: Settings) -> str | None:
    """The text-only judge: role `text_checker`, else the first judge."""
    return settings.roles.text_checker or (settings.roles.judge[0] if settings.roles.judge else None)


def _require_roles(settings: Settings, plan: dict[str, list[str]]) -> None:
    need = []
    if "text_benign" in plan and not settings.roles.text_guard:
        need.append("text_benign needs roles.text_guard")
    if "no_leakage" in plan and not text_checker_endpoint(settings):
        need.append("no_leakage needs roles.text_checker (or roles.judge)")
    if "pair_hazard" in plan and not settings.roles.vlm_checker:
        need.append("pair_hazard needs roles.vlm_checker")
    if need:
        raise UserError("check: " + "; ".join(need) + ": set the role in the config or remove the check from check.enabled")


def chosen_candidate(alignment: Sequence[CheckResult], rendered: Sequence[int]) -> int | None:
    """The scenario's image: the candidate with the best alignment score (the lowest rendered candidate
    when alignment is not checked). None when no candidate could be scored."""
    scored = [r for r in alignment if r.score is not None and r.candidate is not None]
    if scored:
        return max(scored, key=lambda r: (r.score, -r.candidate)).candidate
    if alignment:
        return None
    return min(rendered) if rendered else None


def family_status(family: str, names: Sequence[str], results: dict[tuple[str, int | None], CheckResult],
                  candidate: int | None) -> str:
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
        statuses.append("missing" if r is None else "not_run" if r.not_run else "passed" if r.passed
                        else "failed" if r.passed is False else "error")
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


def _fence(*data: str) -> str:
    """A data-block marker that appears in none of the data (deterministic, so the request cache works)."""
    blob = "\x00".join(data)
    fence = "DATA-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16].upper()
    while fence in blob:  # pragma: no cover - a 64-bit hash inside its own input
        fence += "X"
    return fence


def read_concepts(path_str: str) -> list[str]:
    """Concept lines of a file (`#` comments and blank lines skipped); relative paths may be the project's."""
    p = Path(path_str).expanduser()
    if not p.is_absolute() and not p.exists():
        p = PROJECT_ROOT / path_str
    if not p.is_file():
        raise UserError(f"{path_str}: concept list not found")
    lines = [ln.split("#", 1)[0].strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    concepts = list(dict.fromkeys(ln for ln in lines if ln))
    if not concepts:
        raise UserError(f"{p}: concept list is empty")
    return concepts


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
        parts = [f"{n}: NOT RUN ({self.not_run[n]})" if n in self.not_run else
                 f"{n}: {c} new ({self.failed[n]} failed, {self.errors[n]} errors)" for n, c in sorted(self.new.items())]
        return "check: " + "; ".join(parts) + f"; {self.skipped} already written"


@dataclass
class _Item:
    scenario: Scenario
    renders: dict[int, Render]


class _Checker:
    """One `check` run: the results so far (latest per key), and what each phase still has to do."""

    def __init__(self, store: RunStore, settings: Settings, retry_errors: bool, console: Console | None):
        self.store, self.settings, self.retry_errors = store, settings, retry_errors
        self.cs = settings.check
        self.plan = planned_checks(settings)
        _require_roles(settings, self.plan)
        self.console = console
        self.hub: Any = None
        """The ModelHub while the remote checks run (its cost and failures show in the progress bar)."""
        self.report = CheckReport()
        self.latest: dict[str, CheckResult] = {}
        self.by_scenario: dict[str, dict[tuple[str, int | None], CheckResult]] = {}
        for r in store.read_latest(CheckResult):
            self._remember(r)
        renders: dict[str, dict[int, Render]] = {}
        for r in store.read(Render):
            renders.setdefault(r.scenario_id, {}).setdefault(r.candidate, r)
        self.items = [_Item(s, renders.get(s.key, {})) for s in store.read(Scenario) if s.status != "duplicate"]
        if not self.items:
            raise UserError(f"{store.file_for(Scenario)}: no scenarios to check")
        self.prompts = {name: load_prompt(name) for name in PROMPTS}
        self._clip = None
        self._image_emb: dict[str, Any] = {}
        self._counted: set[str] = set()

    # -- bookkeeping --------------------------------------------------------------------------------

    def result(self, scenario: Scenario, name: str, candidate: int | None) -> CheckResult | None:
        return self.latest.get(CheckResult(scenario_id=scenario.key, check=name, candidate=candidate).key)

    def is_done(self, scenario: Scenario, name: str, candidate: int | None) -> bool:
        r = self.result(scenario, name, candidate)
        done = r is not None and not (self.retry_errors and r.passed is None)
        if done:
            key = r.key
            if key not in self._counted:
                self._counted.add(key)
                self.report.skipped += 1
        return done

    def _remember(self, r: CheckResult) -> None:
        self.latest[r.key] = r
        self.by_scenario.setdefault(r.scenario_id, {})[(r.check, r.candidate)] = r

    def write(self, r: CheckResult) -> None:
        self.store.append(r)
        self._remember(r)
        self.report.add(r)

    def results_of(self, scenario: Scenario) -> dict[tuple[str, int | None], CheckResult]:
        return self.by_scenario.get(scenario.key, {})

    def chosen(self, item: _Item) -> int | None:
        align = [r for (n, _), r in self.results_of(item.scenario).items() if n == "alignment" and not r.not_run] if "alignment" in self.plan else []
        return chosen_candidate(align, sorted(item.renders))

    def alive(self, item: _Item, family: str) -> bool:
        """Whether `family` should run for this scenario: it has an image, and (funnel) nothing failed before."""
        if not item.renders:
            return False
        if not self.cs.stop_at_first_failure:
            return True
        results = self.results_of(item.scenario)
        candidate = self.chosen(item)
        for fam, names in self.plan.items():
            if fam == family:
                return True
            if family_status(fam, names, results, candidate) not in ("passed", "not_run"):
                return False
        return True

    def image_path(self, item: _Item, candidate: int) -> Path:
        return self.store.resolve(item.renders[candidate].path)

    # -- CLIP ---------------------------------------------------------------------------------------

    def clip_or_not_run(self, name: str, work: Sequence[tuple[_Item, int]]) -> bool:
        """Whether CLIP loaded; if its weights are not there, every item of `work` is written as not run."""
        from .models.clip_model import ClipLoadError

        try:
            self.clip
            return True
        except ClipLoadError as exc:
            reason = f"no CLIP weights: {exc}"[:500]
            for it, k in work:
                self.write(CheckResult(scenario_id=it.scenario.key, check=name, candidate=k,
                                       model=self.cs.clip_model, not_run=reason))
            return False

    @property
    def clip(self):
        if self._clip is None:
            from .models.clip_model import ClipScorer

            self._clip = ClipScorer.load(self.cs.clip_model, batch_size=self.cs.batch)
        return self._clip

    def embed_images(self, paths: Sequence[Path]) -> dict[Path, Any | Exception]:
        """CLIP embeddings, `check.batch` images per forward pass; an unreadable image maps to its error."""
        out: dict[Path, Any] = {}
        todo = [p for p in dict.fromkeys(paths) if str(p) not in self._image_emb]
        # --- executor seam (issue 15): image scoring runs where `[executor]` says; records stay here ---
        from .executors import Loader, clip_embed_batch, map_ordered
        from .models.clip_model import ClipScorer

        loader = Loader(ClipScorer.load, (self.cs.clip_model,), dict(batch_size=self.cs.batch))
        for p, e in zip(todo, map_ordered(self.settings, loader, clip_embed_batch, todo,
                                          batch_size=self.clip.batch_size, loaded=self.clip)):
            self._image_emb[str(p)] = e
        # --- end seam ---
        for p in paths:
            out[p] = self._image_emb[str(p)]
        return out

    # -- phase 1: alignment -------------------------------------------------------------------------

    def run_alignment(self) -> None:
        if "alignment" not in self.plan:
            return
        work = [(it, k) for it in self.items for k in sorted(it.renders) if not self.is_done(it.scenario, "alignment", k)]
        if not work or not self.clip_or_not_run("alignment", work):
            return
        threshold = self.cs.alignment_threshold
        with stage_progress(self.console, self.hub) as progress:
            task = progress.add_task(f"alignment: {len(work)} images", total=len(work))
            bs = self.cs.batch
            if self.settings.executor.kind == "ray":  # one executor pass, not one per chunk (issue 15)
                self.embed_images([self.image_path(it, k) for it, k in work])
            for start in range(0, len(work), bs):
                chunk = work[start:start + bs]
                embs = self.embed_images([self.image_path(it, k) for it, k in chunk])
                texts = self.clip.encode_texts([it.scenario.image_description for it, _ in chunk])
                for i, (it, k) in enumerate(chunk):
                    emb = embs[self.image_path(it, k)]
                    if isinstance(emb, Exception):
                        self.write(CheckResult(scenario_id=it.scenario.key, check="alignment", candidate=k,
                                               threshold=threshold, model=self.clip.name,
                                               error=f"cannot read image {it.renders[k].path}: {emb}"[:500]))
                        continue
                    score = float(emb @ texts[i])
                    self.write(CheckResult(scenario_id=it.scenario.key, check="alignment", candidate=k,
                                           score=round(score, 5), threshold=threshold, passed=score >= threshold,
                                           model=self.clip.name, detail="CLIP cosine(image, image_description)"))
                progress.advance(task, len(chunk))

    # -- phase 2: image alone benign (local parts) ---------------------------------------------------

    def image_work(self, name: str) -> list[tuple[_Item, int]]:
        if name not in self.plan.get(family_of(name), []):
            return []
        out = []
        for it in self.items:
            if not self.alive(it, family_of(name)):
                continue
            k = self.chosen(it)
            if k is not None and not self.is_done(it.scenario, name, k):
                out.append((it, k))
        return out

    def run_clip_screen(self) -> None:
        work = self.image_work("image_benign.clip")
        if not work or not self.clip_or_not_run("image_benign.clip", work):
            return
        unsafe = read_concepts(self.cs.unsafe_concepts_file)
        safe = read_concepts(self.cs.safe_concepts_file)
        unsafe_emb, safe_emb = self.clip.encode_texts(unsafe), self.clip.encode_texts(safe)
        margin = self.cs.unsafe_concept_margin
        with stage_progress(self.console, self.hub) as progress:
            task = progress.add_task(f"CLIP screen: {len(work)} images", total=len(work))
            embs = self.embed_images([self.image_path(it, k) for it, k in work])
            for it, k in work:
                emb = embs[self.image_path(it, k)]
                base = dict(scenario_id=it.scenario.key, check="image_benign.clip", candidate=k, threshold=margin,
                            model=self.clip.name)
                if isinstance(emb, Exception):
                    self.write(CheckResult(**base, error=f"cannot read image: {emb}"[:500]))
                else:
                    cu, cs_ = emb @ unsafe_emb.T, emb @ safe_emb.T
                    iu, is_ = int(cu.argmax()), int(cs_.argmax())
                    score = float(cu[iu] - cs_[is_])
                    self.write(CheckResult(**base, score=round(score, 5), passed=score <= margin,
                                           detail=f"closest unsafe: {unsafe[iu]!r} ({float(cu[iu]):.3f}); "
                                                  f"closest safe: {safe[is_]!r} ({float(cs_[is_]):.3f})"))
                progress.advance(task)

    def run_safety_checker(self) -> None:
        work = self.image_work("image_benign.safety_checker")
        if not work:
            return
        # --- executor seam (issue 15): the checker scores where `[executor]` says; records stay here ---
        from .executors import Loader, map_ordered, safety_checker_batch
        from .models.safety_checker import SafetyChecker

        loader = Loader(SafetyChecker.load, (self.cs.safety_checker,), dict(batch_size=self.cs.batch))
        with stage_progress(self.console, self.hub) as progress:
            task = progress.add_task(f"safety checker: {len(work)} images", total=len(work))
            scores = map_ordered(self.settings, loader, safety_checker_batch,
                                 [self.image_path(it, k) for it, k in work], batch_size=self.cs.batch)
            # --- end seam ---
            for start in range(0, len(work), self.cs.batch):
                chunk = work[start:start + self.cs.batch]
                for (it, k), v in zip(chunk, scores[start:start + self.cs.batch]):
                    base = dict(scenario_id=it.scenario.key, check="image_benign.safety_checker", candidate=k,
                                threshold=0.0, model=self.cs.safety_checker)
                    if isinstance(v, Exception):
                        self.write(CheckResult(**base, error=f"cannot read image: {v}"[:500]))
                    else:
                        detail = f"concepts fired: {list(v.concepts)}" if v.flagged else "no concept fired"
                        self.write(CheckResult(**base, score=v.score, passed=not v.flagged, detail=detail))
                progress.advance(task, len(chunk))

    # -- remote phases ------------------------------------------------------------------------------

    def text_work(self, name: str) -> list[_Item]:
        if name not in self.plan.get(family_of(name), []):
            return []
        return [it for it in self.items if self.alive(it, family_of(name)) and not self.is_done(it.scenario, name, None)]

    async def gather(self, label: str, jobs: list[Callable[[], Awaitable[CheckResult]]], *models: Any) -> None:
        """Run the jobs, at most as many at once as the models' endpoints allow (memory bound)."""
        if not jobs:
            return
        with stage_progress(self.console, self.hub) as progress:
            task = progress.add_task(f"{label}: {len(jobs)}", total=len(jobs))

            async def run(job: Callable[[], Awaitable[CheckResult]]) -> None:
                self.write(await job())
                progress.advance(task)

            await bounded_map(run, jobs, max(_concurrency(m) for m in models))

    async def run_remote(self) -> None:
        image_guard = self.image_work("image_benign.guard")
        if not image_guard and not any(f in self.plan for f in ("text_benign", "no_leakage", "pair_hazard")):
            return
        from .models import ModelHub
        from .models.guards import OpenNSFWGuard

        hub = self.hub = ModelHub(self.settings, store=self.store)
        async with hub:
            text_guard = hub.guard("text_guard") if self.settings.roles.text_guard else None
            if image_guard:
                guard = hub.guard("image_guard")
                if isinstance(guard, OpenNSFWGuard):  # --- executor seam (issue 15): a model-local guard ---
                    from .executors import Loader, map_ordered, opennsfw_batch

                    loader = Loader(OpenNSFWGuard, kwargs=dict(threshold=guard.threshold))
                    verdicts = await asyncio.to_thread(map_ordered, self.settings, loader, opennsfw_batch,
                                                       [self.image_path(it, k) for it, k in image_guard],
                                                       batch_size=self.cs.batch, loaded=guard)
                    for (it, k), v in zip(image_guard, verdicts):
                        self.write(_guard_result(v, it.scenario, "image_benign.guard", k))
                else:
                    await self.gather("image guard", [self._guard_image_job(guard, it, k) for it, k in image_guard], guard)
            if "text_benign" in self.plan:
                await self.gather("text guard", [self._guard_text_job(text_guard, it.scenario, "text_benign",
                                                                      it.scenario.question)
                                                 for it in self.text_work("text_benign")], text_guard)
            if "no_leakage" in self.plan:
                judge = hub.chat(text_checker_endpoint(self.settings))
                jobs = [self._text_only_job(judge, it.scenario, "no_leakage.question", it.scenario.question,
                                            "a message a user sent to an AI assistant")
                        for it in self.text_work("no_leakage.question")]
                for it in self.text_work("no_leakage.description"):
                    if text_guard is not None:
                        jobs.append(self._guard_text_job(text_guard, it.scenario, "no_leakage.description",
                                                         it.scenario.image_description))
                    else:
                        jobs.append(self._text_only_job(judge, it.scenario, "no_leakage.description",
                                                        it.scenario.image_description, "a description of a photo"))
                await self.gather("text-only judge", jobs, judge, text_guard)
            if "pair_hazard" in self.plan:
                vlm = hub.chat("vlm_checker")
                work = [(it, self.chosen(it)) for it in self.items if self.alive(it, "pair_hazard")]
                work = [(it, k) for it, k in work if k is not None and not self.is_done(it.scenario, "pair_hazard", k)]
                await self.gather("pair judge", [self._pair_job(vlm, it, k) for it, k in work], vlm)

    # -- one remote check each ----------------------------------------------------------------------

    def _guard_image_job(self, guard: Any, it: _Item, k: int) -> Callable[[], Awaitable[CheckResult]]:
        async def job() -> CheckResult:
            from .models import BudgetExceeded

            try:
                verdict = await guard.check_image(self.image_path(it, k), max_side=self.settings.bench.image_max_side)
            except BudgetExceeded:  # stops the stage; what is written stays
                raise
            except UserError as exc:  # an unreadable image: this check's error, not the stage's
                return CheckResult(scenario_id=it.scenario.key, check="image_benign.guard", candidate=k,
                                   model=guard.model, error=str(exc)[:500])
            return _guard_result(verdict, it.scenario, "image_benign.guard", k)

        return job

    def _guard_text_job(self, guard: Any, scenario: Scenario, name: str, text: str) -> Callable[[], Awaitable[CheckResult]]:
        async def job() -> CheckResult:
            return _guard_result(await guard.check_text(text), scenario, name, None)

        return job

    def _text_only_job(self, judge: Any, scenario: Scenario, name: str, text: str, kind: str) -> Callable[[], Awaitable[CheckResult]]:
        from .models import user_message

        prompt = self.prompts["check_text_only"]
        message = user_message(prompt.render(text_kind=kind, text=text, fence=_fence(text)))

        async def job() -> CheckResult:
            sr = await judge.structured([message], HazardVerdict, temperature=0.0)
            base = dict(scenario_id=scenario.key, check=name, model=judge.model)
            if sr.value is None:
                return CheckResult(**base, error=sr.error or "no verdict", detail=_clip_text(sr.raw))
            v = sr.value
            detail = f"judge found: {v.hazard}" if v.unsafe else "judge found nothing unsafe"
            return CheckResult(**base, score=1.0 if v.unsafe else 0.0, threshold=0.5, passed=not v.unsafe, detail=detail)

        return job

    def _pair_job(self, vlm: Any, it: _Item, k: int) -> Callable[[], Awaitable[CheckResult]]:
        from .models import user_message

        s = it.scenario
        ask = self.prompts["check_pair_hazard"]
        match_prompt = self.prompts["check_hazard_match"]
        threshold = self.cs.hazard_match_threshold
        max_side = image_side(self.settings, vlm.endpoint)

        async def job() -> CheckResult:
            base = dict(scenario_id=s.key, check="pair_hazard", candidate=k, threshold=threshold, model=vlm.model)
            try:
                message = await asyncio.to_thread(user_message, ask.render(question=s.question, fence=_fence(s.question)),
                                                  images=[self.image_path(it, k)], max_side=max_side)
            except UserError as exc:
                return CheckResult(**base, error=str(exc)[:500])
            sr = await vlm.structured([message], HazardVerdict, temperature=0.0)
            if sr.value is None:
                return CheckResult(**base, error=sr.error or "no verdict", detail=_clip_text(sr.raw))
            if not sr.value.unsafe:
                return CheckResult(**base, score=0.0, passed=False, detail="the judge saw no hazard in image + question")
            named = sr.value.hazard
            text = match_prompt.render(intended_hazard=s.hazard, named_hazard=named, fence=_fence(s.hazard, named))
            mr = await vlm.structured([user_message(text)], HazardMatch, temperature=0.0)
            if mr.value is None:
                return CheckResult(**base, error=f"hazard match: {mr.error or 'no rating'}",
                                   detail=f"named hazard: {named}"[:1000])
            m = mr.value.match
            return CheckResult(**base, score=m, passed=m >= threshold,
                               detail=f"named hazard: {named} | match: {mr.value.reason}"[:2000])

        return job


def _clip_text(text: str | None, limit: int = 500) -> str:
    return "" if not text else text[:limit]


def _concurrency(model: Any) -> int:
    """How many of a model's checks may be pending at once: its endpoint's bound (a local model: a few)."""
    endpoint = getattr(model, "endpoint", None) or getattr(getattr(model, "chat", None), "endpoint", None)
    return endpoint.max_concurrency if endpoint is not None else 4


def _guard_result(v: Any, scenario: Scenario, name: str, candidate: int | None) -> CheckResult:
    base = dict(scenario_id=scenario.key, check=name, candidate=candidate, model=v.model or "")
    score = max(v.scores.values()) if v.scores else None
    if v.flagged is None:
        return CheckResult(**base, score=score, error=v.error or "the guard could not decide", detail=_clip_text(v.raw))
    detail = f"flagged: {', '.join(v.categories) or 'yes'}" if v.flagged else "not flagged"
    return CheckResult(**base, score=score, passed=not v.flagged, detail=detail)


def check(store: RunStore, settings: Settings, *, retry_errors: bool = False,
          console: Console | None = None) -> CheckReport:
    """Run every enabled check that is not written yet (see the module docstring)."""
    checker = _Checker(store, settings, retry_errors, console)
    with store.stage(STAGE) as entry:
        checker.run_alignment()
        checker.run_clip_screen()
        checker.run_safety_checker()
        asyncio.run(checker.run_remote())
        entry.counts.update({f"new:{k}": v for k, v in checker.report.new.items()})
    with store.update_manifest() as m:
        for name, prompt in checker.prompts.items():
            m.prompt_hashes[name] = prompt.sha256
        if checker._clip is not None:
            m.models["clip"] = checker.clip.name
    return checker.report
