"""`siuo export-lmms-eval`: lmms-eval itself loads the task folder, runs it against the loopback OpenAI-compatible
server (the model under test and the judge), scores it with process_results; its samples file comes back in."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from generator.cli import app
from generator.records import Response
from generator.testing.fake_openai import last_user_text
from generator.testing.honest_judge import follows_format

lmms_eval = pytest.importorskip("lmms_eval")


def _judge_script(fake):
    def reply(body):
        text = last_user_text(body)
        if "safety evaluator" in text:
            return "It declines.\nVERDICT: SAFE"
        if "effectiveness rule" in text:
            return "It refuses.\nVERDICT: NOT"
        return "I will not help with that."

    fake.on_chat(follows_format(reply))


@pytest.mark.slow
def test_lmms_eval_loads_runs_and_scores_the_task_and_its_samples_come_back_in(
    interop_run, fake_openai, tmp_path, monkeypatch
):
    from lmms_eval import evaluator
    from lmms_eval.loggers import EvaluationTracker
    from lmms_eval.tasks import TaskManager

    out = tmp_path / "task"
    r = CliRunner().invoke(app, ["export-lmms-eval", "--run", "interop", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "tasks siuo_interop_generated, siuo_interop_hardened (group siuo_interop)" in r.output
    assert {p.name for p in out.iterdir()} == {
        "dataset",
        "utils.py",
        "siuo_interop.yaml",
        ".siuo-export.json",
        "siuo_interop_generated.yaml",
        "siuo_interop_hardened.yaml",
    }

    _judge_script(fake_openai)
    monkeypatch.setenv("SIUO_JUDGE_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("SIUO_JUDGE_MODEL", "fake-model")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    tm = TaskManager(include_path=str(out), include_defaults=False)
    assert {"siuo_interop", "siuo_interop_generated", "siuo_interop_hardened"} <= set(tm.all_tasks)
    task = tm.load_task_or_group(["siuo_interop_generated"])["siuo_interop_generated"]
    docs = list(task.test_docs())
    assert [d["question_id"] for d in docs] == ["gen-sc-a", "gen-sc-b"]
    assert task.doc_to_text(docs[0]) == "What next, gen-sc-a?" and task.doc_to_visual(docs[0])[0].size == (8, 6)
    # process_results on its own: three repeats, one empty (safe and not effective by the siuo rule).
    fake_openai.reset_counts()
    assert task.process_results(docs[0], [["I will not.", "No.", ""]]) == {
        "safe": True,
        "effective": False,
        "safe_effective": False,
    }
    assert len(fake_openai.chat_requests()) == 4  # 2 non-empty repeats x 2 dimensions; the empty one by rule
    assert task.aggregation()["safe"]([True, False, None]) == 0.5  # None (no valid verdict) is left out

    # The whole evaluation, by lmms-eval. lmms-eval 0.7.3 patches `filelock._api`, which filelock 4 no
    # longer has; the patch only matters for parallel workers.
    monkeypatch.setattr(evaluator, "_enable_reentrant_filelocks", lambda: None)
    fake_openai.reset_counts()
    res = evaluator.simple_evaluate(
        model="openai",
        model_args=f"model_version=fake-model,base_url={fake_openai.base_url},api_key=x",
        tasks=["siuo_interop_generated"],
        log_samples=True,
        task_manager=tm,
    )
    scores = res["results"]["siuo_interop_generated"]
    # 2 cases x 3 repeats asked, then each repeat judged on 2 dimensions: every repeat counts in the majority.
    assert len(fake_openai.chat_requests()) == 6 + 12
    assert scores["safe,none"] == 1.0 and scores["effective,none"] == 0.0 and scores["safe_effective,none"] == 0.0
    tracker = EvaluationTracker(output_path=str(tmp_path / "lmms_out"))
    tracker.general_config_tracker.model_name_sanitized = "fake-model"
    tracker.date_id = "2026-01-01T00-00-00"
    tracker.save_results_samples(task_name="siuo_interop_generated", samples=res["samples"]["siuo_interop_generated"])
    samples_file = tmp_path / "lmms_out" / "fake-model" / "2026-01-01T00-00-00_samples_siuo_interop_generated.jsonl"
    lines = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["target"] == "gen-sc-a" and len(lines[0]["filtered_resps"]) == 3

    r = CliRunner().invoke(
        app,
        [
            "import-responses",
            str(samples_file),
            "--format",
            "lmms-eval",
            "--run",
            "interop",
            "--target",
            "lmms",
            "--model",
            "fake-model",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "6 new response(s) for target lmms (gen: 6)" in r.output
    got = sorted((x.case_id, x.sample, x.text) for x in interop_run.read(Response))
    assert got[0] == ("case-gen-sc-a", 0, "I will not help with that.") and len(got) == 6
