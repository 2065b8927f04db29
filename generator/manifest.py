"""What goes into run.json besides the stages' own entries: versions, the redacted config, model ids.

Why: a benchmark number is only worth something if one can say what made it. Every stage adds its
models, prompt hashes and seeds; this module adds the environment once per invocation.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

from generator import __version__
from generator.config import Settings, redacted
from generator.store import RunStore

KEY_PACKAGES = (
    "openai",
    "torch",
    "diffusers",
    "transformers",
    "clip-anytorch",
    "pillow",
    "pydantic",
    "sentence-transformers",
    "typer",
    "rich",
    "numpy",
    "matplotlib",
)


def environment_versions() -> dict[str, str]:
    versions = {"siuo-generator": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def record_run_context(store: RunStore, settings: Settings) -> None:
    """Versions, the config with no secret in it, and which endpoint plays which role."""
    with store.update_manifest() as m:
        m.versions = environment_versions()
        m.config = redacted(settings)
        for role in (
            "proposer",
            "judge",
            "targets",
            "text_guard",
            "image_guard",
            "vlm_checker",
            "text_checker",
            "images",
        ):
            names = getattr(settings.roles, role)
            for name in names if isinstance(names, list) else [names]:
                if name and name in settings.endpoints:
                    m.models[f"{role}:{name}"] = settings.endpoints[name].model
