"""One interface for every check: a unit knows what it looks at and how to turn a model's answer into a
`CheckResult`; the stage driver (`generator.checks.stage`) decides what to run, in which order, and writes.

Two kinds of unit, because they run differently:

- `LocalImageCheck`: a model that runs in this process on image files (CLIP, the diffusers safety
  checker, open_nsfw). Its `score_images(paths, texts)` is a plain batch function (model loaded once per
  unit, one outcome or exception per path, nothing written), so an executor can call it on a worker and
  hand the outcomes back to the driver, which calls `record` and writes.
- `RemoteCheck`: a model behind the model door (guards, text-only judge, VLM judge). `bind(hub)` picks
  its clients; `job(subject, candidate)` is one awaitable request that returns the record.

A subject is whatever is checked: a scenario of the run, or a derived calibration input.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from generator.records import CheckResult


class CheckNotRun(Exception):
    """The unit's model is not there at all (e.g. no CLIP weights): every result is written `not_run`."""


@dataclass(frozen=True)
class Subject:
    """What the checks look at: the texts of a case and its image candidates."""

    key: str
    """Written as `CheckResult.scenario_id`."""
    question: str
    image_description: str | None
    hazard: str
    images: dict[int, Path] = field(default_factory=dict)
    """Candidate -> image file (empty: no image)."""
    reference_answer: str | None = None
    options: tuple[str, ...] = ()
    """MCQA options (a scenario: its reference answer, then its distractors; a case: its options)."""
    image_prompt: str | None = None
    """What the image generator was asked to draw (None: a case without one)."""


@dataclass(frozen=True)
class Outcome:
    """What a local model said about one image: a score and the verdict at the unit's threshold."""

    score: float
    passed: bool
    detail: str


def error_text(text: str) -> str:
    return text[:500]


class Check:
    """One check. `name` is the record's `check` field; its family is the part before the dot."""

    name: ClassVar[str]
    on_image: ClassVar[bool] = True
    """Keyed by image candidate (and needs an image); False: reads the subject's texts only."""

    threshold: float | None = None
    model: str = ""

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    def base(self, subject: Subject, candidate: int | None) -> dict[str, Any]:
        return dict(
            scenario_id=subject.key, check=self.name, candidate=candidate if self.on_image else None, model=self.model
        )

    def not_run(self, subject: Subject, candidate: int | None, reason: str) -> CheckResult:
        return CheckResult(**self.base(subject, candidate), not_run=error_text(reason))


class LocalImageCheck(Check):
    """A model in this process over image files (see the module docstring)."""

    uses_text: ClassVar[bool] = False
    """Whether `score_images` needs one text per image (alignment: the image description)."""

    def load(self) -> None:
        """Load the model (once); raise `CheckNotRun` when it is not there at all."""

    def __getstate__(self) -> dict:
        """Pickled without what `load` made (private attributes): a Ray actor loads its own model."""
        return {k: (None if k.startswith("_") else v) for k, v in self.__dict__.items()}

    def score_images(self, paths: Sequence[Path], texts: Sequence[str] | None = None) -> list[Outcome | Exception]:
        raise NotImplementedError

    def record(self, subject: Subject, candidate: int, outcome: Outcome | Exception) -> CheckResult:
        base = dict(self.base(subject, candidate), threshold=self.threshold)
        if isinstance(outcome, Exception):
            return CheckResult(
                **base, error=error_text(f"cannot read image {subject.images.get(candidate)}: {outcome}")
            )
        return CheckResult(**base, score=round(outcome.score, 5), passed=outcome.passed, detail=outcome.detail)


Job = Callable[[], Awaitable[CheckResult]]


class RemoteCheck(Check):
    """A model behind the model door (see the module docstring)."""

    def bind(self, hub: Any) -> list[Any]:
        """Take the clients this check needs from the hub; returns them (their endpoints bound concurrency)."""
        raise NotImplementedError

    def job(self, subject: Subject, candidate: int | None) -> Job:
        raise NotImplementedError
