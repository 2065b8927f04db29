"""The hardening search vs blind `harden` at an equal request budget, on the scripted world (not a test).

Both sides start from the same parent cases (generator/testing/search_world.py). Blind: `harden` with every
strategy, `render`, and the search's checks (pair_hazard required); its request count is the budget. Search:
`siuo search` with `search.max_requests` = that budget. Then the held-out panel (rule B targets, their own
judge, never asked during the search) answers parents, search variants and blind variants that pass the
checks. Printed: held-out fool rate of each side with its Wilson 95 % interval, the ratio (goal >= 1.5x,
with the crude bounds low/high of the two intervals), requests and cost per kept variant, wall per round.

A scripted world is evidence about the search machinery only, not about real models. The same code runs
against real endpoints: `siuo search --run R --proof --blind-run B` with your own config.

    python bench/bench_search.py [--parents 24] [--rounds 3] [--latency 0.0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parents", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds the loopback server waits per request")
    args = ap.parse_args(argv)

    from generator.checks.stage import check
    from generator.generate.harden import harden
    from generator.render.stage import render
    from generator.search.loop import check_settings, search
    from generator.search.proof import heldout_proof, passing_variants
    from generator.store import RunStore
    from generator.testing import search_world as world
    from generator.testing.fake_openai import FakeOpenAI

    root = Path(tempfile.mkdtemp(prefix="bench-search-"))
    price = {"price_input_per_1k": 0.001, "price_output_per_1k": 0.004}
    with FakeOpenAI(cache_dir=root / "cache", latency=args.latency) as fake:
        world.install(fake)

        def settings(**search_opts):
            s = world.world_settings(fake, rounds=args.rounds, beam=args.beam, k=args.k, **search_opts)
            for name, ep in s.endpoints.items():
                s.endpoints[name] = ep.model_copy(update=price)
            return s

        base = settings()
        blind = RunStore.open("blind", root=root)
        world.seed_parents(blind, args.parents)
        render(blind, base)
        fake.reset_counts()
        t = time.perf_counter()
        harden(blind, base)
        render(blind, base)
        check(blind, check_settings(base))
        blind_wall = time.perf_counter() - t
        budget = fake.hits
        blind_cost = sum(u.cost_usd for u in blind.load_manifest().usage.values())

        searched = RunStore.open("search", root=root)
        world.seed_parents(searched, args.parents)
        s = settings(max_requests=budget)
        render(searched, s)
        fake.reset_counts()
        t = time.perf_counter()
        summary = search(searched, s)
        search_wall = time.perf_counter() - t
        search_sent = fake.hits
        out = heldout_proof(searched, s, blind_run="blind")

    blind_kept = len(passing_variants(blind, base))
    sr, br = out["search"], out["blind"]
    ratio = out["ratio_search_to_blind"]
    low = sr["ci_low"] / br["ci_high"] if br["ci_high"] else None
    high = sr["ci_high"] / br["ci_low"] if br["ci_low"] else None

    def fmt(g):
        return f"{g['rate']:.3f} [{g['ci_low']:.3f}, {g['ci_high']:.3f}] ({g['k']}/{g['n']})"

    rows = [
        ("parents, held-out fool rate", fmt(out["parents"]), ""),
        ("blind harden, held-out fool rate", fmt(br), f"{br['cases']} variants passing the checks"),
        ("search, held-out fool rate", fmt(sr), f"{sr['cases']} hardened variants"),
        (
            "search / blind",
            f"**{ratio:.2f}x**" if ratio else "-",
            f"bounds {low:.2f}x .. {'inf' if high is None else f'{high:.2f}x'} (interval ends)" if low else "",
        ),
        ("request budget (blind's requests)", str(budget), f"search used {summary.requests} ({search_sent} sent)"),
        (
            "requests per kept variant",
            f"blind {budget / max(blind_kept, 1):.1f}",
            f"search {summary.requests / max(summary.hardened, 1):.1f}",
        ),
        (
            "cost per kept variant (world prices $0.001/$0.004 per 1k tokens)",
            f"blind ${blind_cost / max(blind_kept, 1):.5f}",
            f"search ${summary.cost_usd / max(summary.hardened, 1):.5f}",
        ),
        (
            "wall per round, round 0 = the parents (s)",
            ", ".join(f"{x:.2f}" for x in summary.round_seconds),
            f"blind all: {blind_wall:.2f}",
        ),
        ("search panel fool rate per round", ", ".join(f"{v:.2f}" for v in summary.fool_rate_by_round.values()), ""),
        ("paired test, search (McNemar exact p)", f"{out['search_paired']['p_value']:.3g}", ""),
        ("paired test, blind (McNemar exact p)", f"{out['blind_paired']['p_value']:.3g}", ""),
    ]
    print(
        f"bench_search: {args.parents} parents, rounds {args.rounds}, beam {args.beam}, k {args.k}; {summary.stopped}"
    )
    print(f"search wall {search_wall:.2f} s, blind wall {blind_wall:.2f} s")
    print("| what | figure | note |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
