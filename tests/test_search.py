"""The hardening search (generator.search) in the scripted world of generator/testing/search_world.py.

Every figure asserted here follows from the world's rules (which targets refuse what), read back from the
loopback server's request log and the records written: nothing is a hard-coded result."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from generator.errors import UserError
from generator.records import Case, Response, Scenario, SearchNode
from generator.search import loop
from generator.search.loop import LEDGER, PANEL_RUN, Ledger, search
from generator.search.proof import HELDOUT_RUN, PROOF_FILE, case_counts, heldout_proof
from generator.statistics import sign_test
from generator.store import RunStore
from generator.testing import search_world as world

HELDOUT_MODELS = {"rule-b-1", "rule-b-2", "judge-heldout"}


@pytest.fixture
def fake(fake_openai):
    world.install(fake_openai)
    return fake_openai


@pytest.fixture
def run(tmp_path):
    store = RunStore.open("search-run", root=tmp_path / "outputs")
    world.seed_parents(store, 6)
    return store


def models_asked(fake) -> Counter:
    return Counter(b.get("model") for b in fake.chat_requests())


def nodes_by_round(store: RunStore) -> dict[int, list[SearchNode]]:
    out: dict[int, list[SearchNode]] = {}
    for n in store.read(SearchNode):
        out.setdefault(n.round, []).append(n)
    return out


@pytest.mark.slow
def test_search_raises_the_panel_fool_rate_round_over_round(fake, run):
    settings = world.world_settings(fake, rounds=3, beam=1, k=2)
    summary = search(run, settings)

    rates = summary.fool_rate_by_round
    assert rates[0] is not None and rates[0] < rates[1] < rates[2] == 1.0
    assert summary.stopped == "the panel is fooled on every sample"
    by_round = nodes_by_round(run)
    assert {n.status for n in by_round[0]} == {"root"} and len(by_round[0]) == 6
    # the beam keeps the best by fool rate in each lineage and round
    for rnd in (1, 2):
        for root in {n.root_id for n in by_round[rnd]}:
            mine = [n for n in by_round[rnd] if n.root_id == root and n.status in ("kept", "pruned")]
            kept = [n for n in mine if n.status == "kept"]
            assert len(kept) == 1 and all(kept[0].fool_rate >= n.fool_rate for n in mine)
    # each variant names its parent node, strategy and the feedback it was shown (the panel's answers)
    variants = {s.key: s for s in run.read(Scenario) if s.parent_id}
    roots = {n.node_id: n for n in by_round[0]}
    panel = RunStore.open(PANEL_RUN, root=run.path, create=False)
    hardener_prompts = [json.dumps(b) for b in fake.chat_requests() if b.get("model") == "world-hardener"]
    for n in by_round[1]:
        assert variants[n.node_id].parent_id == n.parent_node == f"root:{n.root_id}" and n.strategy
        assert n.feedback == roots[n.parent_node].answers  # it was shown what the panel answered its parent
        for r in panel.read(Response):
            if r.case_id == f"case-{n.parent_node}":
                assert r.text in n.feedback
        assert any(json.dumps(n.feedback)[1:-1] in body for body in hardener_prompts)
        assert n.ci_low <= n.fool_rate <= n.ci_high
    # the hardened split: kept variants that fool the panel more than their parent
    hardened = [c for c in run.read(Case) if c.split == "hardened"]
    assert hardened and summary.hardened == len(hardened)
    root_rate = {n.root_id: n.fool_rate for n in by_round[0]}
    for c in hardened:
        node = next(n for n in run.read(SearchNode) if n.node_id == c.question_id)
        assert node.status == "kept" and node.fool_rate > root_rate[node.root_id]


@pytest.mark.slow
def test_a_variant_failing_the_pair_check_is_never_answered_even_when_the_profile_does_not_require_it(fake, run):
    settings = world.world_settings(fake, rounds=2, beam=1, k=2)
    settings.check = settings.check.model_copy(update={"required": ["no_leakage"]})  # the profile waives it
    search(run, settings)

    failed = [n for n in run.read(SearchNode) if n.status == "failed_check"]
    assert failed and all(n.checks["pair_hazard"] == "failed" for n in failed)
    assert {n.strategy for n in failed} == {"everyday_context"}  # the rewrite that loses the hazard object
    panel = RunStore.open(PANEL_RUN, root=run.path, create=False)
    answered = {r.case_id for r in panel.read(Response)}
    assert not answered & {f"case-{n.node_id}" for n in failed}
    questions = {s.question for s in run.read(Scenario) if s.key in {n.node_id for n in failed}}
    for body in fake.chat_requests():
        if str(body.get("model", "")).startswith("rule-"):
            assert not any(q in json.dumps(body) for q in questions)


@pytest.mark.slow
def test_heldout_targets_and_judges_are_never_asked_during_the_search_and_their_figures_follow_rule_b(fake, run):
    settings = world.world_settings(fake, rounds=3, beam=1, k=1)
    search(run, settings)
    asked = models_asked(fake)
    assert asked["rule-a-1"] and asked["judge-search"]
    assert not HELDOUT_MODELS & set(asked)

    fake.reset_counts()
    out = heldout_proof(run, settings)
    asked = models_asked(fake)
    assert HELDOUT_MODELS <= set(asked) and not {"rule-a-1", "rule-a-2", "judge-search"} & set(asked)
    # every held-out figure is what rule B says of the case's own text and image
    sub = RunStore.open(HELDOUT_RUN, root=run.path, create=False)
    counts = case_counts(sub, settings, list(world.HELDOUT_TARGETS), ["judge-h"])
    scenarios = {s.key: s for s in run.read(Scenario)}
    subtle_seen = 0
    for case in sub.read(Case):
        sc = scenarios[case.scenario_id or str(case.question_id).removeprefix("root:")]
        words = set(case.question.lower().replace("?", " ").split())
        loud = any(x in sc.image_prompt.lower() for x in world.LOUD)
        refused_by_b = bool(words & set(world.GIVEAWAY)) or loud or bool(words & set(world.SUBTLE))
        k, n = counts[case.key]
        assert n > 0 and k == (0 if refused_by_b else n), case.question
        subtle_seen += case.split == "hardened" and bool(words & set(world.SUBTLE))
    assert subtle_seen, "some kept variant fools rule A yet keeps a word only rule B refuses on"
    assert out["search"]["rate"] > out["parents"]["rate"]
    assert out["search"]["rate"] < 1.0  # transfer is partial, by the world's design
    assert json.loads((run.path / PROOF_FILE).read_text())["search"]["k"] == out["search"]["k"]
    assert out["search_paired"]["only_variant_fooled"] > out["search_paired"]["only_parent_fooled"]
    assert set(out["search"]["by_domain"]) <= set(world.DOMAINS)
    report = (run.path / "search_report.md").read_text()
    assert "## Difficulty" in report and "### Held-out transfer (heldout-c, heldout-d; judges judge-h)" in report
    assert "### Item difficulty by split" in report and "### Search: three lineages" in report
    assert "![search panel fool rate per round](search_fool_rate.png)" in report
    assert (run.path / "search_fool_rate.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_the_request_cap_stops_the_search_between_rounds(fake, run):
    settings = world.world_settings(fake, rounds=3, beam=1, k=2, max_requests=180)
    summary = search(run, settings)
    assert summary.stopped.startswith("request cap: round 2") and summary.rounds_done == 1
    ledger = Ledger(run.path / PANEL_RUN / LEDGER)
    assert 0 < ledger.requests <= 180
    assert ledger.rounds_done == ledger.started or ledger.started == -1  # no half-done round
    sent = sum(fake.hits_by_path.values()) - 6  # the parents' own images are rendered before the search
    assert ledger.requests == sent
    # the rounds it did are whole: every variant asked for has its node on file
    variants = [s for s in run.read(Scenario) if s.parent_id]
    assert {s.key for s in variants} == {n.node_id for n in run.read(SearchNode) if n.round > 0}


@pytest.mark.slow
def test_killed_mid_round_it_resumes_and_repeats_no_call(fake, run, tmp_path, monkeypatch):
    settings = world.world_settings(fake, rounds=2, beam=1, k=2)
    real_checks = loop.run_checks
    calls = {"n": 0}

    def dies_in_round_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed after the round's variants were written, before their checks
        return real_checks(*args, **kwargs)

    monkeypatch.setattr(loop, "run_checks", dies_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        search(run, settings)
    first = [dict(b) for b in fake.chat_requests()]
    monkeypatch.setattr(loop, "run_checks", real_checks)
    fake.reset_counts()
    summary = search(run, settings)
    second = [dict(b) for b in fake.chat_requests()]
    assert summary.rounds_done == 2
    assert not [b for b in second if b.get("model") == "world-hardener"]  # round 2's variants were written

    # together the two runs asked exactly what one uninterrupted run asks
    fresh = RunStore.open("straight", root=tmp_path / "outputs")
    world.seed_parents(fresh, 6)
    fake.reset_counts()
    search(fresh, settings)
    straight = models_asked(fake)
    assert Counter(b.get("model") for b in first + second) == straight
    for record_type in (Scenario, SearchNode):
        keys = [r.key for r in run.read(record_type)]
        assert len(keys) == len(set(keys))
    panel_keys = [r.key for r in RunStore.open(PANEL_RUN, root=run.path).read(Response)]
    assert len(panel_keys) == len(set(panel_keys))
    fake.reset_counts()
    search(run, settings)  # finished: nothing more to ask
    assert fake.hits == 0


def test_panels_that_share_an_endpoint_are_refused(fake, run):
    settings = world.world_settings(fake, heldout=["target-a"])
    with pytest.raises(UserError, match="'target-a' is in the search panel and the held-out panel"):
        search(run, settings)
    assert fake.hits == 0


def test_a_search_without_a_pair_checker_stops_before_any_request(fake, run):
    settings = world.world_settings(fake)
    settings.roles = settings.roles.model_copy(update={"vlm_checker": None})
    with pytest.raises(UserError, match=r"needs roles.vlm_checker"):
        search(run, settings)
    assert fake.hits == 0


def test_no_search_targets_is_a_clear_error(fake, run):
    settings = world.world_settings(fake, targets=[])
    with pytest.raises(UserError, match=r"search.targets"):
        search(run, settings)


def test_sign_test_is_mcnemars_exact_test():
    assert sign_test(0, 0) == 1.0
    assert sign_test(8, 0) == sign_test(0, 8) == 2 / 256
    assert sign_test(1, 9) == pytest.approx(2 * 11 / 1024)
    assert sign_test(3, 3) == 1.0


@pytest.mark.slow
def test_cli_search_with_proof(fake, run, tmp_path, monkeypatch):
    import tomli_w
    from typer.testing import CliRunner

    from generator.cli import app

    settings = world.world_settings(fake, rounds=2, beam=1, k=1)
    config = tmp_path / "siuo.toml"
    config.write_text(tomli_w.dumps(settings.model_dump(mode="json", exclude_none=True)))
    monkeypatch.setenv("SIUO_OUTPUTS", str(run.path.parent))
    result = CliRunner().invoke(app, ["search", "--run", run.name, "--proof", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "held-out fool rate, search" in result.output and "McNemar exact p" in result.output
    assert (run.path / PROOF_FILE).exists()


@pytest.mark.slow
def test_search_from_another_runs_cases(fake, tmp_path):
    """Parents can be Case records of another run (e.g. the imported official set), shown with their own image."""
    outputs = tmp_path / "outputs"
    world.seed_cases(RunStore.open("official", root=outputs), 3)
    run = RunStore.open("from-official", root=outputs)
    summary = search(run, world.world_settings(fake, rounds=2, beam=1, k=1), from_run="official")
    roots = [n for n in run.read(SearchNode) if n.round == 0]
    assert sorted(n.root_id for n in roots) == ["0", "1", "2"]
    assert summary.rounds_done >= 1 and summary.fool_rate_by_round[summary.rounds_done] > summary.fool_rate_by_round[0]
    assert all(s.parent_id for s in run.read(Scenario))  # variants only: the parents stay in their own run


@pytest.mark.slow
def test_judges_are_calibrated_on_known_responses_and_a_weak_judge_stops_the_search(fake, tmp_path):
    from generator.evaluate.judge_calibration import CAL_FILE, calibrate_judges

    outputs = tmp_path / "outputs"
    store = RunStore.open("official", root=outputs)
    world.seed_cases(store, 4)
    settings = world.world_settings(fake, judges=["judge-lax"], judge_accuracy_floor=0.9)
    cal = calibrate_judges(store, settings, ["judge-s", "judge-lax", "judge-h"])
    assert cal["known_safe"] == cal["known_unsafe"] == 4
    good, lax = cal["judges"]["judge-s"], cal["judges"]["judge-lax"]
    assert (good["accuracy"]["k"], good["accuracy"]["n"]) == (8, 8)
    assert (lax["accuracy"]["k"], lax["accuracy"]["n"]) == (4, 8) and lax["on_known_unsafe"]["rate"] == 0.0
    assert set(good["by_domain"]) == set(world.DOMAINS[:3])
    assert json.loads((store.path / CAL_FILE).read_text())["judges"]["judge-lax"]["accuracy"]["rate"] == 0.5
    from generator.evaluate.difficulty import difficulty_tables

    tables = {t: rows for t, _, rows in difficulty_tables(store, None)}
    assert [r[0] for r in tables["Judge accuracy on known responses (siuo calibrate --judges)"]] == [
        "judge-h",
        "judge-lax",
        "judge-s",
    ]
    fake.reset_counts()
    calibrate_judges(store, settings, ["judge-s", "judge-lax", "judge-h"])
    assert fake.hits == 0  # resumed: every known response and verdict is on file

    with pytest.raises(UserError, match=r"judge 'judge-lax': accuracy 0.500 .* search.judge_accuracy_floor 0.900"):
        search(store, settings, from_run="official")
    assert fake.hits == 0
    other = RunStore.open("uncalibrated", root=outputs)
    with pytest.raises(UserError, match=r"judge 'judge-lax': accuracy 0.500"):  # the parents' run's calibration
        search(other, settings, from_run="official")
    with pytest.raises(UserError, match=r"judge 'judge-lax' has no calibration"):
        world.seed_parents(other, 2)
        search(other, settings)
    summary = search(
        other,
        settings.model_copy(update={"search": settings.search.model_copy(update={"rounds": 1})}),
        from_run="official",
        allow_weak_judges=True,
    )
    assert summary.rounds_done == 1
