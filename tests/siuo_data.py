"""Where the tests find SIUO-format question files: the official ones beside the checkout, or the
project's own mini set (tests/data/) when a fresh clone has no `../shared`.

Why: the official files are not the project's to ship. A test that only needs SIUO-format input runs on
the mini set when they are absent; one that checks the official set itself (167 cases, its domain counts)
or needs its size skips with a reason naming the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SIUO_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "siuo"
"""The official files' folder: `../shared/siuo` beside the checkout."""
OFFICIAL_GEN, OFFICIAL_MCQA = SIUO_DIR / "siuo_gen.json", SIUO_DIR / "siuo_mcqa.json"
MINI_DIR = Path(__file__).resolve().parent / "data"
MINI_GEN, MINI_MCQA = MINI_DIR / "siuo_mini_gen.json", MINI_DIR / "siuo_mini_mcqa.json"


def have_official() -> bool:
    return OFFICIAL_GEN.is_file() and OFFICIAL_MCQA.is_file()


NO_OFFICIAL = (
    f"needs the official SIUO files (siuo_gen.json, siuo_mcqa.json) in {SIUO_DIR}, which a fresh clone does not have"
)

needs_official = pytest.mark.skipif(not have_official(), reason=NO_OFFICIAL)
"""Mark for a test that checks the official set itself or needs its size."""


def siuo_files() -> tuple[Path, Path]:
    """(gen, mcqa): the official files when present, else the mini set written for the tests."""
    return (OFFICIAL_GEN, OFFICIAL_MCQA) if have_official() else (MINI_GEN, MINI_MCQA)


def siuo_items() -> list[dict]:
    """The gen items of `siuo_files()`."""
    return json.loads(siuo_files()[0].read_text(encoding="utf-8"))
