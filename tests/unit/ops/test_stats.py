"""Recovery ratios and their bootstrap confidence intervals."""

import numpy as np
import pytest

from recoverlm.ops.stats import recovery_ratio_ci


def test_ratio_and_interval_cover_the_truth():
    rng = np.random.default_rng(0)
    degraded = 2.0 + 0.1 * rng.standard_normal(200)
    teacher = np.zeros(200)
    recovered = degraded * 0.4 + 0.05 * rng.standard_normal(200)  # 60% recovered
    res = recovery_ratio_ci(teacher, degraded, recovered)
    assert res["meaningful"] and res["n"] == 200
    assert abs(res["ratio"] - 0.6) < 0.02
    assert res["low"] < res["ratio"] < res["high"] and res["high"] - res["low"] < 0.1


def test_too_small_gap_is_marked():
    rng = np.random.default_rng(1)
    noise = lambda: rng.standard_normal(30)  # noqa: E731
    res = recovery_ratio_ci(noise(), noise(), noise())
    assert not res["meaningful"] and res["low"] is None


def test_degenerate_inputs():
    assert recovery_ratio_ci([1.0], [2.0], [1.5])["ratio"] is None


def test_weighted_items_give_the_token_weighted_ratio_and_an_interval_around_it():
    """One short item recovered fully, one long item not at all: by tokens the ratio is small, and
    so is its interval; by items it would read 0.5."""
    teacher, degraded, recovered = [0.0] * 40, [10.0, 1.0] * 20, [0.0, 1.0] * 20
    tokens = [1, 99] * 20
    res = recovery_ratio_ci(teacher, degraded, recovered, weights=tokens)
    assert res["ratio"] == pytest.approx(10 / 109)  # (sum of token KLs recovered) / (sum of the gap)
    assert res["meaningful"] and res["low"] <= res["ratio"] <= res["high"] < 0.2
    assert recovery_ratio_ci(teacher, degraded, recovered)["ratio"] == pytest.approx(0.5 * 10 / 5.5)
    with pytest.raises(ValueError, match="one value per item"):
        recovery_ratio_ci(teacher, degraded, recovered, weights=[1.0])


def test_the_interval_and_the_plain_ratio_agree_on_a_vanishing_gap():
    from recoverlm.ops.stats import recovery_ratio

    t, d, r = [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0 - 4e-7], [1.0, 1.0, 0.5, 0.5]
    assert recovery_ratio(sum(t) / 4, sum(d) / 4, sum(r) / 4) is None
    assert recovery_ratio_ci(t, d, r)["ratio"] is None
