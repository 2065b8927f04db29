"""Item difficulty across targets (generator.evaluate.difficulty): shares, saturation, the Rasch fit, and
the report's Difficulty section on a searched run of the scripted world."""

from __future__ import annotations

import json

import pytest

from generator.evaluate.difficulty import difficulty_tables, rasch_fit
from generator.evaluate.score import score
from generator.search.loop import search
from generator.search.proof import HELDOUT_RUN, heldout_proof
from generator.store import RunStore
from generator.testing import search_world as world


def test_rasch_orders_cases_by_how_many_targets_they_fool_and_leaves_saturated_ones_out():
    targets = [f"t{i}" for i in range(6)]
    # case c{k} fools the k weakest targets (t0 weakest); c0 fools none, c6 fools all: both saturated
    outcomes = {f"c{k}": {t: i < k for i, t in enumerate(targets)} for k in range(7)}
    outcomes["c3b"] = {t: i in (0, 2, 4) for i, t in enumerate(targets)}  # breaks the perfect pattern
    outcomes["c2b"] = {t: i in (1, 3) for i, t in enumerate(targets)}
    outcomes["c1b"] = {t: i == 5 for i, t in enumerate(targets)}  # the strongest target is fooled once too
    items, persons = rasch_fit(outcomes)
    assert "c0" not in items and "c6" not in items
    ordered = [items[f"c{k}"][0] for k in range(1, 6)]
    assert ordered == sorted(ordered) and ordered[0] < 0 < ordered[-1]
    assert abs(sum(d for d, _ in items.values())) < 1e-6  # difficulties are centred on 0
    assert all(se > 0 for _, se in items.values())
    ability = [persons[t][0] for t in targets if t in persons]
    assert ability == sorted(ability)  # a target fooled by fewer cases is more able


def test_rasch_with_nothing_to_fit_is_empty():
    assert rasch_fit({"a": {"t": True}, "b": {"t": True}}) == ({}, {})


@pytest.mark.slow
def test_difficulty_in_scores_and_the_report_section_of_a_searched_run(fake_openai):
    world.install(fake_openai)
    store = RunStore.open("searched", root=fake_openai.cache_dir.parent / "outputs")
    world.seed_parents(store, 6)
    settings = world.world_settings(fake_openai, rounds=2, beam=1, k=1)
    search(store, settings)
    heldout_proof(store, settings)

    sub = RunStore.open(HELDOUT_RUN, root=store.path, create=False)
    scores = score(sub)
    diff = json.loads((sub.path / "scores.json").read_text())["difficulty"]
    assert diff == json.loads(json.dumps(scores.to_json_dict()["difficulty"]))
    # the two held-out targets share rule B: every case is fooled by both or by neither, so all saturate
    for c in diff["cases"].values():
        assert c["targets"] == 2 and c["saturated"] in ("none_fooled", "all_fooled") and c["difficulty"] is None
    parents = [c for c in diff["cases"].values() if c["split"] == "generated"]  # no blind run here
    hardened = [c for c in diff["cases"].values() if c["split"] == "hardened"]
    assert sum(c["share_unsafe"] for c in hardened) / len(hardened) > sum(c["share_unsafe"] for c in parents) / len(
        parents
    )

    titles = [t for t, _, _ in difficulty_tables(store, None)]
    assert titles[0] == "Search: panel fool rate per round"
    assert any(t.startswith("Held-out transfer (heldout-c, heldout-d; judges judge-h)") for t in titles)
    assert "Search: three lineages, parent -> best kept variant" in titles
    for _, header, rows in difficulty_tables(store, None):
        assert all(len(row) == len(header) for row in rows)
    tables = dict((t, rows) for t, _, rows in difficulty_tables(sub, scores))
    hist = tables["Item difficulty by split: cases by share of targets fooled"]
    assert {row[0] for row in hist} == {"generated", "hardened"}
    from generator.evaluate.report import report

    md_path, html_path = report(sub)
    assert "## Difficulty" in md_path.read_text() and "<h2>Difficulty</h2>" in html_path.read_text()
    assert "Item difficulty by split" in html_path.read_text()
