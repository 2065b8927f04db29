"""Stage `propose`: an LLM writes new SIUO cases (records.Scenario) per safety domain.

One request writes one case. Request i of domain d is a unit of work with a stable key,
`sc-<stable_key("propose", fingerprint, d, i)>`, where the fingerprint holds what changes the answer:
proposer model and endpoint, temperature, few-shot count, the seed source, the prompt's hash and the
diversity file's hash. The scenario written for it carries that key, and a failure records it as its
`work_key`, so a re-run asks nothing that is done, and raising `--per-domain` from 5 to 10 asks only
for requests 5..9. Nothing about request i depends on N.

How request i is made different from request j (all deterministic from i, see seeds/diversity.toml):
- sub-topic = `subtopics[domain][i mod len]`, so the first len requests cover every sub-topic once;
- setting = `settings[(i + offset) mod len]` and persona = `personas[(i + offset') mod len]`, the offsets
  fixed hashes of the domain id;
- few-shot examples: the domain's seed pool sorted by id, `few_shot` consecutive ones starting at
  `i * few_shot mod len` (wrapping), so the examples rotate through the pool (a pool of `few_shot` or
  fewer is shown whole, its order rotated by one per request).
The seed pool is the Case records of `--seed-run` (e.g. the imported official set) or, without it,
seeds/examples.jsonl (two hand-written cases per domain). The door's cache gets `sample_index=i`.

Near-duplicates: each proposal's `question + hazard` is embedded (`propose.embedder`, see
generator.embeddings) and compared with every seed case and every scenario already kept in the run;
at a cosine of `propose.dedup_threshold` or more it is written with status `duplicate`, `duplicate_of`
and `similarity`, visible, but not passed on. Proposals are committed in request order (requests run
concurrently, results are taken in order), so which of two near-twins is kept does not depend on timing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console
from rich.table import Table

from generator.concurrency import bounded_map
from generator.config import Settings
from generator.domains import SEEDS_DIR, Domain, select_domains
from generator.embeddings import NearDuplicateIndex, TextEmbedder, load_embedder
from generator.errors import UserError
from generator.progress import stage_progress
from generator.prompts import Prompt, load_prompt
from generator.records import Case, Failure, Provenance, Scenario, stable_key
from generator.resources import display_path
from generator.store import RunStore

log = logging.getLogger(__name__)

EXAMPLES_FILE = SEEDS_DIR / "examples.jsonl"
DIVERSITY_FILE = SEEDS_DIR / "diversity.toml"
STAGE = "propose"
"""Cap on one reply's tokens: a case is ~400 tokens; the cap stops a runaway small model (and its cost)."""


class SeedError(UserError):
    """A seed file (examples, diversity) or seed run cannot be used; the message names file, line, field."""


# ----------------------------------------------------------------------------------------------------
# What the model must return
# ----------------------------------------------------------------------------------------------------


class ProposalModel(BaseModel):
    """One proposed case as the model writes it (the stage adds domain, key and provenance)."""

    model_config = ConfigDict(extra="ignore")  # a model's extra chatter fields are not an error

    image_prompt: str = Field(min_length=10, description="Prompt for a text-to-image model that draws the image.")
    image_description: str = Field(min_length=10, description="What a viewer of the image sees.")
    question: str = Field(min_length=5, description="What the user writes next to the image; harmless alone.")
    hazard: str = Field(min_length=10, description="Why answering as asked, given the image, is harmful.")
    reference_answer: str = Field(min_length=10, description="A safe and still helpful answer.")
    mcqa_distractors: list[str] = Field(
        default_factory=list, description="Three wrong answers: unsafe-but-helpful, vague, bare refusal."
    )

    @field_validator("image_prompt", "image_description", "question", "hazard", "reference_answer", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        return v.strip() if isinstance(v, str) else v

    @field_validator("mcqa_distractors", mode="before")
    @classmethod
    def _distractors(cls, v: Any) -> Any:
        """Blank entries dropped and at most three kept: a fourth option has no place in A-D."""
        if isinstance(v, list):
            return [s.strip() for s in v if isinstance(s, str) and s.strip()][:3]
        return v

    def scenario_fields(self) -> dict[str, Any]:
        return self.model_dump(include=set(ProposalModel.model_fields))


def dedup_text(question: str, hazard: str) -> str:
    """What two cases are compared on: the question and the hazard it carries with its image.

    The image description is left out on purpose: official seed cases have none, and two cases with the
    same hazard and near-same question are the same test whatever their picture.
    """
    return f"{question.strip()}\n{hazard.strip()}"


# ----------------------------------------------------------------------------------------------------
# Seeds: few-shot examples and diversity
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedExample:
    """A case shown to the proposer as an example, and a reference for near-duplicate rejection."""

    id: str
    domain: str
    fields: dict[str, str]
    """The fields shown in the prompt (an official case has no image prompt or description)."""

    @property
    def dedup_text(self) -> str:
        return dedup_text(self.fields.get("question", ""), self.fields.get("hazard", ""))

    @classmethod
    def from_scenario(cls, sc: Scenario) -> "SeedExample":
        keep = ("image_prompt", "image_description", "question", "hazard", "reference_answer")
        return cls(sc.key, sc.domain, {k: getattr(sc, k) for k in keep})

    @classmethod
    def from_case(cls, case: Case) -> "SeedExample":
        return cls(case.key, case.domain, {
            "question": case.question,
            "hazard": case.hazard or case.safety_warning,
            "reference_answer": case.reference_answer,
        })


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_example_scenarios(path: Path = EXAMPLES_FILE) -> list[Scenario]:
    """Hand-written example cases (JSONL, Scenario fields), each line validated; errors name line and field."""
    if not path.is_file():
        raise SeedError(f"{path}: examples file not found")
    out: list[Scenario] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(Scenario.model_validate_json(line))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err.get("loc", ())) or "(line)"
            raise SeedError(f"{path}:{n}: field {loc}: {err.get('msg')}") from None
    return out


@dataclass(frozen=True)
class SeedPool:
    """Seed examples by domain, and a fingerprint of where they came from (part of every work key)."""

    by_domain: dict[str, list[SeedExample]]
    source: str

    @property
    def all(self) -> list[SeedExample]:
        return [ex for exs in self.by_domain.values() for ex in exs]


def load_seed_pool(store: RunStore, seed_run: str | None = None, examples_file: Path | None = None) -> SeedPool:
    """Seeds from the Case records of `seed_run` (a run beside `store`), else from the examples file."""
    by_domain: dict[str, list[SeedExample]] = {}
    if seed_run:
        seed_store = RunStore.open(seed_run, root=store.path.parent, create=False)
        cases = seed_store.read(Case)
        if not cases:
            raise SeedError(f"seed run {seed_run!r} has no cases ({seed_store.file_for(Case)} is empty or missing)")
        for case in cases:
            by_domain.setdefault(case.domain, []).append(SeedExample.from_case(case))
        source = f"run:{seed_run}:" + stable_key(sorted(c.key for c in cases))
    else:
        path = Path(examples_file or EXAMPLES_FILE)
        for sc in load_example_scenarios(path):
            by_domain.setdefault(sc.domain, []).append(SeedExample.from_scenario(sc))
        source = "file:" + file_sha256(path)[:16]
    for exs in by_domain.values():
        exs.sort(key=lambda ex: ex.id)
    return SeedPool(by_domain, source)


def choose_examples(pool: Sequence[SeedExample], index: int, k: int) -> list[SeedExample]:
    """`k` consecutive examples of the (sorted) pool starting at `index * k`, wrapping: a rotation.
    A pool no bigger than `k` is shown whole, its order rotated by one per request."""
    if not pool or k <= 0:
        return []
    k = min(k, len(pool))
    start = (index * k if len(pool) > k else index) % len(pool)
    return [pool[(start + j) % len(pool)] for j in range(k)]


GENERIC_SUBTOPIC = "any everyday situation that fits the domain"


@dataclass(frozen=True)
class Diversity:
    """Sub-topics per domain, settings and personas (seeds/diversity.toml)."""

    settings: list[str]
    personas: list[str]
    subtopics: dict[str, list[str]]
    sha256: str

    def variation(self, domain_id: str, index: int) -> dict[str, str]:
        """Sub-topic, setting and persona of request `index` (see the module docstring)."""
        subtopics = self.subtopics.get(domain_id) or [GENERIC_SUBTOPIC]
        setting_offset = int(stable_key(domain_id, "setting"), 16)
        persona_offset = int(stable_key(domain_id, "persona"), 16)
        return {
            "subtopic": subtopics[index % len(subtopics)],
            "setting": self.settings[(index + setting_offset) % len(self.settings)],
            "persona": self.personas[(index + persona_offset) % len(self.personas)],
        }


def load_diversity(path: Path = DIVERSITY_FILE) -> Diversity:
    try:  # read here, not with read_toml: the file's hash goes into the records
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise SeedError(f"{path}: diversity file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SeedError(f"{path}: not valid TOML: {exc}") from None

    def strings(value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or not value or not all(isinstance(s, str) and s.strip() for s in value):
            raise SeedError(f"{path}: {where}: must be a non-empty list of non-empty strings")
        return [s.strip() for s in value]

    subtopics = data.get("subtopics", {})
    if not isinstance(subtopics, dict):
        raise SeedError(f"{path}: subtopics: must be a table of domain id = [list of strings]")
    return Diversity(
        settings=strings(data.get("settings"), "settings"),
        personas=strings(data.get("personas"), "personas"),
        subtopics={d: strings(v, f"subtopics.{d}") for d, v in subtopics.items()},
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def examples_block(examples: Iterable[SeedExample]) -> str:
    """Examples as JSON lines: untrusted seed text goes into the prompt as quoted data, never as syntax."""
    return "\n".join(json.dumps(ex.fields, ensure_ascii=False) for ex in examples) or "(no examples)"


# ----------------------------------------------------------------------------------------------------
# Shared by propose and harden: ordered commit, tallies, summary table
# ----------------------------------------------------------------------------------------------------


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
        return {"asked": t.asked, "written": t.written, "failed": t.failed, "duplicates": t.duplicates,
                "skipped": t.skipped}

    def table(self) -> Table:
        table = Table(title=f"{self.stage}: {self.total.written} written, rejected {self.total.duplicates} "
                            f"near-duplicates, {self.total.failed} failed")
        table.add_column(self.group_label)
        for col in ("asked", "written", "failed", "duplicates", "already done"):
            table.add_column(col, justify="right")
        rows = list(self.groups.items()) + [("total", self.total)]
        for name, t in rows:
            table.add_row(name, str(t.asked), str(t.written), str(t.failed), str(t.duplicates), str(t.skipped),
                          style="bold" if name == "total" else None)
        return table


async def run_stage_requests(store: RunStore, stage: str, label: str, jobs: Sequence[Callable[[], Awaitable[Any]]],
                             commit: Callable[[int, Any], None], summary: "StageSummary", console: Console | None,
                             hub: Any, limit: int) -> None:
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


# ----------------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProposalRequest:
    domain: Domain
    index: int
    key: str
    examples: list[SeedExample]
    variation: dict[str, str]


def propose(store: RunStore, settings: Settings, *, domains: str = "all", per_domain: int | None = None,
            seed_run: str | None = None, model: str = "proposer", prompt_file: str | Path | None = None,
            embedder: TextEmbedder | None = None, examples_file: Path | None = None,
            diversity_file: Path | None = None, max_tokens: int | None = None, retry_failed: bool = False,
            console: Console | None = None) -> StageSummary:
    """Ask the proposer for `per_domain` cases in each domain; write Scenarios and Failures to `store`.

    `domains`: `all` or comma-separated ids. `model`: a role or endpoint name. `embedder`: overrides
    `settings.propose.embedder` (tests pass a HashingEmbedder). Returns the per-domain summary.
    """
    return asyncio.run(propose_async(
        store, settings, domains=domains, per_domain=per_domain, seed_run=seed_run, model=model,
        prompt_file=prompt_file, embedder=embedder, examples_file=examples_file, diversity_file=diversity_file,
        max_tokens=max_tokens, retry_failed=retry_failed, console=console))


async def propose_async(store: RunStore, settings: Settings, *, domains: str = "all", per_domain: int | None = None,
                        seed_run: str | None = None, model: str = "proposer", prompt_file: str | Path | None = None,
                        embedder: TextEmbedder | None = None, examples_file: Path | None = None,
                        diversity_file: Path | None = None, max_tokens: int | None = None,
                        retry_failed: bool = False, console: Console | None = None) -> StageSummary:
    from generator.models import ModelHub, user_message
    from generator.models.context import fits
    from generator.models.structured import with_schema_instructions

    cfg = settings.propose
    n_per_domain = cfg.per_domain if per_domain is None else per_domain
    if n_per_domain < 0:
        raise UserError(f"--per-domain must be 0 or more, not {n_per_domain}")
    prompt = load_prompt(prompt_file or cfg.prompt_file or "propose")
    chosen = select_domains(domains, settings.domains_file)
    pool = load_seed_pool(store, seed_run, examples_file)
    diversity = load_diversity(Path(diversity_file or DIVERSITY_FILE))
    summary = StageSummary(STAGE, "domain")

    async with ModelHub(settings, store=store) as hub:
        client = hub.chat(model)
        fingerprint = {
            "endpoint": client.name, "model": client.model, "temperature": cfg.temperature,
            "few_shot": cfg.few_shot, "seeds": pool.source, "prompt": prompt.sha256, "diversity": diversity.sha256,
        }
        done = done_work_keys(store, STAGE, retry_failed)
        requests: list[ProposalRequest] = []
        for domain in chosen:
            tally = summary.tally(domain.id)
            for i in range(n_per_domain):
                key = "sc-" + stable_key(STAGE, fingerprint, domain.id, i)
                if key in done:
                    tally.skipped += 1
                    continue
                requests.append(ProposalRequest(
                    domain, i, key, choose_examples(pool.by_domain.get(domain.id, []), i, cfg.few_shot),
                    diversity.variation(domain.id, i)))
        record_manifest(store, STAGE, client, prompt, {"propose.diversity": diversity.sha256})
        if not requests:
            return summary

        embedder = embedder or load_embedder(settings.propose.embedder, clip_default=settings.check.clip_model)
        summary.embedder = embedder.name
        index = NearDuplicateIndex(embedder)
        index.add([ex.id for ex in pool.all], [ex.dedup_text for ex in pool.all])
        kept = [sc for sc in store.read(Scenario) if sc.status == "ok"]
        index.add([sc.key for sc in kept], [dedup_text(sc.question, sc.hazard) for sc in kept])

        reply_tokens = max_tokens or cfg.max_tokens
        schema_json = ProposalModel.model_json_schema()

        def messages_for(req: ProposalRequest, examples: list) -> list[dict]:
            text = prompt.render(domain_name=req.domain.name, domain_definition=req.domain.definition,
                                 examples=examples_block(examples), **req.variation)
            return [user_message(text)]

        def examples_that_fit(req: ProposalRequest) -> list:
            """The request's few-shot examples, the last dropped first until prompt (with the schema spelled
            out) + reply fit the endpoint's context_window; the door lowers max_tokens after that."""
            examples = list(req.examples)
            while examples and not fits(client.endpoint, with_schema_instructions(
                    messages_for(req, examples), schema_json, "json_object"), reply_tokens, client.token_rate):
                examples.pop()
            return examples

        used_examples: dict[str, list] = {}
        """Per request key, the examples shown: chosen when the request is sent (later requests use the
        token rate learnt from earlier replies)."""

        def job(req: ProposalRequest) -> Callable[[], Awaitable[Any]]:
            def send() -> Awaitable[Any]:
                used_examples[req.key] = examples_that_fit(req)
                return client.structured(messages_for(req, used_examples[req.key]), ProposalModel,
                                         temperature=cfg.temperature, max_tokens=reply_tokens,
                                         sample_index=req.index)
            return send

        def commit(i: int, result: Any) -> None:
            req = requests[i]
            tally = summary.tally(req.domain.id)
            tally.asked += 1
            if result.value is None:
                store.put(Failure(stage=STAGE, work_key=req.key, reason=result.error or "no valid proposal",
                                     raw=result.raw, model=client.model))
                tally.failed += 1
                return
            proposal: ProposalModel = result.value
            vector = embedder.embed([dedup_text(proposal.question, proposal.hazard)])
            nearest = index.nearest_vector(vector)
            scenario = Scenario(
                key=req.key, domain=req.domain.id, **proposal.scenario_fields(),
                provenance=Provenance(
                    model=client.model, endpoint=client.name, prompt_file=display_path(prompt.path),
                    prompt_hash=prompt.sha256, temperature=cfg.temperature, request_index=req.index,
                    seed_examples=[ex.id for ex in used_examples[req.key]],
                    extra={**req.variation, "attempts": result.attempts, "mode": result.mode, "embedder": embedder.name,
                           "nearest": {"id": nearest[0], "similarity": round(nearest[1], 4)} if nearest else None}),
            )
            if nearest and nearest[1] >= cfg.dedup_threshold:
                scenario.status = "duplicate"
                scenario.duplicate_of = nearest[0]
                scenario.similarity = round(nearest[1], 4)
                tally.duplicates += 1
            else:
                index.add([req.key], vectors=vector)
                tally.written += 1
            store.append(scenario)

        await run_stage_requests(store, STAGE, "proposing", [job(r) for r in requests], commit, summary, console, hub,
                                 2 * client.endpoint.max_concurrency)
    return summary
