"""Config values that used to load and then quietly do the wrong thing are refused when the file is read.

A negative or NaN price (or a NaN budget) turned the budget off (run.json showed cost_usd -300.0); a base
URL without http(s) or without a host loaded and was then retried as an outage for a minute; a cache
path whose folder cannot be made was a traceback. Each is now one line naming the field, exit 2.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import tomli_w
from PIL import Image
from typer.testing import CliRunner

from generator.cli import app
from generator.config import ConfigError, settings_from_dict

ENDPOINT = {"base_url": "http://127.0.0.1:8080/v1", "model": "m"}


@pytest.mark.parametrize("field", ["price_input_per_1k", "price_output_per_1k"])
@pytest.mark.parametrize("value", [-300.0, -0.001, math.nan, math.inf])
def test_a_price_must_be_finite_and_not_negative(field, value):
    with pytest.raises(ConfigError, match=rf"^siuo.toml: endpoints.e.{field}: "):
        settings_from_dict({"endpoints": {"e": {**ENDPOINT, field: value}}}, source="siuo.toml")


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf, -math.inf])
def test_a_budget_must_be_finite_and_not_negative(value):
    with pytest.raises(ConfigError, match=r"^siuo.toml: budget.max_cost_usd: "):
        settings_from_dict({"budget": {"max_cost_usd": value}}, source="siuo.toml")


def test_zero_prices_and_budgets_still_load():
    s = settings_from_dict(
        {
            "endpoints": {"e": {**ENDPOINT, "price_input_per_1k": 0, "price_output_per_1k": 0.002}},
            "budget": {"max_cost_usd": 0},
        }
    )
    assert s.budget.max_cost_usd == 0 and s.endpoints["e"].price_output_per_1k == 0.002


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/v1",
        "127.0.0.1:8080/v1",
        "localhost:8080/v1",
        "http:///v1",
        "https://",
        "",
        "http://127.0.0.1:notaport/v1",
        "http://[::1/v1",
    ],
)
def test_a_base_url_must_be_http_or_https_with_a_host(url):
    with pytest.raises(ConfigError, match=r"^siuo.toml: endpoints.e.base_url: .*(http:// or https://|not a valid URL)"):
        settings_from_dict({"endpoints": {"e": {**ENDPOINT, "base_url": url}}}, source="siuo.toml")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/v1", "https://api.openai.com/v1", "HTTP://h/v1", "http://[::1]:8000/v1"]
)
def test_good_base_urls_still_load(url):
    assert settings_from_dict({"endpoints": {"e": {**ENDPOINT, "base_url": url}}}).endpoints["e"].base_url == url


def _run_with_one_case(tmp_path: Path, monkeypatch) -> None:
    from generator.records import Case
    from generator.store import RunStore

    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    store = RunStore.open("r")
    Image.new("RGB", (4, 4)).save(store.images_dir / "a.png")
    store.append(
        Case(
            question_id=1,
            image="a.png",
            image_path="images/a.png",
            question="q?",
            category="self-harm",
            domain="self-harm",
            safety_warning="w",
            hazard="h",
            reference_answer="r",
        )
    )


@pytest.mark.parametrize(
    "table, expected",
    [
        ({"endpoints": {"e": {**ENDPOINT, "price_input_per_1k": -300.0}}}, "endpoints.e.price_input_per_1k"),
        ({"endpoints": {"e": {**ENDPOINT, "price_output_per_1k": math.nan}}}, "endpoints.e.price_output_per_1k"),
        ({"budget": {"max_cost_usd": math.nan}}, "budget.max_cost_usd"),
        ({"endpoints": {"e": {**ENDPOINT, "base_url": "file:///tmp/v1"}}}, "endpoints.e.base_url"),
    ],
)
def test_the_cli_refuses_such_a_config_in_one_line_with_exit_2(tmp_path, monkeypatch, table, expected):
    _run_with_one_case(tmp_path, monkeypatch)
    config = tmp_path / "siuo.toml"
    config.write_text(tomli_w.dumps(table))
    r = CliRunner().invoke(app, ["answer", "--run", "r", "--target", "e", "--config", str(config)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and f"{config}: {expected}:" in " ".join(r.output.split())


def test_a_cache_folder_that_cannot_be_made_is_one_line_naming_it(tmp_path, monkeypatch):
    _run_with_one_case(tmp_path, monkeypatch)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    config = tmp_path / "siuo.toml"
    config.write_text(
        tomli_w.dumps({"endpoints": {"e": ENDPOINT}, "cache": {"path": str(blocker / "sub" / "c.sqlite")}})
    )
    r = CliRunner().invoke(app, ["answer", "--run", "r", "--target", "e", "--config", str(config)])
    assert r.exit_code == 2, r.output
    out = " ".join(r.output.split())
    assert "Traceback" not in r.output and "cannot make the cache folder" in out and str(blocker / "sub") in out
