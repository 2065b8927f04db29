"""The wheel is the toolkit: built from the sources, installed (not editable) away from the checkout, it
carries its prompts, seeds, example configs and review pages, and `init`, `propose` and `review --serve`
work from an empty folder."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from generator.testing.fake_openai import last_user_text
from generator.testing.review_run import free_port

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("generator", "prompts", "seeds", "configs", "setup.py", "pyproject.toml", "MANIFEST.in", "README.md")
DATA = ("prompts", "seeds", "configs")
PACKAGE_DATA = ("generator/review/templates", "generator/review/static", "generator/interop/templates")


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def random_proposal(body: dict) -> str:
    """A valid proposal whose words are drawn from the prompt's hash: distinct prompts, unrelated texts."""
    rng = random.Random(hashlib.sha256(last_user_text(body).encode()).hexdigest())

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(5000)}" for _ in range(n))

    return json.dumps(
        {
            "image_prompt": words(20),
            "image_description": words(12),
            "question": words(10),
            "hazard": words(15),
            "reference_answer": words(20),
            "mcqa_distractors": [words(8), words(8), words(8)],
        }
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (so no stale build/ folder of the checkout leaks in)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "_data", "*.pyc"))
        elif path.exists():
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [built] = (tmp / "dist").glob("siuo_generator-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_carries_prompts_seeds_configs_and_review_pages(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in DATA:
        expected = {f"generator/_data/{p.relative_to(ROOT).as_posix()}" for p in files_under(ROOT / kind)}
        assert expected and expected <= names, sorted(expected - names)
    for folder in PACKAGE_DATA:
        expected = {p.relative_to(ROOT).as_posix() for p in files_under(ROOT / folder)}
        assert expected and expected <= names, sorted(expected - names)
    assert "generator/_data/prompts/propose.md" in names and "generator/review/static/review.css" in names


@pytest.mark.slow
def test_an_installed_wheel_inits_proposes_and_serves_reviews_from_an_empty_folder(wheel, tmp_path, fake_openai):
    import tomli_w

    site, work = tmp_path / "site", tmp_path / "empty"
    work.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    env.pop("SIUO_OUTPUTS", None)
    siuo = [str(site / "bin" / "siuo")]

    def run(*args: str, cmd: list[str] = siuo) -> subprocess.CompletedProcess:
        done = subprocess.run([*cmd, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    # The installed copy is the one that runs: its files, not the checkout's.
    where = run(
        "-c",
        "import generator, generator.prompts as p; print(generator.__file__); print(p.load_prompt('propose').path)",
        cmd=[sys.executable],
    ).stdout.split()
    assert all(Path(p).resolve().is_relative_to(site.resolve()) for p in where), where
    assert not Path(where[0]).resolve().is_relative_to(ROOT)

    run("init", "--template", "offline")
    assert (work / "siuo.toml").read_text() == (ROOT / "configs" / "offline.toml").read_text()

    config = tmp_path / "propose.toml"
    data = fake_openai.settings(cache=False).model_dump(mode="json", exclude_none=True)
    data["propose"]["embedder"] = "hashing"
    config.write_text(tomli_w.dumps(data))
    fake_openai.on_chat(random_proposal)
    run("propose", "--run", "w", "--domains", "religion,morality", "--per-domain", "1", "--config", str(config))
    scenarios = [json.loads(line) for line in (work / "outputs" / "w" / "scenarios.jsonl").read_text().splitlines()]
    assert {s["domain"] for s in scenarios} == {"religion", "morality"}
    propose_md = (ROOT / "prompts" / "propose.md").read_bytes()
    assert {s["provenance"]["prompt_file"] for s in scenarios} == {"prompts/propose.md"}, "no install path in records"
    assert {s["provenance"]["prompt_hash"] for s in scenarios} == {hashlib.sha256(propose_md).hexdigest()}

    run(
        "-c",
        "from pathlib import Path; from generator.testing.review_run import make_review_run; "
        "make_review_run(Path('outputs'), name='rev', cases=2)",
        cmd=[sys.executable],
    )
    port = free_port()
    server = subprocess.Popen(
        [*siuo, "review", "--run", "rev", "--serve", "--port", str(port)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base, page = f"http://127.0.0.1:{port}", None
        deadline = time.monotonic() + 120
        while page is None and time.monotonic() < deadline and server.poll() is None:
            try:
                page = httpx.get(f"{base}/", timeout=5)
            except httpx.TransportError:
                time.sleep(0.3)
        assert page is not None, (
            f"the review app never answered: {server.stdout.read() if server.poll() is not None else ''}"
        )
        assert page.status_code == 200 and "Question 0" in page.text and 'href="/static/review.css"' in page.text
        css = httpx.get(f"{base}/static/review.css", timeout=5)
        assert css.status_code == 200 and css.text == (ROOT / "generator/review/static/review.css").read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
