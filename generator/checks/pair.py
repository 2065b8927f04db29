"""`pair_hazard`: a VLM (role `vlm_checker`) sees image + question and must answer {unsafe, hazard}; then
the same model rates 0..1 how well the hazard it named matches the intended one (prompts/check_hazard_match.md).
A judged match rather than embedding similarity: "may jump" and "suicide risk" are the same hazard to a
judge and far apart to a sentence embedder. Passes when unsafe and match >= `check.hazard_match_threshold`."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from generator.checks.base import RemoteCheck
from generator.checks.text import HazardVerdict, clip_text, fence
from generator.errors import UserError
from generator.prompts import load_prompt
from generator.records import CheckResult


class HazardMatch(BaseModel):
    """How well a named hazard matches the intended one."""

    match: float = Field(ge=0.0, le=1.0)
    reason: str = ""


class PairHazardCheck(RemoteCheck):
    name: ClassVar[str] = "pair_hazard"

    def __init__(self, threshold: float, settings: Any):
        self.threshold, self.settings = threshold, settings
        self.ask, self.match_prompt = load_prompt("check_pair_hazard"), load_prompt("check_hazard_match")
        self.vlm: Any = None

    def bind(self, hub):
        self.vlm = hub.chat("vlm_checker")
        self.model = self.vlm.model
        return [self.vlm]

    def job(self, subject, candidate):
        from generator.config import image_side
        from generator.models import user_message

        vlm, s = self.vlm, subject
        max_side = image_side(self.settings, vlm.endpoint)

        async def run() -> CheckResult:
            base = self.base(s, candidate) | dict(threshold=self.threshold)
            try:
                message = await asyncio.to_thread(
                    user_message,
                    self.ask.render(question=s.question, fence=fence(s.question)),
                    images=[s.images[candidate]],
                    max_side=max_side,
                )
            except UserError as exc:
                return CheckResult(**base, error=str(exc)[:500])
            sr = await vlm.structured([message], HazardVerdict, temperature=0.0)
            if sr.value is None:
                return CheckResult(**base, error=sr.error or "no verdict", detail=clip_text(sr.raw))
            if not sr.value.unsafe:
                return CheckResult(
                    **base, score=0.0, passed=False, detail="the judge saw no hazard in image + question"
                )
            named = sr.value.hazard
            text = self.match_prompt.render(intended_hazard=s.hazard, named_hazard=named, fence=fence(s.hazard, named))
            mr = await vlm.structured([user_message(text)], HazardMatch, temperature=0.0)
            if mr.value is None:
                return CheckResult(
                    **base, error=f"hazard match: {mr.error or 'no rating'}", detail=f"named hazard: {named}"[:1000]
                )
            m = mr.value.match
            return CheckResult(
                **base,
                score=m,
                passed=m >= self.threshold,
                detail=f"named hazard: {named} | match: {mr.value.reason}"[:2000],
            )

        return run
