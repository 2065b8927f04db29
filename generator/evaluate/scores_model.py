"""The typed shape of `scores.json`: what `score` writes and `report`, the CLI tables and the exports read.

Why typed: the file is read by many places; a key renamed on the writing side should fail loudly where the
file is read, naming the field, not show up later as a KeyError or a silent '-' in a report. Every model
forbids unknown keys. Keys that older versions of `score` did not write yet (`protocol`, `verdict_rules`,
`verdict_formats`, `difficulty`, a rate's `excluded`, a target's `responses`) are optional, so their files
still load, and dumping with `exclude_unset` writes back exactly the keys that were there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from generator.store import StoreError


class _ScoresPart(BaseModel):
    """A part of scores.json: unknown keys are an error (a renamed key is caught where it is read)."""

    model_config = ConfigDict(extra="forbid")


class Rate(_ScoresPart):
    """A rate as `statistics.rate` writes it: k of n, its value and 95% Wilson interval (None when n is 0)."""

    k: int
    n: int
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    excluded: int = 0
    """Cases with no valid sample on this metric, left out of n."""


class _Group(_ScoresPart):
    cases: int


class GenGroup(_Group):
    """Open-answer (`gen`) figures of one group: a split overall, or one domain of it."""

    safe: Rate
    effective: Rate
    safe_effective: Rate
    samples: dict[str, int]
    """Responses by status (`valid`, or why they were left out of the majority)."""


class McqaGroup(_Group):
    accuracy: Rate
    samples: dict[str, int]


class ControlGroup(_Group):
    over_refusal: Rate
    samples: dict[str, int]


GroupT = TypeVar("GroupT", GenGroup, McqaGroup, ControlGroup)


class FormScores(_ScoresPart, Generic[GroupT]):
    """One form of questions on one split: overall and per domain (domains in the seeds' order)."""

    overall: GroupT
    domains: dict[str, GroupT]


class SplitScores(_ScoresPart):
    """The forms a target answered on one split (keys in this order: control, gen, mcqa)."""

    control: FormScores[ControlGroup] | None = None
    gen: FormScores[GenGroup] | None = None
    mcqa: FormScores[McqaGroup] | None = None


class ResponseCounts(_ScoresPart):
    total: int
    failed: int


class TargetScores(_ScoresPart):
    model: str
    splits: dict[str, SplitScores]
    """Split -> forms, splits in `score.SPLIT_ORDER`."""
    responses: ResponseCounts | None = None


class RuleCounts(_ScoresPart):
    """Per dimension: judgments re-asked, untrusted verdicts counted against the model, judge ties."""

    reasked: int = 0
    untrusted: int = 0
    ties: int = 0


class VerdictRules(_ScoresPart):
    ties: str
    """`bench.ties` the run was scored with: `unsafe` or `unresolved`."""
    untrusted: str
    counts: dict[str, RuleCounts]


class SplitCases(_ScoresPart):
    total: int
    missing_image: int


class Agreement(_ScoresPart):
    judges: list[str]
    method: Literal["cohen", "fleiss"]
    kappa: float | None
    items: int
    percent_agreement: float | None


class Example(_ScoresPart):
    """A response the report shows (its text is fetched from responses.jsonl by `response_key`)."""

    kind: str
    target: str
    response_key: str
    case_id: str
    sample: int
    safety: str
    effectiveness: str


class CaseDifficulty(_ScoresPart):
    """One case across the scored targets: what the exports add as `difficulty` and `share_unsafe`."""

    split: str
    domain: str
    targets: int
    unsafe: int
    share_unsafe: float
    saturated: Literal["none_fooled", "all_fooled"] | None
    difficulty: float | None
    """Rasch difficulty; None for saturated cases (no finite estimate)."""
    ci_low: float | None
    ci_high: float | None


class TargetAbility(_ScoresPart):
    ability: float
    ci_low: float
    ci_high: float


class Difficulty(_ScoresPart):
    model: str
    cases: dict[str, CaseDifficulty]
    targets: dict[str, TargetAbility]
    saturated: int


class Scores(_ScoresPart):
    """The whole of scores.json (fields in the order the file lists them)."""

    run: str
    protocol: str | None = None
    created: str
    rules: dict[str, str]
    """Every scoring rule, in words (`score.RULES`)."""
    verdict_rules: VerdictRules | None = None
    cases: dict[str, SplitCases]
    targets: dict[str, TargetScores]
    judges: dict[str, dict[str, str]]
    """Dimension -> judge -> model."""
    verdict_formats: dict[str, dict[str, int]] | None = None
    agreement: dict[str, Agreement]
    verdict_counts: dict[str, dict[str, int]]
    """Dimension -> response-level verdict -> responses."""
    responses_of_unknown_cases: int
    examples: list[Example]
    difficulty: Difficulty | None = None

    def to_json_dict(self) -> dict:
        """What scores.json holds: the keys that were set (an old file's absent keys stay absent)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2, ensure_ascii=False)


def validation_message(path: Path, exc: ValidationError, within: tuple[str, ...] = ()) -> str:
    """One line naming the file and the first field at fault (and how many more there are); `within`: the
    keys above the part that was validated."""
    err = exc.errors()[0]
    where = ".".join(str(part) for part in (*within, *err["loc"])) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{path}: {where}: {err['msg'].lower()}{more} (run `siuo score` again)"


def read_scores(path: Path) -> Scores:
    """A scores.json file as the model; a file that is not JSON or does not fit it is a one-line StoreError (a UserError)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise StoreError(f"{path}: not valid JSON: {exc}") from None
    try:
        return Scores.model_validate(data)
    except ValidationError as exc:
        raise StoreError(validation_message(path, exc)) from None


def read_difficulty(path: Path) -> Difficulty | None:
    """Only the `difficulty` block of a scores.json (None when absent or the file is not JSON): the exports
    need nothing else, and a file cut down to that block is enough for them."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    block = data.get("difficulty") if isinstance(data, dict) else None
    if block is None:
        return None
    try:
        return Difficulty.model_validate(block)
    except ValidationError as exc:
        raise StoreError(validation_message(path, exc, within=("difficulty",))) from None
