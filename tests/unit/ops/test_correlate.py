"""Recovery correlations: Pearson and Spearman with permutation p and bootstrap CI, partial correlation,
and correlate_recovery over runs and checkpoints."""

import math

import numpy as np
import pytest

from recoverlm.ops.correlate import correlate_recovery, partial_correlation, pearson, spearman


def test_pearson_and_spearman_match_hand_computations():
    # x - 3 = [-2,-1,0,1,2], y - 3 = [-1,-2,1,0,2]: sum of products 8, sums of squares 10 and 10.
    assert pearson([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], n_boot=0, n_perm=0)["r"] == pytest.approx(0.8)
    # No ties: 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 4 / 120.
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], n_boot=0, n_perm=0)["r"] == pytest.approx(0.8)
    # Ties take their average rank: x -> [1, 2.5, 2.5, 4]; r = 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4], n_boot=0, n_perm=0)["r"] == pytest.approx(math.sqrt(0.9))
    # Spearman only sees the order: a monotone transform changes Pearson but not Spearman.
    x = np.arange(1.0, 9.0)
    assert spearman(x, np.exp(x), n_boot=0, n_perm=0)["r"] == pytest.approx(1.0)
    assert pearson(x, np.exp(x), n_boot=0, n_perm=0)["r"] < 0.95


def test_permutation_p_and_bootstrap_ci():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    strong = pearson(x, 2 * x + 0.5 * rng.normal(size=30))
    assert strong["p"] < 0.001 and strong["ci"][0] < strong["r"] < strong["ci"][1]
    noise = pearson(x, rng.normal(size=30))
    assert noise["p"] > 0.1 and noise["ci"][0] < 0 < noise["ci"][1]
    assert spearman(x, rng.normal(size=30))["p"] > 0.05
    assert pearson(x, 2 * x)["p"] == pearson(x, 2 * x)["p"]  # seeded


def test_partial_correlation_removes_a_confound():
    rng = np.random.default_rng(1)
    step = np.arange(40.0)
    x, y = step + 3 * rng.normal(size=40), step + 3 * rng.normal(size=40)
    assert pearson(x, y, n_boot=0, n_perm=0)["r"] > 0.9
    part = partial_correlation(x, y, step)
    assert abs(part["r"]) < 0.2 and part["p"] > 0.05 and part["ci"][0] < 0 < part["ci"][1]
    # A real effect on top of the confound survives.
    z = step + 3 * rng.normal(size=40)
    assert partial_correlation(z, z + 0.5 * rng.normal(size=40), step)["r"] > 0.9


@pytest.mark.parametrize("fn", [pearson, spearman])
def test_degenerate_inputs_give_none_with_a_reason(fn):
    for x, y, reason in [([1, 1, 1, 1], [1, 2, 3, 4], "constant"), ([1, 2], [2, 1], "< 3"),
                         ([1, 2, float("nan")], [1, 2, 3], "non-finite")]:
        out = fn(x, y)
        assert out["r"] is None and out["ci"] is None and out["p"] is None and reason in out["reason"]
    assert partial_correlation([1, 2, 3, 4, 5], [2, 1, 3, 5, 4], [1, 2, 3, 4, 5])["reason"].endswith("of the control")
    assert "degrees of freedom" in partial_correlation([1, 2, 3], [3, 1, 2], [1, 2, 3])["reason"]


def test_correlate_recovery_over_runs_and_checkpoints():
    rng = np.random.default_rng(2)
    rows = []
    for run, damage in (("prune", 1.0), ("quant", 0.5)):
        for step in range(0, 100, 10):
            cka = [1.0, 0.9 - 0.3 * damage * np.exp(-step / 40) + 0.01 * rng.normal(), 0.8 - 0.4 * damage * np.exp(-step / 40)]
            rows.append({"run": run, "step": step, "kl": 2 * damage * np.exp(-step / 40) + 0.01 * rng.normal(), "cka": cka})
    rows.append({"run": "prune", "step": 5, "kl": None, "cka": [1.0, 0.5, 0.5]})  # skipped
    out = correlate_recovery(rows, "kl", n_boot=200, n_perm=200)
    assert out["n"] == 20 and out["skipped"] == 1 and out["runs"] == ["prune", "quant"]
    assert set(out["features"]) == {"mean", "last", "layer_0", "layer_1", "layer_2"}
    assert out["features"]["mean"]["pearson"]["r"] < -0.9  # higher CKA, lower KL
    assert out["features"]["last"]["spearman"]["p"] < 0.01
    assert out["features"]["layer_0"]["pearson"]["reason"] == "x is constant"  # embeddings never change
    assert out["features"]["mean"]["partial"]["r"] is not None
    within = correlate_recovery(rows, "kl", ("last",), within_run=True, n_boot=0, n_perm=0)
    assert within["control"] == ["step", "run"] and within["features"]["last"]["partial"]["controls"] == 2
    assert correlate_recovery([{"kl": 1.0}], "kl")["reason"].startswith("no row")


def test_cluster_bootstrap_resamples_whole_runs():
    """Runs whose checkpoints agree within themselves but not across runs: resampling whole runs
    gives a wide interval for the pooled r, and the within-run partial r (run removed) is found."""
    import numpy as np

    from recoverlm.ops.correlate import cluster_bootstrap_ci, correlation_of, partial_correlation_of

    rng, jitter = np.random.default_rng(0), np.random.default_rng(1)
    x, y, steps, groups = [], [], [], []
    for run in range(6):
        level = rng.normal()
        for step in range(8):
            x.append(level + 0.01 * step + 0.001 * jitter.normal())  # exactly linear, x would have no partial r
            y.append(rng.normal() - 0.05 * step)
            steps.append(step)
            groups.append(f"run{run}")
    ci = cluster_bootstrap_ci(groups, correlation_of(x, y), n_boot=500)
    assert ci is not None and ci[0] < 0 < ci[1] and ci[1] - ci[0] > 0.5
    assert cluster_bootstrap_ci(groups[:16], correlation_of(x[:16], y[:16])) is None  # two runs: no interval
    # within each run x rises with the step and y falls with it: with the step removed nothing is left
    partial = cluster_bootstrap_ci(groups, partial_correlation_of(x, y, steps, groups), n_boot=300)
    assert partial is not None and partial[0] < 0 < partial[1]


def test_resamples_of_too_few_distinct_rows_give_no_value():
    """A resample that repeats two or three rows fits them exactly: counted by its distinct rows it
    has no residual degrees of freedom, and gives no value instead of a spurious r of +-1."""
    import numpy as np

    from recoverlm.ops.correlate import correlation_of, partial_correlation_of

    x, y = [0.1, 0.5, 0.2, 0.9, 0.4, 0.7], [1.0, 0.3, 0.8, 0.1, 0.6, 0.2]
    partial = partial_correlation_of(x, y, np.arange(6), ["a"] * 6)
    assert partial(np.array([0, 0, 0, 5, 5, 5])) is None
    assert partial(np.array([0, 0, 0, 2, 2, 2, 5, 5, 5])) is None
    assert partial(np.arange(6)) is not None
    assert correlation_of(x, y)(np.array([0, 0, 3, 3])) is None
    assert correlation_of(x, y)(np.array([0, 1, 3])) is not None
