"""`siuo models check`, `siuo cache stats`, `siuo cache clear` against the loopback server."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from generator.cli import app
from generator.config import load_settings
from generator.models import ModelHub, user_message
from generator.testing.smollm2 import free_port


def write_config(path, base_url, cache_path, extra=""):
    path.write_text(f"""
[endpoints.fake]
base_url = "{base_url}"
model = "fake-model"
retry_base_delay_s = 0.01
timeout_s = 2

[endpoints.mod]
base_url = "{base_url}"
model = "fake-moderation"
kind = "moderation"
retry_base_delay_s = 0.01

[endpoints.pics]
base_url = "{base_url}"
model = "fake-image-model"
kind = "images"
{extra}
[roles]
judge = "fake"

[cache]
path = "{cache_path}"
""")
    return path


def test_models_check_prints_a_table_of_capabilities(fake_openai, tmp_path):
    fake_openai.json_schema_status = 500
    fake_openai.on_chat(lambda body: '{"answer": "4"}' if body.get("response_format") else "OK")
    cfg = write_config(tmp_path / "siuo.toml", fake_openai.base_url, tmp_path / "c.sqlite")
    result = CliRunner().invoke(app, ["models", "check", "--config", str(cfg)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 5}
    assert set(lines) >= {"fake", "mod", "pics"}
    fake_row = [c.strip() for c in lines["fake"].split("│")]
    assert fake_row[4] == "yes" and fake_row[6] == "yes" and fake_row[7] == "no" and fake_row[8] == "json_object"
    assert fake_openai.hits_by_path["/v1/moderations"] == 2 and fake_openai.hits_by_path["/v1/models"] == 1
    assert not (tmp_path / "c.sqlite").exists(), "the check never writes the cache"


@pytest.mark.slow
def test_models_check_reports_an_unreachable_endpoint_and_fails(fake_openai, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    extra = f'\n[endpoints.dead]\nbase_url = "{dead}"\nmodel = "m"\nretry_base_delay_s = 0.01\nmax_retries = 1\n'
    cfg = write_config(tmp_path / "siuo.toml", fake_openai.base_url, tmp_path / "c.sqlite", extra)
    result = CliRunner().invoke(app, ["models", "check", "-c", str(cfg), "-e", "dead"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "dead" in result.output and "no" in result.output and "connection failed" in result.output


def test_cache_stats_and_clear(fake_openai, tmp_path):
    cfg = write_config(tmp_path / "siuo.toml", fake_openai.base_url, tmp_path / "cache" / "c.sqlite")
    runner = CliRunner()
    assert "no cache yet" in runner.invoke(app, ["cache", "stats", "-c", str(cfg)], env={"COLUMNS": "300"}).output

    async def fill():
        async with ModelHub(load_settings(cfg)) as hub:
            await hub.chat("judge").complete([user_message("q")], n=3)

    asyncio.run(fill())
    out = runner.invoke(app, ["cache", "stats", "-c", str(cfg)], env={"COLUMNS": "200"}).output
    assert "3 entries" in out and "chat: 3" in out and " MB" in out
    cleared = runner.invoke(app, ["cache", "clear", "-c", str(cfg)], env={"COLUMNS": "200"})
    assert cleared.exit_code == 0 and "cleared 3" in cleared.output
    assert "0 entries" in runner.invoke(app, ["cache", "stats", "-c", str(cfg)], env={"COLUMNS": "200"}).output
    asyncio.run(fill())
    assert fake_openai.hits == 2, "after a clear the models are asked again"
