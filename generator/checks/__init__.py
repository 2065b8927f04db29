"""The check units, one per check (see `base` for the interface), and `build_units`, which makes the
units a config enables, in run order. The stage that runs them is `generator.checks.stage`."""

from __future__ import annotations

from generator.checks.base import Check, CheckNotRun, LocalImageCheck, Outcome, RemoteCheck, Subject
from generator.checks.clip import AlignmentCheck, ClipEmbedder, ConceptScreenCheck, read_concepts
from generator.checks.image import ImageGuardCheck, OpenNSFWCheck, SafetyCheckerCheck
from generator.checks.pair import HazardMatch, PairHazardCheck
from generator.checks.text import DESCRIPTION_KIND, QUESTION_KIND, HazardVerdict, TextGuardCheck, TextOnlyJudgeCheck
from generator.checks.wellformed import WellFormedCheck
from generator.config import ConfigError, Settings

__all__ = [
    "Check",
    "CheckNotRun",
    "LocalImageCheck",
    "Outcome",
    "RemoteCheck",
    "Subject",
    "AlignmentCheck",
    "ClipEmbedder",
    "ConceptScreenCheck",
    "read_concepts",
    "ImageGuardCheck",
    "OpenNSFWCheck",
    "SafetyCheckerCheck",
    "HazardMatch",
    "PairHazardCheck",
    "HazardVerdict",
    "TextGuardCheck",
    "TextOnlyJudgeCheck",
    "WellFormedCheck",
    "build_units",
    "text_checker_endpoint",
]


def text_checker_endpoint(settings: Settings) -> str | None:
    """The text-only judge: role `text_checker`, else the first judge."""
    return settings.roles.text_checker or (settings.roles.judge[0] if settings.roles.judge else None)


def _configured(value: str | None, setting: str) -> str:
    """A setting a planned check needs: the check stage plans or refuses a check without it before any unit is
    built, so this raises only if that rule is broken."""
    if value is None:
        raise ConfigError(f"{setting} is not set, so its check cannot run")
    return value


def build_units(settings: Settings, plan: dict[str, list[str]]) -> list[Check]:
    """One unit per planned check name, in the plan's order (`generator.checks.stage.planned_checks`)."""
    from generator.models.guards import OPENNSFW

    cs = settings.check

    def text_checker() -> str:
        return _configured(text_checker_endpoint(settings), "roles.text_checker (or roles.judge)")

    clip = ClipEmbedder(cs.clip_model, cs.batch)
    make = {
        "well_formed": WellFormedCheck,
        "alignment": lambda: AlignmentCheck(clip, cs.alignment_threshold),
        "image_benign.clip": lambda: ConceptScreenCheck(
            clip, cs.unsafe_concept_margin, cs.unsafe_concepts_file, cs.safe_concepts_file
        ),
        "image_benign.safety_checker": lambda: SafetyCheckerCheck(
            _configured(cs.safety_checker, "check.safety_checker"), cs.batch
        ),
        "image_benign.guard": lambda: (
            OpenNSFWCheck(cs.opennsfw_threshold)
            if settings.roles.image_guard == OPENNSFW
            else ImageGuardCheck(settings.bench.image_max_side or None)
        ),
        "text_benign": lambda: TextGuardCheck("text_benign", "question"),
        "no_leakage.question": lambda: TextOnlyJudgeCheck(
            "no_leakage.question", "question", QUESTION_KIND, text_checker()
        ),
        "no_leakage.description": lambda: (
            TextGuardCheck("no_leakage.description", "image_description")
            if settings.roles.text_guard
            else TextOnlyJudgeCheck("no_leakage.description", "image_description", DESCRIPTION_KIND, text_checker())
        ),
        "pair_hazard": lambda: PairHazardCheck(cs.hazard_match_threshold, settings),
    }
    return [make[name]() for names in plan.values() for name in names]
