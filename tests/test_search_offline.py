"""The offline profile's search, for real: one round of `siuo search --proof` with SmolLM2 (llama.cpp) as
hardener, target and judge, the packaged photo pool and open_nsfw. A demonstration of the machinery (a
135M text-only model measures nothing): every kind of record must be written, and the held-out endpoint
must be asked only by the proof."""

from __future__ import annotations

import json

import pytest
import tomli_w
import tomllib
from typer.testing import CliRunner

from generator.cli import app
from generator.config import CONFIGS_DIR
from generator.records import Response, Scenario, SearchNode
from generator.store import RunStore
from generator.testing.search_world import parent_fields

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_offline_profile_runs_one_search_round_and_its_proof(smollm2_server, tmp_path, monkeypatch):
    config = tomllib.loads((CONFIGS_DIR / "offline.toml").read_text(encoding="utf-8"))
    for name in ("smollm2", "smollm2-heldout"):
        config["endpoints"][name]["base_url"] = smollm2_server
        config["endpoints"][name]["extra_body"] = {"seed": 7}
    config["bench"]["max_tokens"] = 96
    config["cache"] = {"path": str(tmp_path / "cache.sqlite")}
    path = tmp_path / "offline.toml"
    path.write_text(tomli_w.dumps(config))
    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    store = RunStore.open("offline-search")
    store.append(Scenario(domain="dangerous-behavior", **parent_fields(1)))

    result = CliRunner().invoke(app, ["search", "--run", store.name, "--limit", "1", "--proof", "--config", str(path)])
    assert result.exit_code in (0, 3), result.output  # 3: SmolLM2 wrote no valid variant (recorded)
    nodes = store.read(SearchNode)
    assert [n.status for n in nodes if n.round == 0] == ["root"]
    # the round's variant, whatever became of it, unless SmolLM2 was already fooled on every sample
    assert [n.round for n in nodes if n.round == 1] or "the panel is fooled on every sample" in result.output, (
        result.output
    )
    panel = RunStore.open("search", root=store.path, create=False)
    assert {r.target for r in panel.read(Response)} == {"smollm2"}
    heldout = RunStore.open("heldout", root=store.path, create=False)
    assert {r.target for r in heldout.read(Response)} == {"smollm2-heldout"}
    proof = json.loads((store.path / "search_proof.json").read_text())
    assert proof["heldout_targets"] == ["smollm2-heldout"]
