"""`siuo run`: the whole pipeline offline (loopback server, tiny random-weight models), from an empty
run folder to a report; and a run killed with SIGKILL mid-way that, re-run, ends with the same
records as an uninterrupted run (no loss, no duplicates, no repeated model call)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from PIL import Image
from siuo_data import siuo_files
from typer.testing import CliRunner

from generator.cli import app
from generator.testing.pipeline_script import respond
from generator.testing.tiny_models import save_clip, save_sd_pipeline

RECORD_FILES = ("scenarios.jsonl", "renders.jsonl", "checks.jsonl", "cases.jsonl", "responses.jsonl", "judgments.jsonl")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline-models")
    return {"sd": save_sd_pipeline(root / "sd", "tiny"), "clip": save_clip(root / "clip.pt", "tiny")}


@pytest.fixture(scope="module")
def official_subset(tmp_path_factory) -> dict[str, Path]:
    """Eight official cases (the mini set's without ../shared), with placeholder images, to evaluate beside
    the generated split."""
    root = tmp_path_factory.mktemp("siuo")
    gen_file, mcqa_file = siuo_files()
    gen = json.loads(gen_file.read_text())[:8]
    mcqa = json.loads(mcqa_file.read_text())[:8]
    (root / "gen.json").write_text(json.dumps(gen))
    (root / "mcqa.json").write_text(json.dumps(mcqa))
    (root / "images").mkdir()
    for item in gen:
        Image.new("RGB", (16, 16), (90, 120, 150)).save(root / "images" / item["image"])
    return {"gen": root / "gen.json", "mcqa": root / "mcqa.json", "images": root / "images"}


def pipeline_config(path: Path, base_url: str, models: dict[str, Path], siuo: dict[str, Path], cache: Path) -> Path:
    common = {"base_url": base_url, "timeout_s": 10.0, "retry_base_delay_s": 0.01, "max_concurrency": 8}
    config = {
        "pipeline": {
            "run": "e2e",
            "domains": "self-harm,privacy-violation,morality",
            "harden_limit": 2,
            "mcqa": True,
            "controls": True,
            "siuo": {k: str(v) for k, v in siuo.items()},
        },
        "endpoints": {
            "scripted": {**common, "model": "scripted-vlm", "supports_images": True},
            "scripted-2": {**common, "model": "scripted-vlm-2", "supports_images": True},
            "moderation": {**common, "model": "fake-moderation", "kind": "moderation"},
        },
        "roles": {
            "proposer": "scripted",
            "judge": ["scripted", "scripted-2"],
            "targets": ["scripted"],
            "text_guard": "moderation",
            "image_guard": "moderation",
            "vlm_checker": "scripted",
            "text_checker": "scripted-2",
        },
        "cache": {"path": str(cache)},
        "propose": {"per_domain": 2, "embedder": "hashing", "harden_strategies": ["remove_giveaway_words"]},
        "render": {"model": str(models["sd"]), "candidates": 2, "steps": 2, "width": 32, "height": 32, "batch": 4},
        "check": {"clip_model": str(models["clip"]), "alignment_threshold": -1.0, "unsafe_concept_margin": 1.0},
        "bench": {"samples": 3},
    }
    path.write_text(tomli_w.dumps(config))
    return path


@pytest.mark.slow
def test_whole_pipeline_offline_from_empty_run_to_report(
    tmp_path, fake_openai, tiny_models, official_subset, monkeypatch
):
    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    fake_openai.on_chat(respond)
    cfg = pipeline_config(
        tmp_path / "siuo.toml", fake_openai.base_url, tiny_models, official_subset, tmp_path / "cache.sqlite"
    )
    result = CliRunner().invoke(app, ["run", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "outputs" / "e2e"
    scenarios = [json.loads(line) for line in open(run / "scenarios.jsonl")]
    assert len([s for s in scenarios if s["parent_id"] is None]) == 6  # 3 domains x 2
    assert len([s for s in scenarios if s["parent_id"]]) == 2  # harden_limit 2, one strategy
    assert len(list((run / "images").glob("*.png"))) == 16  # 8 scenarios x 2 candidates
    cases = [json.loads(line) for line in open(run / "cases.jsonl")]
    splits = {c["split"] for c in cases}
    assert {"siuo", "generated"} <= splits
    assert (run / "report.html").exists() and (run / "report.md").exists()
    scores = json.loads((run / "scores.json").read_text())
    assert set(scores["targets"]["scripted"]["splits"]) >= {"siuo", "generated"}
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["versions"]["torch"] and manifest["config"]["roles"]["judge"] == ["scripted", "scripted-2"]
    for stage in ("import", "propose", "harden", "render", "check", "accept", "answer", "judge", "score"):
        assert manifest["stages"][stage]["finished"], stage
    assert "report:" in result.output and "fell at each check" in result.output, result.output
    assert "model usage" in result.output
    usage = manifest["usage"]
    assert {"proposer", "judge:scripted", "judge:scripted-2", "targets:scripted"} <= set(usage)
    assert all(u["prompt_tokens"] > 0 for u in usage.values())

    # A second run repeats no model call and writes no new record.
    before = {name: (run / name).read_text() for name in RECORD_FILES}
    hits = fake_openai.hits
    result = CliRunner().invoke(app, ["run", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert fake_openai.hits == hits
    assert {name: (run / name).read_text() for name in RECORD_FILES} == before


def _records(run: Path) -> dict[str, list[dict]]:
    """Every record file as a sorted list of records, without the fields that say *when* it was written."""
    out = {}
    for name in RECORD_FILES:
        rows = []
        for line in open(run / name):
            row = json.loads(line)
            for volatile in ("created", "seconds"):
                row.pop(volatile, None)
            rows.append(json.dumps(row, sort_keys=True))
        out[name] = sorted(rows)
    return out


KILLABLE_STAGES = ["propose", "harden", "render", "check", "accept", "answer", "judge", "score"]


def _stage_started(manifest: Path, stage: str) -> bool:
    try:
        return bool(json.loads(manifest.read_text())["stages"][stage]["started"])
    except (FileNotFoundError, KeyError, ValueError):
        return False  # not there yet, or caught mid-replace


def _run_to_end(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd[2:])} exited {done.returncode}:\n{done.stderr[-3000:]}"


def _start_server(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "generator.testing.pipeline_script", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    return proc, proc.stdout.readline().strip()


@pytest.mark.slow
def test_run_killed_at_a_random_stage_resumes_to_the_same_records(tmp_path, tiny_models, official_subset):
    server, base_url = _start_server(tmp_path)
    try:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        siuo = [sys.executable, "-m", "generator.cli"]

        def config_for(name: str) -> Path:
            return pipeline_config(
                tmp_path / f"{name}.toml", base_url, tiny_models, official_subset, tmp_path / f"{name}-cache.sqlite"
            )

        # The reference: an uninterrupted run.
        ref_env = {**env, "SIUO_OUTPUTS": str(tmp_path / "ref")}
        _run_to_end(siuo + ["run", "--config", str(config_for("ref"))], ref_env)

        # The same run, SIGKILLed twice, each time just after a randomly chosen stage has started
        # (watched through run.json), then run to the end.
        kill_env = {**env, "SIUO_OUTPUTS": str(tmp_path / "killed")}
        cfg = config_for("killed")
        manifest = tmp_path / "killed" / "e2e" / "run.json"
        rng = random.Random()
        forced = os.environ.get("SIUO_TEST_KILL_STAGES")  # e.g. "check,judge": reproduce a failing draw
        kill_stages = forced.split(",") if forced else sorted(rng.sample(KILLABLE_STAGES, 2), key=KILLABLE_STAGES.index)
        delays = []
        for stage in kill_stages:
            proc = subprocess.Popen(
                siuo + ["run", "--config", str(cfg)], env=kill_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + 300
            while not _stage_started(manifest, stage):
                assert proc.poll() is None, f"the run ended before stage {stage} started"
                assert time.monotonic() < deadline, f"stage {stage} never started"
                time.sleep(0.02)
            delay = rng.uniform(0.0, 0.5)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            delays.append(f"{stage}+{delay:.2f}s")
        _run_to_end(siuo + ["run", "--config", str(cfg)], kill_env)

        ref, resumed = _records(tmp_path / "ref" / "e2e"), _records(tmp_path / "killed" / "e2e")
        for name in RECORD_FILES:
            assert resumed[name] == ref[name], f"{name} differs after kills at {delays}"
        assert (
            json.loads((tmp_path / "killed" / "e2e" / "scores.json").read_text())["targets"]
            == json.loads((tmp_path / "ref" / "e2e" / "scores.json").read_text())["targets"]
        )
    finally:
        server.kill()
        server.wait()
