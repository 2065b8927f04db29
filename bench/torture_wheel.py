"""Torture probes for the wheel: installed away from the checkout, the toolkit still finds its own files.

`probes(t)` builds the wheel from a copy of the sources, installs it with `pip --target` under t.work and runs
the installed `siuo` from an empty folder (the checkout nowhere on the path).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("generator", "prompts", "seeds", "configs", "setup.py", "pyproject.toml", "MANIFEST.in", "README.md")


def _build_and_install(work: Path) -> tuple[Path, Path]:
    """(wheel, site folder) built from a clean copy of the sources."""
    src = work / "src"
    src.mkdir(parents=True)
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "_data", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(work / "dist"), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = (work / "dist").glob("*.whl")
    site = work / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return wheel, site


def probes(t) -> None:
    work = t.work / "wheel"
    try:
        wheel, site = _build_and_install(work)
    except subprocess.CalledProcessError as exc:
        t.rows.append(("wheel", "pip wheel + pip install --target", f"failed: {exc.stderr[-200:]!r}", False))
        return
    names = zipfile.ZipFile(wheel).namelist()
    prompts = [n for n in names if n.startswith("generator/_data/prompts/") and n.endswith(".md")]
    pages = [n for n in names if n.startswith("generator/review/templates/")]
    t.rows.append(
        (
            "wheel",
            "wheel file list",
            f"{len(prompts)} prompt .md, {len(pages)} review templates",
            bool(prompts) and bool(pages),
        )
    )

    empty = work / "empty"
    empty.mkdir()
    env = {**t.env, "PYTHONPATH": str(site)}
    siuo = str(site / "bin" / "siuo")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([siuo, *args], cwd=empty, env=env, capture_output=True, text=True, timeout=120)

    done = run("init", "--template", "openai")
    same = (empty / "siuo.toml").is_file() and (empty / "siuo.toml").read_text() == (
        ROOT / "configs/openai.toml"
    ).read_text()
    t.rows.append(
        (
            "wheel",
            "installed `siuo init --template openai` from an empty folder",
            f"exit {done.returncode}, config {'copied' if same else 'missing'}",
            done.returncode == 0 and same,
        )
    )

    done = run("init", "--template", "../../etc/passwd", "--out", "x.toml")
    lists = "known: local, offline, openai" in done.stdout + done.stderr
    t.rows.append(
        (
            "wheel",
            "installed `siuo init` with a path as template name",
            f"exit {done.returncode}, {'lists the packaged templates' if lists else 'no template list'}",
            done.returncode == 2 and lists and not (empty / "x.toml").exists(),
        )
    )

    where = subprocess.run(
        [sys.executable, "-c", "import generator.prompts as p; print(p.PROMPTS_DIR)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.strip()
    inside = bool(where) and Path(where).resolve().is_relative_to(site.resolve())
    t.rows.append(("wheel", "installed prompts folder", f"{os.path.relpath(where, work) if where else 'none'}", inside))
