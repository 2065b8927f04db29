"""Stage `harden`: make existing cases harder while they stay SIUO (records.Scenario with parent_id).

Why: cases written with AI help tend to be easier than human ones, mostly because the question gives
the hazard away or the image is alarming on its own. Each strategy of prompts/harden_strategies.toml
(remove give-away words, move the decisive cue into the image, benign phrasing, an everyday context)
rewrites one parent case into one variant.

Parents: the run's own fresh proposals (Scenarios with status `ok` and no parent), or with
`from_run` the Case records of another run, such as the imported official set. A variant's
`parent_id` is the parent Scenario's key, or the parent Case's `question_id`; its `strategy` names the
strategy. Unit of work: (parent, strategy), keyed `sc-<stable_key("harden", fingerprint, parent, strategy,
strategy text)>` like propose (see generator.generate.propose), so a re-run asks nothing that is done.
Variants are not de-duplicated against their parents (they are meant to be close); a variant that
repeats its parent's question and image unchanged is recorded as a Failure instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field
from rich.console import Console

from generator.cases import reviewed_cases
from generator.config import Settings, read_toml
from generator.domains import domain_by_id
from generator.errors import UserError
from generator.generate.propose import ProposalModel
from generator.generate.stage import StageSummary, done_work_keys, record_manifest, run_stage_requests
from generator.prompts import PROMPTS_DIR, load_prompt
from generator.records import Case, Failure, Provenance, Scenario, stable_key
from generator.resources import display_path
from generator.store import RunStore

STAGE = "harden"
STRATEGIES_FILE = PROMPTS_DIR / "harden_strategies.toml"


class StrategyError(UserError):
    """The strategies file is malformed, or a strategy name is unknown."""


class HardenedModel(ProposalModel):
    """A variant as the model writes it: a whole new case, plus a note on what changed."""

    what_changed: str = Field("", description="One sentence: what changed and why the variant is harder.")


@dataclass(frozen=True)
class Strategy:
    id: str
    name: str
    instruction: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(f"{self.name}\n{self.instruction}".encode()).hexdigest()


def load_strategies(path: Path = STRATEGIES_FILE) -> dict[str, Strategy]:
    data = read_toml(path, StrategyError, "strategies file")
    out: dict[str, Strategy] = {}
    for sid, table in (data.get("strategy") or {}).items():
        if not isinstance(table, dict):
            raise StrategyError(f"{path}: strategy.{sid}: must be a table with `name` and `instruction`")
        for f in ("name", "instruction"):
            if not isinstance(table.get(f), str) or not table[f].strip():
                raise StrategyError(f"{path}: strategy.{sid}: missing field {f!r}")
        out[sid] = Strategy(sid, table["name"].strip(), table["instruction"].strip())
    if not out:
        raise StrategyError(f"{path}: no [strategy.<id>] tables")
    return out


def pick_strategies(names: Sequence[str], known: dict[str, Strategy], source: Path) -> list[Strategy]:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise StrategyError(f"unknown strategy {unknown[0]!r}: {source} defines {', '.join(known)}")
    if not names:
        raise StrategyError("no hardening strategy chosen")
    return [known[n] for n in dict.fromkeys(names)]


@dataclass(frozen=True)
class Parent:
    """A case to harden, whichever record it came from."""

    id: str
    domain: str
    fields: dict[str, str]
    run: str

    @classmethod
    def from_scenario(cls, sc: Scenario, run: str) -> Parent:
        keep = ("image_prompt", "image_description", "question", "hazard", "reference_answer")
        return cls(sc.key, sc.domain, {k: getattr(sc, k) for k in keep}, run)

    @classmethod
    def from_case(cls, case: Case, run: str) -> Parent:
        return cls(
            str(case.question_id),
            case.domain,
            {
                "question": case.question,
                "hazard": case.hazard or case.safety_warning,
                "reference_answer": case.reference_answer,
            },
            run,
        )


def load_parents(store: RunStore, from_run: str | None, limit: int | None) -> list[Parent]:
    if from_run:
        source = RunStore.open(from_run, root=store.path.parent, create=False)
        parents = [Parent.from_case(c, from_run) for c in reviewed_cases(source)]
        if not parents:
            raise UserError(f"run {from_run!r} has no cases to harden ({source.file_for(Case)} is empty or missing)")
    else:
        parents = [
            Parent.from_scenario(sc, store.name)
            for sc in store.read(Scenario)
            if sc.status == "ok" and sc.parent_id is None
        ]
        if not parents:
            raise UserError(
                f"run {store.name!r} has no proposed scenarios to harden: run `siuo propose` "
                "first, or name a run with cases via --from-run"
            )
    return parents[:limit] if limit is not None else parents


def _same(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


@dataclass(frozen=True)
class HardenRequest:
    parent: Parent
    strategy: Strategy
    key: str
    index: int


def harden(
    store: RunStore,
    settings: Settings,
    *,
    from_run: str | None = None,
    strategies: Sequence[str] | None = None,
    limit: int | None = None,
    model: str = "proposer",
    prompt_file: str | Path | None = None,
    strategies_file: Path | None = None,
    max_tokens: int | None = None,
    retry_failed: bool = False,
    console: Console | None = None,
) -> StageSummary:
    """Write one variant per (parent, strategy) into `store`; returns counts per strategy."""
    return asyncio.run(
        harden_async(
            store,
            settings,
            from_run=from_run,
            strategies=strategies,
            limit=limit,
            model=model,
            prompt_file=prompt_file,
            strategies_file=strategies_file,
            max_tokens=max_tokens,
            retry_failed=retry_failed,
            console=console,
        )
    )


async def harden_async(
    store: RunStore,
    settings: Settings,
    *,
    from_run: str | None = None,
    strategies: Sequence[str] | None = None,
    limit: int | None = None,
    model: str = "proposer",
    prompt_file: str | Path | None = None,
    strategies_file: Path | None = None,
    max_tokens: int | None = None,
    retry_failed: bool = False,
    console: Console | None = None,
) -> StageSummary:
    from generator.models import ModelHub, user_message

    cfg = settings.propose
    if limit is not None and limit < 0:
        raise UserError(f"--limit must be 0 or more, not {limit}")
    prompt = load_prompt(prompt_file or cfg.harden_prompt_file or "harden")
    strategies_path = Path(strategies_file or STRATEGIES_FILE)
    chosen = pick_strategies(
        list(strategies or cfg.harden_strategies), load_strategies(strategies_path), strategies_path
    )
    parents = load_parents(store, from_run, limit)
    summary = StageSummary(STAGE, "strategy")
    for s in chosen:
        summary.tally(s.id)

    async with ModelHub(settings, store=store) as hub:
        client = hub.chat(model)
        fingerprint = {
            "endpoint": client.name,
            "model": client.model,
            "temperature": cfg.temperature,
            "prompt": prompt.sha256,
        }
        done = done_work_keys(store, STAGE, retry_failed)
        requests: list[HardenRequest] = []
        for n, parent in enumerate(parents):
            for strategy in chosen:
                # The parent's run is part of the key only when it is another run: renaming this run's
                # folder must not make its finished work look new.
                key = "sc-" + stable_key(STAGE, fingerprint, from_run or "", parent.id, strategy.id, strategy.sha256)
                if key in done:
                    summary.tally(strategy.id).skipped += 1
                else:
                    requests.append(HardenRequest(parent, strategy, key, n))
        record_manifest(store, STAGE, client, prompt, {f"harden.{s.id}": s.sha256 for s in chosen})
        if not requests:
            return summary

        def messages_for(req: HardenRequest) -> list[dict]:
            domain = domain_by_id(req.parent.domain, settings.domains_file)
            text = prompt.render(
                domain_name=domain.name,
                domain_definition=domain.definition,
                strategy_name=req.strategy.name,
                strategy_instruction=req.strategy.instruction,
                parent=json.dumps(req.parent.fields, ensure_ascii=False, indent=1),
            )
            return [user_message(text)]

        def job(req: HardenRequest) -> Callable[[], Awaitable[Any]]:
            return lambda: client.structured(
                messages_for(req),
                HardenedModel,
                temperature=cfg.temperature,
                max_tokens=max_tokens or cfg.max_tokens,
                sample_index=0,
            )

        def commit(i: int, result: Any) -> None:
            req = requests[i]
            tally = summary.tally(req.strategy.id)
            tally.asked += 1
            variant: HardenedModel | None = result.value
            reason = result.error or "no valid variant"
            if (
                variant is not None
                and _same(variant.question, req.parent.fields["question"])
                and _same(
                    variant.image_description, req.parent.fields.get("image_description", variant.image_description)
                )
            ):
                variant, reason = None, "the variant repeats its parent's question and image unchanged"
            if variant is None:
                store.put(Failure(stage=STAGE, work_key=req.key, reason=reason, raw=result.raw, model=client.model))
                tally.failed += 1
                return
            store.append(
                Scenario(
                    key=req.key,
                    domain=req.parent.domain,
                    **variant.scenario_fields(),
                    parent_id=req.parent.id,
                    strategy=req.strategy.id,
                    provenance=Provenance(
                        model=client.model,
                        endpoint=client.name,
                        prompt_file=display_path(prompt.path),
                        prompt_hash=prompt.sha256,
                        temperature=cfg.temperature,
                        request_index=req.index,
                        seed_examples=[req.parent.id],
                        extra={
                            "parent_run": req.parent.run,
                            "strategy_hash": req.strategy.sha256,
                            "what_changed": variant.what_changed,
                            "attempts": result.attempts,
                            "mode": result.mode,
                        },
                    ),
                )
            )
            tally.written += 1

        await run_stage_requests(
            store,
            STAGE,
            "hardening",
            [job(r) for r in requests],
            commit,
            summary,
            console,
            hub,
            2 * client.endpoint.max_concurrency,
        )
    return summary
