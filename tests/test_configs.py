"""The example profiles load, and `siuo init` writes a starter config from one of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from generator.cli import app
from generator.config import CONFIGS_DIR, load_settings

PROFILES = sorted(p.stem for p in CONFIGS_DIR.glob("*.toml"))


def test_the_three_profiles_exist():
    assert PROFILES == ["local", "offline", "openai"]


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_loads_with_roles_on_known_endpoints(profile):
    settings = load_settings(CONFIGS_DIR / f"{profile}.toml")
    assert settings.roles.proposer in settings.endpoints
    assert settings.roles.targets and all(t in settings.endpoints for t in settings.roles.targets)
    assert all(ep.api_key_env in (None, "OPENAI_API_KEY") for ep in settings.endpoints.values())


def test_init_writes_a_loadable_config_and_refuses_to_overwrite(tmp_path: Path):
    out = tmp_path / "siuo.toml"
    runner = CliRunner()
    r = runner.invoke(app, ["init", "--template", "local", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert load_settings(out).roles.targets == ["llava-ollama", "qwen-vl"]
    r = runner.invoke(app, ["init", "--template", "local", "--out", str(out)])
    assert r.exit_code == 2 and "exists already" in r.output
    r = runner.invoke(app, ["init", "--template", "nope", "--out", str(tmp_path / "x.toml")])
    assert r.exit_code == 2 and "no config template 'nope'" in r.output


@pytest.mark.parametrize(
    "endpoint, field",
    [
        ({"base_url": "http://user:sk-live-abcdef123456@127.0.0.1:8080/v1"}, "base_url: holds credentials"),
        ({"base_url": "http://127.0.0.1:8080/v1?api_key=abcdef123456"}, "base_url: holds a key in its query string"),
        ({"extra_body": {"api_key": "abcdef123456"}}, "extra_body.api_key: looks like a secret"),
        (
            {"extra_body": {"auth": {"access_token": "abcdef123456"}}},
            "extra_body.auth.access_token: looks like a secret",
        ),
    ],
)
def test_keys_in_base_url_or_extra_body_are_refused(endpoint, field):
    """The config is copied into run.json: a key anywhere in it would land there."""
    from generator.config import ConfigError, settings_from_dict

    ep = {"base_url": "http://127.0.0.1:8080/v1", "model": "m", **endpoint}
    with pytest.raises(ConfigError, match=f"endpoints.e.{field}"):
        settings_from_dict({"endpoints": {"e": ep}}, source="siuo.toml")


def test_vendor_options_that_are_not_secrets_are_kept():
    from generator.config import settings_from_dict

    s = settings_from_dict(
        {"endpoints": {"e": {"base_url": "http://h/v1", "model": "m", "extra_body": {"max_tokens": 5, "top_k": 3}}}}
    )
    assert s.endpoints["e"].extra_body == {"max_tokens": 5, "top_k": 3}


@pytest.mark.parametrize(
    "content, message",
    [
        (b"[budget]\nmax_cost_usd = 1\n# caf\xe9\n", "not UTF-8 text"),
        (b"a = " + b"[" * 200_000, "not valid TOML"),
    ],
)
def test_unreadable_config_is_one_clear_line_and_exit_2(tmp_path, monkeypatch, content, message):
    from generator.store import RunStore

    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    RunStore.open("r")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(content)
    for path in (bad, tmp_path):  # a config that is not UTF-8 (or too deep); a folder given as the config
        r = CliRunner().invoke(app, ["answer", "--config", str(path), "--run", "r"])
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output
        assert (message if path == bad else "is a folder") in r.output


def test_offline_profile_uses_only_parts_that_ship_with_the_install():
    """Packaged photo pool, open_nsfw guard, SmolLM2-sized prompts, and an accept rule naming its checks."""
    s = load_settings(CONFIGS_DIR / "offline.toml")
    assert s.render.backend == "photos" and s.render.photos_dir is None
    assert s.roles.image_guard == "opennsfw" and "opennsfw" not in s.endpoints
    assert s.check.required == ["well_formed", "image_benign"] and set(s.check.required) <= set(s.check.enabled)
    assert s.endpoints["smollm2"].structured_verdicts  # SmolLM2 judges under llama.cpp's grammar
    assert not Path(s.check.clip_model).is_file()  # CLIP does not ship: its checks are reported as not run
    assert len(s.propose.harden_strategies) == 1 and s.propose.few_shot <= 1 and s.propose.max_tokens <= 600
