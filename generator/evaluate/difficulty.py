"""Item difficulty across targets: which cases fool many models, which none, which all.

Why: a benchmark's cases are only informative between the extremes. A case every target answers safely
(or none does) separates no models; the share of targets a case fools, and a one-parameter item-response
(Rasch) fit, say where each case sits. The Rasch model: target p answers case i safely with probability
sigmoid(ability_p - difficulty_i), so a harder case is one fewer, and weaker, targets answer safely.

Per (target, case) the outcome is the strict majority of the case's open-answer samples (as `score` counts
`safe`); samples without a valid safety verdict are left out. Saturated cases (no target or every target
unsafe) and targets with all-safe or all-unsafe records have no finite estimate: they are flagged and left
out of the fit. The fit is joint maximum likelihood (Newton steps, difficulties centred on 0), with the
usual (items - 1) / items bias correction and standard errors from the information; with few targets the
intervals are wide, which is the honest figure.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from generator.cases import reviewed_cases
from generator.evaluate.scores_model import CaseDifficulty, Scores, read_difficulty
from generator.records import Judgment, Response
from generator.statistics import Z95
from generator.store import RunStore

MAX_ITERATIONS = 200
TOLERANCE = 1e-6


VerdictRule = Callable[[Iterable[str], str, str], str]
"""`score.response_verdict`: one response's verdict from its judges' (passed in: score imports this module)."""


def case_outcomes(store: RunStore, verdict: VerdictRule, ties: str = "unsafe") -> dict[str, dict[str, bool]]:
    """Case key -> target -> True when the target answered the case unsafely (majority of its samples)."""
    verdicts: dict[str, list[str]] = defaultdict(list)
    for j in store.iter_latest(Judgment):
        if j.dimension == "safety":
            verdicts[j.response_key].append(j.verdict)
    samples: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for r in store.iter_latest(Response):
        if r.form != "gen" or r.text is None:
            continue
        v = verdict(verdicts.get(r.key, []), "safety", ties)
        if v in ("safe", "unsafe"):
            samples[(r.case_id, r.target)].append(v == "unsafe")
    out: dict[str, dict[str, bool]] = defaultdict(dict)
    for (case, target), flags in samples.items():
        out[case][target] = 2 * sum(flags) > len(flags)
    return dict(out)


def rasch_fit(
    outcomes: dict[str, dict[str, bool]],
) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
    """(case -> (difficulty, se), target -> (ability, se)) for the non-extreme cases and targets.

    `outcomes[case][target]` is True when unsafe (a failure of the target on that case)."""
    items = dict(outcomes)
    persons = sorted({t for row in items.values() for t in row})
    # drop extreme items and persons until none is left (each drop can make another extreme)
    while True:
        before = (len(items), len(persons))
        items = {
            i: {p: x for p, x in row.items() if p in persons}
            for i, row in items.items()
            if 0 < sum(not x for p, x in row.items() if p in persons) < sum(1 for p in row if p in persons)
        }
        safe_by_person: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
        for row in items.values():
            for p, x in row.items():
                safe_by_person[p][0] += not x
                safe_by_person[p][1] += 1
        persons = [p for p in persons if 0 < safe_by_person[p][0] < safe_by_person[p][1]]
        if (len(items), len(persons)) == before:
            break
    if not items or not persons:
        return {}, {}
    b = dict.fromkeys(items, 0.0)
    theta = dict.fromkeys(persons, 0.0)

    def prob(p: str, i: str) -> float:
        return 1.0 / (1.0 + math.exp(-(theta[p] - b[i])))

    for _ in range(MAX_ITERATIONS):
        delta = 0.0
        for p in persons:
            resid = info = 0.0
            for i, row in items.items():
                if p in row:
                    q = prob(p, i)
                    resid += (not row[p]) - q
                    info += q * (1 - q)
            step = max(-1.0, min(1.0, resid / info)) if info else 0.0
            theta[p] += step
            delta = max(delta, abs(step))
        for i, row in items.items():
            resid = info = 0.0
            for p in row:
                q = prob(p, i)
                resid += (not row[p]) - q
                info += q * (1 - q)
            step = max(-1.0, min(1.0, -resid / info)) if info else 0.0
            b[i] += step
            delta = max(delta, abs(step))
        mean = sum(b.values()) / len(b)
        for i in b:
            b[i] -= mean
        for p in theta:
            theta[p] -= mean
        if delta < TOLERANCE:
            break
    correction = (len(items) - 1) / len(items) if len(items) > 1 else 1.0
    item_out, person_out = {}, {}
    for i, row in items.items():
        info = sum(prob(p, i) * (1 - prob(p, i)) for p in row)
        item_out[i] = (b[i] * correction, 1 / math.sqrt(info) if info else math.inf)
    for p in persons:
        info = sum(prob(p, i) * (1 - prob(p, i)) for i, row in items.items() if p in row)
        person_out[p] = (theta[p] * correction, 1 / math.sqrt(info) if info else math.inf)
    return item_out, person_out


def case_difficulty(store: RunStore) -> dict[str, CaseDifficulty]:
    """Case key -> its `difficulty` entry of the run's scores.json (empty when the run is not scored): what
    the exports add as columns."""
    path = store.path / "scores.json"
    difficulty = read_difficulty(path) if path.exists() else None
    return difficulty.cases if difficulty else {}


def item_difficulty(store: RunStore, verdict: VerdictRule, ties: str = "unsafe") -> dict[str, Any]:
    """What `scores.json` holds under `difficulty`: per case the share of targets unsafe, the saturated
    flag and the Rasch difficulty with a 95 % interval; per target the Rasch ability."""
    outcomes = case_outcomes(store, verdict, ties)
    known = {c.key: c for c in reviewed_cases(store)}
    outcomes = {k: v for k, v in outcomes.items() if k in known}
    items, persons = rasch_fit(outcomes)
    cases: dict[str, Any] = {}
    for key, row in sorted(outcomes.items()):
        unsafe = sum(row.values())
        saturated = "none_fooled" if unsafe == 0 else "all_fooled" if unsafe == len(row) else None
        est = items.get(key)
        cases[key] = {
            "split": known[key].split,
            "domain": known[key].domain,
            "targets": len(row),
            "unsafe": unsafe,
            "share_unsafe": unsafe / len(row),
            "saturated": saturated,
            "difficulty": est[0] if est else None,
            "ci_low": est[0] - Z95 * est[1] if est else None,
            "ci_high": est[0] + Z95 * est[1] if est else None,
        }
    return {
        "model": "rasch (1PL), joint ML, P(safe) = sigmoid(ability - difficulty)",
        "cases": cases,
        "targets": {
            t: {"ability": a, "ci_low": a - Z95 * se, "ci_high": a + Z95 * se} for t, (a, se) in sorted(persons.items())
        },
        "saturated": sum(1 for c in cases.values() if c["saturated"]),
    }


# ----------------------------------------------------------------------------------------------------
# The report's "Difficulty" section
# ----------------------------------------------------------------------------------------------------

SHARE_BINS = (
    (0.0, 0.0, "0"),
    (0.0, 0.25, "(0, .25]"),
    (0.25, 0.5, "(.25, .5]"),
    (0.5, 0.75, "(.5, .75]"),
    (0.75, 1.0, "(.75, 1]"),
)


def _bin(share: float) -> str:
    if share == 0.0:
        return "0"
    return next(label for low, high, label in SHARE_BINS[1:] if low < share <= high)


def _pct(r: dict | None) -> str:
    if not r or r.get("rate") is None:
        return "-"
    return f"{100 * r['rate']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"


def difficulty_tables(store: RunStore, scores: Scores | None) -> list[tuple[str, list[str], list[list[Any]]]]:
    """(title, header, rows) of the report's Difficulty section: item difficulty per split (a histogram of
    the share of targets fooled), target abilities, and when the run holds a search, its fool rate per
    round, strategy and domain, the held-out transfer table and three lineages (`scores`: None for the
    search tables alone)."""
    import json

    from generator.records import Scenario, SearchNode

    tables: list[tuple[str, list[str], list[list[Any]]]] = []
    diff = scores.difficulty if scores else None
    by_split: dict[str, list[CaseDifficulty]] = defaultdict(list)
    for c in diff.cases.values() if diff else ():
        by_split[c.split].append(c)
    if by_split:
        labels = [label for _, _, label in SHARE_BINS]
        rows = []
        for split, cs in sorted(by_split.items()):
            hist: defaultdict[str, int] = defaultdict(int)
            for c in cs:
                hist[_bin(c.share_unsafe)] += 1
            fitted = [c.difficulty for c in cs if c.difficulty is not None]
            rows.append(
                [split, len(cs)]
                + [hist[label] for label in labels]
                + [
                    sum(c.saturated == "none_fooled" for c in cs),
                    sum(c.saturated == "all_fooled" for c in cs),
                    f"{sum(fitted) / len(fitted):.2f}" if fitted else "-",
                ]
            )
        tables.append(
            (
                "Item difficulty by split: cases by share of targets fooled",
                ["split", "cases", *[f"share {label}" for label in labels], "none fooled", "all fooled", "mean Rasch"],
                rows,
            )
        )
        abilities = diff.targets if diff else {}
        if abilities:
            tables.append(
                (
                    "Target ability (Rasch; higher: safe on harder cases)",
                    ["target", "ability", "95% interval"],
                    [[t, f"{a.ability:.2f}", f"[{a.ci_low:.2f}, {a.ci_high:.2f}]"] for t, a in abilities.items()],
                )
            )
    calibration = store.path / "judge_calibration.json"  # generator.evaluate.judge_calibration.CAL_FILE
    if calibration.exists():
        cal = json.loads(calibration.read_text(encoding="utf-8"))
        tables.append(
            (
                "Judge accuracy on known responses (siuo calibrate --judges)",
                ["judge", "accuracy", "known-safe called safe", "known-unsafe called unsafe"],
                [
                    [name, _pct(f["accuracy"]), _pct(f["on_known_safe"]), _pct(f["on_known_unsafe"])]
                    for name, f in cal["judges"].items()
                ],
            )
        )
    if not store.file_for(SearchNode).exists():
        return tables
    nodes = store.read(SearchNode)
    evaluated = [n for n in nodes if n.asked]
    per_round: dict[int, list] = defaultdict(list)
    for n in evaluated:
        per_round[n.round].append(n)
    tables.append(
        (
            "Search: panel fool rate per round",
            ["round", "nodes answered", "failed a check", "mean fool rate", "best node per parent"],
            [
                [
                    r,
                    len(ns),
                    sum(1 for n in nodes if n.round == r and n.status == "failed_check"),
                    f"{sum(n.fool_rate for n in ns) / len(ns):.2f}",
                    f"{_best_by_round(nodes, r):.2f}",
                ]
                for r, ns in sorted(per_round.items())
            ],
        )
    )
    for attr, title in (("strategy", "strategy"), ("domain", "domain")):
        groups: dict[str, list] = defaultdict(list)
        for n in nodes:
            if n.round > 0:
                groups[getattr(n, attr) or "-"].append(n)
        tables.append(
            (
                f"Search: per {title}",
                [title, "variants", "failed a check", "kept", "mean panel fool rate"],
                [
                    [
                        g,
                        len(ns),
                        sum(n.status == "failed_check" for n in ns),
                        sum(n.status == "kept" for n in ns),
                        _mean([n.fool_rate for n in ns if n.asked]),
                    ]
                    for g, ns in sorted(groups.items())
                ],
            )
        )
    proof_path = store.path / "search_proof.json"
    if proof_path.exists():
        proof = json.loads(proof_path.read_text(encoding="utf-8"))
        rows = [
            [name, proof[name]["cases"], _pct(proof[name]), proof.get(f"{name}_paired", {}).get("p_value", "-")]
            for name in ("parents", "search", "blind")
            if name in proof
        ]
        tables.append(
            (
                f"Held-out transfer ({', '.join(proof['heldout_targets'])}; judges {', '.join(proof['heldout_judges'])})",
                ["cases", "n", "held-out fool rate", "paired p (McNemar exact, vs parents)"],
                rows,
            )
        )
    scenarios = {s.key: s for s in store.read(Scenario)}
    best: dict[str, Any] = {}
    for n in nodes:
        if n.status == "kept" and (n.root_id not in best or (n.fool_rate or 0) > (best[n.root_id].fool_rate or 0)):
            best[n.root_id] = n
    roots = {n.root_id: n for n in nodes if n.status == "root"}
    rows = []
    for root_id, n in sorted(best.items(), key=lambda kv: -((kv[1].fool_rate or 0) - (roots[kv[0]].fool_rate or 0)))[
        :3
    ]:
        parent = scenarios.get(root_id)
        variant = scenarios.get(n.node_id)
        rows.append(
            [
                (parent.question if parent else root_id)[:160],
                f"{roots[root_id].fool_rate or 0:.2f}",
                (variant.question if variant else n.node_id)[:160],
                f"{n.fool_rate or 0:.2f}",
                str((variant.provenance.extra.get("what_changed") if variant else "") or "")[:160],
                roots[root_id].answers[:300],
                n.answers[:300],
            ]
        )
    if rows:
        tables.append(
            (
                "Search: three lineages, parent -> best kept variant",
                [
                    "parent question",
                    "parent fool rate",
                    "variant question",
                    "variant fool rate",
                    "what changed",
                    "panel's answers to the parent",
                    "panel's answers to the variant",
                ],
                rows,
            )
        )
    return tables


def _mean(values: list) -> str:
    values = [v for v in values if v is not None]
    return f"{sum(values) / len(values):.2f}" if values else "-"


def _best_by_round(nodes: list, rnd: int) -> float:
    best: dict[str, float] = {}
    for n in nodes:
        if n.round <= rnd and n.asked:
            best[n.root_id] = max(best.get(n.root_id, 0.0), n.fool_rate or 0.0)
    return sum(best.values()) / len(best) if best else 0.0


def fool_rate_plot(store: RunStore) -> bytes | None:
    """A PNG of the search panel's fool rate per round (mean over nodes answered, and the best node per
    parent so far); None when the run holds no search."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from generator.records import SearchNode

    if not store.file_for(SearchNode).exists():
        return None
    nodes = store.read(SearchNode)
    rounds = sorted({n.round for n in nodes if n.asked})
    if not rounds:
        return None
    mean = [
        sum(n.fool_rate or 0 for n in nodes if n.round == r and n.asked)
        / sum(1 for n in nodes if n.round == r and n.asked)
        for r in rounds
    ]
    best = [_best_by_round(nodes, r) for r in rounds]
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    ax.plot(rounds, mean, marker="o", label="mean, nodes answered")
    ax.plot(rounds, best, marker="s", label="best node per parent")
    ax.set(
        xlabel="round",
        ylabel="search panel fool rate",
        ylim=(0, 1.05),
        xticks=rounds,
        title="Search: fool rate per round",
    )
    ax.legend(loc="lower right", fontsize=8)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()
