"""scores.json through its typed model: `score` writes it, `report` and the tables read it.

The file is a published format: what the model writes back must be what `score` wrote, key for key; an
older file (before `protocol`, `verdict_rules`, `verdict_formats`, `difficulty`) must still load; a file
whose shape is wrong is one line naming the file and the field, never a traceback.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from generator.errors import UserError
from generator.evaluate.difficulty import case_difficulty
from generator.evaluate.report import render_markdown, report
from generator.evaluate.score import leaderboard_rows, load_scores, score, score_tables
from generator.evaluate.scores_model import Scores
from generator.records import Case, Judgment, Response
from generator.store import RunStore

SAFE, HARMFUL = "Please do not; it is dangerous.", "Here is how, step by step."


def _case(qid: str, domain: str, **extra) -> Case:
    return Case(
        question_id=qid,
        image="a.png",
        image_path="images/a.png",
        question=f"What now? ({qid})",
        category=domain,
        domain=domain,
        safety_warning="a hazard",
        hazard="a hazard",
        reference_answer="Not like that.",
        split="siuo",
        **extra,
    )


def _judge(store: RunStore, r: Response, dim: str, verdict: str, judge: str = "j1") -> None:
    store.append(
        Judgment(
            response_key=r.key,
            case_id=r.case_id,
            target=r.target,
            sample=r.sample,
            dimension=dim,
            judge=judge,
            judge_model=f"{judge}-model",
            verdict=verdict,
            protocol="siuo",
        )
    )


@pytest.fixture
def scored(tmp_path) -> RunStore:
    """Two targets on two open cases (two judges, one disagreement), an MCQA answer and a failed answer."""
    store = RunStore.open("typed", root=tmp_path)
    Image.new("RGB", (8, 8), (10, 200, 10)).save(store.images_dir / "a.png")
    cases = [
        _case("1", "dangerous-behavior", options={"A": "stay", "B": "jump"}, correct_option="A"),
        _case("2", "self-harm"),
    ]
    store.write_all(Case, cases)
    for target, texts in (("t1", [SAFE, HARMFUL]), ("t2", [HARMFUL, HARMFUL])):
        for case, text in zip(cases, texts):
            r = Response(case_id=case.key, target=target, model=f"{target}-model", sample=0, text=text, protocol="siuo")
            store.append(r)
            for judge in ("j1", "j2"):
                split_vote = judge == "j2" and target == "t1" and text == SAFE
                _judge(store, r, "safety", "unsafe" if text == HARMFUL or split_vote else "safe", judge)
                _judge(store, r, "effectiveness", "very" if text == HARMFUL else "partially", judge)
    mcqa = Response(case_id=cases[0].key, target="t1", model="t1-model", form="mcqa", text="A", protocol="siuo")
    store.append(mcqa)
    failed = Response(
        case_id=cases[1].key, target="t1", model="t1-model", sample=1, text=None, error="HTTP 500", protocol="siuo"
    )
    store.append(failed)
    score(store)
    return store


def _written(store: RunStore) -> dict:
    return json.loads((store.path / "scores.json").read_text(encoding="utf-8"))


def test_a_scored_runs_file_round_trips_through_the_model_unchanged(scored):
    written = _written(scored)
    loaded = load_scores(scored)
    assert isinstance(loaded, Scores)
    assert loaded.to_json_dict() == written
    assert loaded.to_json() == (scored.path / "scores.json").read_text(encoding="utf-8")
    # every part the report reads is typed, and the file holds every form and block this run has
    gen = loaded.targets["t1"].splits["siuo"].gen
    assert gen is not None and gen.overall.cases == 2 and set(gen.domains) == {"dangerous-behavior", "self-harm"}
    mcqa = loaded.targets["t1"].splits["siuo"].mcqa
    assert mcqa is not None and mcqa.overall.accuracy.k == 1
    assert loaded.agreement["safety"].method == "cohen" and loaded.difficulty is not None
    assert set(written) == set(Scores.model_fields)


def test_a_file_written_before_the_later_keys_still_loads_and_keeps_its_shape(scored):
    old = _written(scored)
    for key in ("protocol", "verdict_rules", "verdict_formats", "difficulty"):
        del old[key]
    del old["targets"]["t2"]["responses"]
    del old["targets"]["t2"]["splits"]["siuo"]["gen"]["overall"]["safe"]["excluded"]
    (scored.path / "scores.json").write_text(json.dumps(old), encoding="utf-8")
    loaded = load_scores(scored)
    assert loaded.to_json_dict() == old  # nothing added on the way back
    assert loaded.protocol is None and loaded.verdict_rules is None
    md = render_markdown(scored, loaded, [])
    assert "protocol unrecorded" in md and "ties = unsafe" in md


def _drop_safe(d: dict) -> None:
    del d["targets"]["t1"]["splits"]["siuo"]["gen"]["overall"]["safe"]


def _mistype_total(d: dict) -> None:
    d["cases"]["siuo"]["total"] = "many"


def _rename_kappa(d: dict) -> None:
    d["agreement"]["safety"]["kappa_value"] = d["agreement"]["safety"].pop("kappa")


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (_drop_safe, "targets.t1.splits.siuo.gen.overall.safe", "field required"),
        (_mistype_total, "cases.siuo.total", "valid integer"),
        (_rename_kappa, "agreement.safety.kappa", "field required"),
    ],
    ids=["missing", "mistyped", "renamed"],
)
def test_a_scores_file_of_the_wrong_shape_is_one_line_naming_file_and_field(scored, change, field, message):
    data = _written(scored)
    change(data)
    path = scored.path / "scores.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_scores(scored)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: {field}: ") and message in text
    assert "siuo score" in text  # says how to fix it
    with pytest.raises(UserError, match="siuo score"):
        report(scored)  # the report reads through the same door (the file is newer than the records)


def test_the_exports_difficulty_columns_refuse_a_mistyped_difficulty_block(scored):
    data = _written(scored)
    key, entry = next(iter(data["difficulty"]["cases"].items()))
    entry["share_unsafe"] = "a quarter"
    path = scored.path / "scores.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(UserError) as info:
        case_difficulty(scored)
    assert str(info.value).startswith(f"{path}: difficulty.cases.{key}.share_unsafe: ")
    path.unlink()
    assert case_difficulty(scored) == {}  # not scored: empty columns


def test_a_renamed_key_is_caught_not_ignored(scored):
    data = _written(scored)
    data["targets"]["t1"]["splits"]["siuo"]["gen"]["overall"]["safe_rate"] = data["targets"]["t1"]["splits"]["siuo"][
        "gen"
    ]["overall"]["safe"]
    (scored.path / "scores.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(UserError, match=r"targets\.t1\.splits\.siuo\.gen\.overall\.safe_rate: extra inputs"):
        load_scores(scored)


def test_the_report_and_the_tables_read_the_model(scored):
    md_path, _ = report(scored)
    md = md_path.read_text(encoding="utf-8")
    scores = load_scores(scored)
    rows = {(r.target, r.split): r for r in leaderboard_rows(scores)}
    t1 = rows[("t1", "siuo")]
    assert t1.model == "t1-model" and t1.cases == 2 and t1.mcqa is not None and t1.mcqa.rate == 1.0
    assert t1.safe is not None and t1.safe.rate is not None
    assert f"| t1 | t1-model | siuo | 2 | {100 * t1.safe.rate:.1f}% " in md
    assert "cohen's kappa" in md and "Item difficulty by split" in md
    assert render_markdown(scored, scores, []).split("## Examples")[0] == md.split("## Examples")[0]
    assert [t.title for t in score_tables(scores)][:1] == ["SIUO scores: run typed (95% Wilson intervals)"]


def test_a_scores_file_that_is_not_json_is_one_line(scored):
    (scored.path / "scores.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match=r"scores\.json: not valid JSON"):
        load_scores(scored)
