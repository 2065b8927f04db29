"""`siuo calibrate --judges`: each judge's accuracy on responses whose verdict is known.

Why: a hardening search that optimises one judge's verdicts can learn that judge's blind spots instead of
the targets'. Before trusting a judge (and before `siuo search` starts: `search.judge_accuracy_floor`),
measure it on known-safe responses (each case's reference answer, written to be safe) and known-unsafe
ones (a reply that goes along with the request and misses the hazard, written per case by the
`writer` role, default the proposer, with prompts/judge_calibration_compliant.md, and recorded as derived
data in the run's `judge-calibration/` sub-run, never in its own responses). The ordinary judge stage
judges them, so it resumes and repeats no call. Accuracy per judge, overall and per domain, with Wilson
intervals, plus each side apart (how often a safe reply is called safe, an unsafe one unsafe), in
`judge_calibration.json`.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

from generator.cases import reviewed_cases
from generator.config import Settings
from generator.errors import UserError
from generator.evaluate.answer import response_key
from generator.evaluate.judge import judge_async
from generator.evaluate.protocol import resolve_protocol
from generator.prompts import load_prompt
from generator.records import Case, Failure, Judgment, Response, Usage
from generator.statistics import rate
from generator.store import RunStore, write_text_atomic

CAL_RUN = "judge-calibration"
CAL_FILE = "judge_calibration.json"
KNOWN_SAFE = "known-safe:reference"
KNOWN_UNSAFE = "known-unsafe:"


def load_judge_calibration(store: RunStore) -> dict[str, Any] | None:
    path = store.path / CAL_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


async def _write_unsafe(sub: RunStore, settings: Settings, cases: list[Case], writer: str, proto_name: str) -> int:
    from generator.concurrency import bounded_map
    from generator.models import ModelHub, user_message

    prompt = load_prompt("judge_calibration_compliant")
    async with ModelHub(settings, store=sub) as hub:
        client = hub.chat(writer)
        target = KNOWN_UNSAFE + client.name
        done = set(sub.latest_by_key(Response))
        todo = [c for c in cases if response_key(c.key, target, "gen", 0) not in done]

        async def one(case: Case) -> None:
            text = prompt.render(question=case.question, hazard=case.hazard or case.safety_warning)
            [result] = await client.complete([user_message(text)], n=1, temperature=0.7, max_tokens=300)
            if result.error is not None or not (result.text or "").strip():
                sub.put(
                    Failure(
                        stage="calibrate-judges", work_key=f"{case.key}:{target}", reason=result.error or "empty reply"
                    )
                )
                return
            sub.append(
                Response(
                    case_id=case.key,
                    target=target,
                    model=client.model,
                    text=result.text,
                    usage=result.usage or Usage(),
                    protocol=proto_name,
                    image_sent=False,
                    prompt_hash=prompt.sha256,
                )
            )

        await bounded_map(one, todo, client.endpoint.max_concurrency)
        return len(todo)


def calibrate_judges(
    store: RunStore, settings: Settings, judges: list[str], *, writer: str = "proposer", limit: int | None = None
) -> dict[str, Any]:
    """Judge known-safe and known-unsafe responses to the run's cases with each judge; write and return the figures."""
    cases = reviewed_cases(store)
    cases = [c for c in cases if c.split != "control"][: limit if limit is not None else None]
    if not cases:
        raise UserError(f"{store.file_for(Case)}: no cases to calibrate the judges on (import the official set first)")
    proto = resolve_protocol(settings)
    sub = RunStore.open(CAL_RUN, root=store.path)
    have = {c.key for c in sub.read(Case)}
    sub.append_many(
        c.model_copy(update={"image_path": str(store.resolve(c.image_path).resolve()) if c.image_path else None})
        for c in cases
        if c.key not in have
    )
    done = set(sub.latest_by_key(Response))
    sub.append_many(
        Response(
            case_id=c.key, target=KNOWN_SAFE, model="reference answer", text=c.reference_answer, protocol=proto.name
        )
        for c in cases
        if response_key(c.key, KNOWN_SAFE, "gen", 0) not in done and c.reference_answer.strip()
    )
    asyncio.run(_write_unsafe(sub, settings, cases, writer, proto.name))
    asyncio.run(judge_async(sub, settings, judges, show_progress=False))
    endpoints = list(dict.fromkeys(e for j in judges for e in settings.role_endpoints(j)))
    domain_of = {c.key: c.domain for c in sub.read(Case)}
    truth = {}
    for r in sub.read_latest(Response):
        if r.text is not None and (r.target == KNOWN_SAFE or r.target.startswith(KNOWN_UNSAFE)):
            truth[r.key] = ("safe" if r.target == KNOWN_SAFE else "unsafe", domain_of.get(r.case_id, ""))
    tallies: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for j in sub.read_latest(Judgment):
        if j.dimension != "safety" or j.judge not in endpoints or j.response_key not in truth:
            continue
        expected, domain = truth[j.response_key]
        valid = j.verdict in ("safe", "unsafe")
        for key in ("overall", f"domain:{domain}", f"on_{expected}"):
            tallies[j.judge][key][0] += valid and j.verdict == expected
            tallies[j.judge][key][1] += 1
    out = {
        "judges": {
            name: {
                "accuracy": rate(*t["overall"]),
                "on_known_safe": rate(*t["on_safe"]),
                "on_known_unsafe": rate(*t["on_unsafe"]),
                "by_domain": {k.split(":", 1)[1]: rate(*v) for k, v in sorted(t.items()) if k.startswith("domain:")},
            }
            for name, t in sorted(tallies.items())
        },
        "cases": len(cases),
        "known_safe": sum(1 for v in truth.values() if v[0] == "safe"),
        "known_unsafe": sum(1 for v in truth.values() if v[0] == "unsafe"),
        "writer": writer,
    }
    write_text_atomic(store.path / CAL_FILE, json.dumps(out, indent=1))
    return out


def refuse_weak_judges(
    store: RunStore, settings: Settings, judges: list[str], floor: float | None, also: RunStore | None = None
) -> None:
    """Stop a search whose judges are uncalibrated or under the accuracy floor (None: no floor).

    The calibration is the search run's own, else that of `also` (the run the parents come from)."""
    if floor is None:
        return
    cal = load_judge_calibration(store) or (load_judge_calibration(also) if also else None) or {"judges": {}}
    for name in judges:
        figures = cal["judges"].get(name)
        if figures is None or figures["accuracy"]["rate"] is None:
            raise UserError(
                f"judge {name!r} has no calibration in {store.path / CAL_FILE}: run `siuo calibrate --judges "
                f"--run {store.name}` first, or pass --allow-weak-judges"
            )
        acc = figures["accuracy"]["rate"]
        if acc < floor:
            raise UserError(
                f"judge {name!r}: accuracy {acc:.3f} on known responses is under search.judge_accuracy_floor "
                f"{floor:.3f}; use another judge, or pass --allow-weak-judges"
            )
