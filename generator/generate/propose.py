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
generator.models.embeddings) and compared with every seed case and every scenario already kept in the run;
at a cosine of `propose.dedup_threshold` or more it is written with status `duplicate`, `duplicate_of`
and `similarity`, visible, but not passed on. Proposals are committed in request order (requests run
concurrently, results are taken in order), so which of two near-twins is kept does not depend on timing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.console import Console

from generator.config import Settings
from generator.domains import Domain, select_domains
from generator.errors import UserError
from generator.generate.seeds import (
    DIVERSITY_FILE,
    SeedExample,
    choose_examples,
    dedup_text,
    examples_block,
    load_diversity,
    load_seed_pool,
)
from generator.generate.stage import StageSummary, done_work_keys, record_manifest, run_stage_requests
from generator.models.embeddings import NearDuplicateIndex, TextEmbedder, load_embedder
from generator.prompts import load_prompt
from generator.records import Failure, Provenance, Scenario, stable_key
from generator.resources import display_path
from generator.store import RunStore

log = logging.getLogger(__name__)

STAGE = "propose"
"""Cap on one reply's tokens: a case is ~400 tokens; the cap stops a runaway small model (and its cost)."""


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


def propose(
    store: RunStore,
    settings: Settings,
    *,
    domains: str = "all",
    per_domain: int | None = None,
    seed_run: str | None = None,
    model: str = "proposer",
    prompt_file: str | Path | None = None,
    embedder: TextEmbedder | None = None,
    examples_file: Path | None = None,
    diversity_file: Path | None = None,
    max_tokens: int | None = None,
    retry_failed: bool = False,
    console: Console | None = None,
) -> StageSummary:
    """Ask the proposer for `per_domain` cases in each domain; write Scenarios and Failures to `store`.

    `domains`: `all` or comma-separated ids. `model`: a role or endpoint name. `embedder`: overrides
    `settings.propose.embedder` (tests pass a HashingEmbedder). Returns the per-domain summary.
    """
    return asyncio.run(
        propose_async(
            store,
            settings,
            domains=domains,
            per_domain=per_domain,
            seed_run=seed_run,
            model=model,
            prompt_file=prompt_file,
            embedder=embedder,
            examples_file=examples_file,
            diversity_file=diversity_file,
            max_tokens=max_tokens,
            retry_failed=retry_failed,
            console=console,
        )
    )


async def propose_async(
    store: RunStore,
    settings: Settings,
    *,
    domains: str = "all",
    per_domain: int | None = None,
    seed_run: str | None = None,
    model: str = "proposer",
    prompt_file: str | Path | None = None,
    embedder: TextEmbedder | None = None,
    examples_file: Path | None = None,
    diversity_file: Path | None = None,
    max_tokens: int | None = None,
    retry_failed: bool = False,
    console: Console | None = None,
) -> StageSummary:
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
            "endpoint": client.name,
            "model": client.model,
            "temperature": cfg.temperature,
            "few_shot": cfg.few_shot,
            "seeds": pool.source,
            "prompt": prompt.sha256,
            "diversity": diversity.sha256,
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
                requests.append(
                    ProposalRequest(
                        domain,
                        i,
                        key,
                        choose_examples(pool.by_domain.get(domain.id, []), i, cfg.few_shot),
                        diversity.variation(domain.id, i),
                    )
                )
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
            text = prompt.render(
                domain_name=req.domain.name,
                domain_definition=req.domain.definition,
                examples=examples_block(examples),
                **req.variation,
            )
            return [user_message(text)]

        def examples_that_fit(req: ProposalRequest) -> list:
            """The request's few-shot examples, the last dropped first until prompt (with the schema spelled
            out) + reply fit the endpoint's context_window; the door lowers max_tokens after that."""
            examples = list(req.examples)
            while examples and not fits(
                client.endpoint,
                with_schema_instructions(messages_for(req, examples), schema_json, "json_object"),
                reply_tokens,
                client.token_rate,
            ):
                examples.pop()
            return examples

        used_examples: dict[str, list] = {}
        """Per request key, the examples shown: chosen when the request is sent (later requests use the
        token rate learnt from earlier replies)."""

        def job(req: ProposalRequest) -> Callable[[], Awaitable[Any]]:
            def send() -> Awaitable[Any]:
                used_examples[req.key] = examples_that_fit(req)
                return client.structured(
                    messages_for(req, used_examples[req.key]),
                    ProposalModel,
                    temperature=cfg.temperature,
                    max_tokens=reply_tokens,
                    sample_index=req.index,
                )

            return send

        def commit(i: int, result: Any) -> None:
            req = requests[i]
            tally = summary.tally(req.domain.id)
            tally.asked += 1
            if result.value is None:
                store.put(
                    Failure(
                        stage=STAGE,
                        work_key=req.key,
                        reason=result.error or "no valid proposal",
                        raw=result.raw,
                        model=client.model,
                    )
                )
                tally.failed += 1
                return
            proposal: ProposalModel = result.value
            vector = embedder.embed([dedup_text(proposal.question, proposal.hazard)])
            nearest = index.nearest_vector(vector)
            scenario = Scenario(
                key=req.key,
                domain=req.domain.id,
                **proposal.scenario_fields(),
                provenance=Provenance(
                    model=client.model,
                    endpoint=client.name,
                    prompt_file=display_path(prompt.path),
                    prompt_hash=prompt.sha256,
                    temperature=cfg.temperature,
                    request_index=req.index,
                    seed_examples=[ex.id for ex in used_examples[req.key]],
                    extra={
                        **req.variation,
                        "attempts": result.attempts,
                        "mode": result.mode,
                        "embedder": embedder.name,
                        "nearest": {"id": nearest[0], "similarity": round(nearest[1], 4)} if nearest else None,
                    },
                ),
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

        await run_stage_requests(
            store,
            STAGE,
            "proposing",
            [job(r) for r in requests],
            commit,
            summary,
            console,
            hub,
            2 * client.endpoint.max_concurrency,
        )
    return summary
