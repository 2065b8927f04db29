"""The check units alone, as an executor would call them: a local unit scores a batch of image files with
its model loaded once and writes nothing; the driver turns outcomes into records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generator.checks import (
    AlignmentCheck,
    ConceptScreenCheck,
    ImageGuardCheck,
    LocalImageCheck,
    OpenNSFWCheck,
    PairHazardCheck,
    RemoteCheck,
    Subject,
    TextGuardCheck,
    TextOnlyJudgeCheck,
    build_units,
)
from generator.checks.stage import planned_checks
from generator.checks.wellformed import WellFormedCheck
from generator.testing.tiny_models import save_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return save_clip(tmp_path_factory.mktemp("unit-models") / "tiny-clip.pt", "tiny")


def test_units_follow_the_plan_in_order(fake_openai):
    settings = fake_openai.settings()
    units = build_units(settings, planned_checks(settings))
    assert [u.name for u in units] == [
        "well_formed",
        "alignment",
        "image_benign.clip",
        "image_benign.guard",
        "text_benign",
        "no_leakage.question",
        "no_leakage.description",
        "pair_hazard",
    ]
    kinds = [type(u) for u in units]
    assert kinds == [
        WellFormedCheck,
        AlignmentCheck,
        ConceptScreenCheck,
        ImageGuardCheck,
        TextGuardCheck,
        TextOnlyJudgeCheck,
        TextGuardCheck,
        PairHazardCheck,
    ]
    assert all(isinstance(u, LocalImageCheck) for u in units[1:3])
    assert all(isinstance(u, RemoteCheck) for u in units[3:])
    assert units[1].clip is units[2].clip  # one CLIP model for both CLIP checks
    settings.roles.image_guard = "opennsfw"
    settings.roles.text_guard = None
    units = {u.name: u for u in build_units(settings, planned_checks(settings))}
    assert isinstance(units["image_benign.guard"], OpenNSFWCheck) and isinstance(
        units["no_leakage.description"], TextOnlyJudgeCheck
    )


def test_local_units_score_batches_of_paths_and_records_come_from_outcomes(tmp_path, fake_openai, tiny_clip):
    settings = fake_openai.settings()
    settings.check = settings.check.model_copy(update={"clip_model": str(tiny_clip), "alignment_threshold": -1.0})
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    paths[1].write_bytes(b"not an image")
    units = {u.name: u for u in build_units(settings, planned_checks(settings))}
    align, screen = units["alignment"], units["image_benign.clip"]
    outcomes = align.score_images(paths, ["a photo"] * 3)
    assert isinstance(outcomes[1], Exception) and all(o.passed for o in (outcomes[0], outcomes[2]))
    assert [type(o) for o in screen.score_images(paths)] == [type(o) for o in outcomes]
    nsfw = OpenNSFWCheck(0.5)
    scored = nsfw.score_images(paths)
    assert isinstance(scored[1], Exception) and 0.0 <= scored[0].score <= 1.0

    subject = Subject(
        key="s1", question="q", image_description="a photo", hazard="h", images={0: paths[0], 1: paths[1]}
    )
    good, bad = align.record(subject, 0, outcomes[0]), align.record(subject, 1, outcomes[1])
    assert good.passed is True and good.candidate == 0 and good.threshold == -1.0 and good.model == str(tiny_clip)
    assert bad.passed is None and "cannot read image" in bad.error
    assert nsfw.record(subject, 0, scored[0]).threshold is None  # a guard records no threshold, as before
