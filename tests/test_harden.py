"""Stage `harden` against the loopback OpenAI server: variants with parents and strategies, resume."""

from __future__ import annotations

import json
import re

import pytest
from siuo_data import siuo_items
from test_propose import by_prompt, fake_proposal

from generator.domains import domain_by_label
from generator.errors import UserError
from generator.generate.harden import HardenedModel, harden, load_strategies
from generator.generate.propose import propose
from generator.models.embeddings import HashingEmbedder
from generator.records import Case, Failure, Scenario
from generator.store import RunStore


def parent_in(body: dict) -> dict:
    """The parent case the harden prompt shows (JSON between the CASE markers)."""
    m = re.search(r"<<<CASE\n(.*?)\nCASE>>>", body["messages"][0]["content"], re.DOTALL)
    return json.loads(m.group(1))


def variant_reply(body: dict) -> str:
    text = body["messages"][0]["content"]
    return fake_proposal(text, what_changed="took the give-away words out of the question")


@pytest.fixture
def settings(fake_openai):
    s = fake_openai.settings(cache=False)
    s.propose.embedder = "hashing"
    return s


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore.open("gen", root=tmp_path / "outputs")


def test_variants_have_parents_and_strategies_and_resume(fake_openai, settings, store):
    fake_openai.on_chat(by_prompt)
    propose(store, settings, domains="religion,morality", per_domain=1, embedder=HashingEmbedder())
    parents = {sc.key: sc for sc in store.read(Scenario)}
    assert len(parents) == 2

    fake_openai.reset_counts()
    fake_openai.on_chat(variant_reply)
    summary = harden(store, settings, strategies=["remove_giveaway_words", "move_cue_to_image"])

    variants = [sc for sc in store.read(Scenario) if sc.parent_id]
    assert len(variants) == 4 and fake_openai.hits == 4
    assert {(v.parent_id, v.strategy) for v in variants} == {
        (p, s) for p in parents for s in ("remove_giveaway_words", "move_cue_to_image")
    }
    strategies = load_strategies()
    for v in variants:
        assert v.status == "ok" and v.domain == parents[v.parent_id].domain
        HardenedModel.model_validate(v.model_dump(include=set(HardenedModel.model_fields) - {"what_changed"}))
        assert v.provenance.prompt_file == "prompts/harden.md"
        assert v.provenance.extra["what_changed"].startswith("took the give-away")
        assert v.provenance.extra["strategy_hash"] == strategies[v.strategy].sha256
    assert summary.groups["move_cue_to_image"].written == 2 and summary.total.written == 4

    # Each prompt explains its strategy and shows its parent as data.
    for body in fake_openai.chat_requests():
        text = body["messages"][0]["content"]
        shown = parent_in(body)
        parent = next(p for p in parents.values() if p.question == shown["question"])
        assert shown["hazard"] == parent.hazard and shown["image_description"] == parent.image_description
        assert any(s.instruction in text for s in strategies.values())
        assert "$" not in re.sub(r"<<<CASE.*?CASE>>>", "", text, flags=re.DOTALL)  # every placeholder filled

    # Re-run asks nothing; a new strategy asks only for its own variants, of the two original parents
    # (variants are never parents themselves).
    fake_openai.reset_counts()
    again = harden(store, settings, strategies=["remove_giveaway_words", "move_cue_to_image"])
    assert fake_openai.hits == 0 and again.total.skipped == 4
    more = harden(store, settings, strategies=["remove_giveaway_words", "benign_phrasing"])
    assert fake_openai.hits == 2 and more.groups["benign_phrasing"].written == 2
    assert {v.parent_id for v in store.read(Scenario) if v.strategy == "benign_phrasing"} == set(parents)


def test_harden_official_cases_from_another_run(fake_openai, settings, store):
    official = RunStore.open("official", root=store.path.parent)
    for row in siuo_items()[:5]:
        official.append(
            Case(
                question_id=row["question_id"],
                image=row["image"],
                question=row["question"],
                category=row["category"],
                domain=domain_by_label(row["category"]).id,
                safety_warning=row["safety_warning"],
                hazard=row["safety_warning"],
                reference_answer=row["reference_answer"],
            )
        )
    fake_openai.on_chat(variant_reply)
    summary = harden(store, settings, from_run="official", strategies=["everyday_context"], limit=3)

    variants = store.read(Scenario)
    cases = official.read(Case)[:3]
    assert summary.total.written == 3 and fake_openai.hits == 3
    assert sorted(v.parent_id for v in variants) == sorted(str(c.question_id) for c in cases)
    assert all(v.strategy == "everyday_context" and v.provenance.extra["parent_run"] == "official" for v in variants)
    assert all(v.domain == "self-harm" for v in variants)  # the first official cases are self-harm
    shown = [parent_in(b)["question"] for b in fake_openai.chat_requests()]
    assert sorted(shown) == sorted(c.question for c in cases)


def test_unchanged_or_invalid_variant_is_a_failure(fake_openai, settings, store):
    fake_openai.on_chat(by_prompt)
    propose(store, settings, domains="religion", per_domain=1, embedder=HashingEmbedder())
    [parent] = store.read(Scenario)

    def lazy(body):  # repeats its parent; or, for the second strategy, no JSON at all
        if "Indirect, benign-sounding phrasing" in body["messages"][0]["content"]:
            return "I would rather not."
        return json.dumps({**parent_in(body), "mcqa_distractors": []})

    fake_openai.on_chat(lazy)
    summary = harden(store, settings, strategies=["remove_giveaway_words", "benign_phrasing"])
    failures = {f.reason.split(":")[0]: f for f in store.read(Failure)}
    assert summary.total.failed == 2 and summary.total.written == 0
    assert "the variant repeats its parent's question and image unchanged" in failures
    assert any(r.startswith("no valid HardenedModel after one repair retry") for r in failures)
    assert all(f.stage == "harden" for f in failures.values())
    assert len(store.read(Scenario)) == 1


def test_bad_strategy_or_empty_run_is_a_user_error(fake_openai, settings, store, tmp_path):
    with pytest.raises(UserError, match="no proposed scenarios to harden"):
        harden(store, settings)
    with pytest.raises(UserError, match="unknown strategy 'shout'"):
        harden(store, settings, strategies=["shout"])
    broken = tmp_path / "strategies.toml"
    broken.write_text('[strategy.x]\nname = "X"\n')
    with pytest.raises(UserError, match=r"strategies.toml: strategy.x: missing field 'instruction'"):
        harden(store, settings, strategies=["x"], strategies_file=broken)
    assert fake_openai.hits == 0


def test_cli_harden(fake_openai, settings, store, tmp_path, monkeypatch):
    import tomli_w
    from typer.testing import CliRunner

    from generator.cli import app

    fake_openai.on_chat(by_prompt)
    propose(store, settings, domains="religion", per_domain=2, embedder=HashingEmbedder())
    config = tmp_path / "siuo.toml"
    config.write_text(tomli_w.dumps(settings.model_dump(mode="json", exclude_none=True)))
    monkeypatch.setenv("SIUO_OUTPUTS", str(store.path.parent))
    fake_openai.on_chat(variant_reply)

    result = CliRunner().invoke(
        app, ["harden", "--run", "gen", "--strategies", "benign_phrasing", "--limit", "1", "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "benign_phrasing" in result.output and "1 written" in result.output
    assert [v.strategy for v in store.read(Scenario) if v.parent_id] == ["benign_phrasing"]
