"""The offline profile end to end, for real: `siuo run --config configs/offline.toml` with the SmolLM2 server
(llama.cpp), the packaged photo pool and the open_nsfw guard; only the server's address, the size and a
sampling seed are changed. Every stage must write records and the report must name the checks that did not
run (CLIP ships no weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w
import tomllib
from typer.testing import CliRunner

from generator.cli import app
from generator.config import CONFIGS_DIR

pytestmark = pytest.mark.integration


def test_offline_profile_runs_every_stage_to_a_report(smollm2_server, tmp_path, monkeypatch):
    config = tomllib.loads((CONFIGS_DIR / "offline.toml").read_text(encoding="utf-8"))
    config["endpoints"]["smollm2"]["base_url"] = smollm2_server
    config["endpoints"]["smollm2"]["extra_body"] = {"seed": 7}  # llama.cpp samples reproducibly
    config["pipeline"].update(domains="privacy-violation", harden_limit=1)
    config["propose"]["per_domain"] = 2
    config["bench"]["max_tokens"] = 96  # the answers and the judge replies (protocol strict, one answer per case)
    config["cache"] = {"path": str(tmp_path / "cache.sqlite")}
    path = tmp_path / "offline.toml"
    path.write_text(tomli_w.dumps(config))
    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))

    result = CliRunner().invoke(app, ["run", "--config", str(path)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "outputs" / config["pipeline"]["run"]
    counts = {
        name: len((run / name).read_text().splitlines()) if (run / name).exists() else 0
        for name in (
            "scenarios.jsonl",
            "renders.jsonl",
            "checks.jsonl",
            "cases.jsonl",
            "responses.jsonl",
            "judgments.jsonl",
        )
    }
    assert all(counts.values()), counts
    renders = [json.loads(line) for line in (run / "renders.jsonl").read_text().splitlines()]
    assert all(r["source"] and r["licence"] for r in renders)  # packaged photos carry their provenance
    # ...and every picked photo lives inside the run (the review app serves nothing from site-packages)
    assert all(not Path(r["path"]).is_absolute() and (run / r["path"]).is_file() for r in renders)
    assert all((run / r["path"]).resolve().is_relative_to(run.resolve()) for r in renders)
    checks = [json.loads(line) for line in (run / "checks.jsonl").read_text().splitlines()]
    assert any(c["check"] == "image_benign.guard" and c["passed"] is True for c in checks)  # open_nsfw really ran
    report = (run / "report.html").read_text()
    assert "alignment did NOT RUN" in report and "demonstration of the pipeline" in report
    assert json.loads((run / "filter_report.json").read_text())["not_run"]
