"""Statistics the toolkit reports: Wilson intervals for every rate, Cohen's and Fleiss' kappa for agreement.

In the core because scoring, calibration and the review app's agreement page all use them, and none of
those should import another to get them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

Z95 = 1.959963984540054
"""The two-sided 95 % normal quantile."""


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval for k successes in n trials (None when n is 0)."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 and k = n the bounds are exactly 0 and 1; floating point would put them a hair inside.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters over items (one (rating A, rating B) pair per item).

    None when undefined: no items, or chance agreement is 1 (both raters used one and the same label).
    """
    n = len(pairs)
    if n == 0:
        return None
    a = Counter(x for x, _ in pairs)
    b = Counter(y for _, y in pairs)
    p_observed = sum(1 for x, y in pairs if x == y) / n
    p_chance = sum(a[c] * b[c] for c in a) / (n * n)
    if p_chance >= 1.0:
        return None
    return (p_observed - p_chance) / (1 - p_chance)


def fleiss_kappa(items: Sequence[Sequence[str]]) -> float | None:
    """Fleiss' kappa over items, each a list of the labels its raters gave.

    Items rated by fewer than 2 are left out. Every item rated by the same number of raters (the judges)
    is Fleiss (1971) exactly; with a varying number (people reviewing different cases) each item's
    agreement is taken over its own rater pairs and chance from all ratings, the usual generalisation.
    None when undefined (no item with 2+ ratings, or chance agreement is 1).
    """
    items = [it for it in items if len(it) >= 2]
    if not items:
        return None
    totals: Counter = Counter()
    p_items = 0.0
    for it in items:
        m = len(it)
        counts = Counter(it)
        totals.update(counts)
        p_items += (sum(c * c for c in counts.values()) - m) / (m * (m - 1))
    p_bar = p_items / len(items)
    ratings = sum(totals.values())
    p_chance = sum((t / ratings) ** 2 for t in totals.values())
    if p_chance >= 1.0:
        return None
    return (p_bar - p_chance) / (1 - p_chance)


def rate(k: int, n: int, excluded: int = 0) -> dict[str, Any]:
    """A rate as written to scores.json: counts, value and 95% Wilson interval."""
    ci = wilson_interval(k, n)
    return {
        "k": k,
        "n": n,
        "rate": k / n if n else None,
        "ci_low": ci[0] if ci else None,
        "ci_high": ci[1] if ci else None,
        "excluded": excluded,
    }


def sign_test(gained: int, lost: int) -> float:
    """Exact two-sided p-value of McNemar's test (the sign test on the discordant pairs).

    Over (parent, variant) pairs: `gained` pairs where only the variant fooled, `lost` where only the
    parent did; concordant pairs carry no information about the difference. 1.0 with no discordant pair."""
    n = gained + lost
    if n == 0:
        return 1.0
    small = min(gained, lost)
    tail = sum(math.comb(n, i) for i in range(small + 1)) / 2**n
    return min(1.0, 2 * tail)
