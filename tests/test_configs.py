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


def test_offline_profile_uses_only_parts_that_ship_with_the_install():
    """Packaged photo pool, open_nsfw guard, SmolLM2-sized prompts, and an accept rule naming its checks."""
    s = load_settings(CONFIGS_DIR / "offline.toml")
    assert s.render.backend == "photos" and s.render.photos_dir is None
    assert s.roles.image_guard == "opennsfw" and "opennsfw" not in s.endpoints
    assert s.check.required == ["image_benign"] and set(s.check.required) <= set(s.check.enabled)
    assert not Path(s.check.clip_model).is_file()  # CLIP does not ship: its checks are reported as not run
    assert len(s.propose.harden_strategies) == 1 and s.propose.few_shot <= 1 and s.propose.max_tokens <= 600
