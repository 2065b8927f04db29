"""The rate record every score is written as: counts, value and its Wilson interval, side by side."""

from __future__ import annotations

import pytest

from generator.statistics import rate, wilson_interval


@pytest.mark.parametrize("k, n", [(0, 1), (1, 2), (2, 3), (3, 3), (50, 167)])
def test_a_rate_is_k_over_n_with_its_wilson_interval(k, n):
    r = rate(k, n, excluded=4)
    low, high = wilson_interval(k, n)
    assert r == {"k": k, "n": n, "rate": pytest.approx(k / n), "ci_low": low, "ci_high": high, "excluded": 4}
    assert r["ci_low"] <= r["rate"] <= r["ci_high"]


def test_an_empty_rate_has_no_value_and_no_interval():
    assert rate(0, 0, excluded=2) == {"k": 0, "n": 0, "rate": None, "ci_low": None, "ci_high": None, "excluded": 2}
