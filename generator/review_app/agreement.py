"""Agreement between reviewers: Cohen's kappa for two, Fleiss' kappa for any number.

Why kappa and not percent agreement: when nearly every case is accepted, two reviewers agree most of the
time by chance alone; kappa counts only the agreement beyond chance (1: perfect, 0: chance, < 0: worse).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None when undefined (no items, or both
    raters used one and the same label throughout, so chance agreement is already 1)."""
    if len(a) != len(b):
        raise ValueError(f"two raters must label the same items ({len(a)} vs {len(b)} labels)")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in ca.keys() | cb.keys()) / (n * n)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def fleiss_kappa(items: Sequence[Mapping[str, int]]) -> float | None:
    """Fleiss' kappa; `items` holds, per item, how many raters gave each label.

    Items rated by fewer than two are left out. With a varying number of raters per item, each item's
    agreement is taken over its own rater pairs (the usual generalisation); with a constant number it is
    Fleiss (1971) exactly. None when undefined (no item, or a single label used throughout)."""
    rated = [item for item in items if sum(item.values()) >= 2]
    if not rated:
        return None
    totals: Counter = Counter()
    agreement = 0.0
    for item in rated:
        n = sum(item.values())
        agreement += (sum(c * c for c in item.values()) - n) / (n * (n - 1))
        totals.update(item)
    p_bar = agreement / len(rated)
    all_ratings = sum(totals.values())
    p_e = sum((c / all_ratings) ** 2 for c in totals.values())
    if p_e == 1:
        return None
    return (p_bar - p_e) / (1 - p_e)


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
            result.pairwise.append((x, y, len(common), cohen_kappa([by[x] for by in common], [by[y] for by in common])))
    result.fleiss = fleiss_kappa([Counter(by.values()) for by in multi.values()])
    result.disagreements = [case for case, by in multi.items() if len(set(by.values())) > 1]
    return result
