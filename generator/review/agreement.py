"""Agreement between reviewers: Cohen's kappa for two, Fleiss' kappa for any number (the same functions
`siuo score` uses for judges, in generator/evaluate/score.py).

Why kappa and not percent agreement: when nearly every case is accepted, two reviewers agree most of the
time by chance alone; kappa counts only the agreement beyond chance (1: perfect, 0: chance, < 0: worse).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations

from generator.statistics import cohen_kappa, fleiss_kappa


@dataclass
class Agreement:
    """What the summary page shows about several reviewers' votes."""

    reviewers: list[str]
    multi_rated: int
    """Cases with votes from two or more reviewers."""
    pairwise: list[tuple[str, str, int, float | None]] = field(default_factory=list)
    """(reviewer, reviewer, cases both voted on, Cohen's kappa)."""
    fleiss: float | None = None
    disagreements: list[str] = field(default_factory=list)
    """Case keys whose votes differ."""

    @property
    def cohen(self) -> float | None:
        """Cohen's kappa when exactly two reviewers voted on common cases."""
        return self.pairwise[0][3] if len(self.reviewers) == 2 and self.pairwise else None


def agreement(votes: Mapping[str, Mapping[str, str]]) -> Agreement:
    """`votes`: case key -> reviewer -> label (accept / reject)."""
    reviewers = sorted({who for by in votes.values() for who in by})
    multi = {case: by for case, by in votes.items() if len(by) >= 2}
    result = Agreement(reviewers=reviewers, multi_rated=len(multi))
    for x, y in combinations(reviewers, 2):
        common = [by for by in multi.values() if x in by and y in by]
        if common:
            result.pairwise.append((x, y, len(common), cohen_kappa([(by[x], by[y]) for by in common])))
    result.fleiss = fleiss_kappa([list(by.values()) for by in multi.values()])
    result.disagreements = [case for case, by in multi.items() if len(set(by.values())) > 1]
    return result
