"""Recovery ratios and their bootstrap confidence intervals."""

import numpy as np

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
