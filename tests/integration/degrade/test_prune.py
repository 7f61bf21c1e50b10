"""Unstructured and N:M pruning of a tiny model: exact per-row sparsity, Wanda's input norms, the N:M pattern."""

import pytest
from helpers.methods import CAL, run_method as _run

from recoverlm.lm.blocks import linear_weights


@pytest.mark.parametrize("method", ["prune.magnitude", "prune.wanda"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_row_sparsity_is_exact(tiny_model, tok, method, sparsity):
    params = {"sparsity": sparsity, **(CAL if method == "prune.wanda" else {})}
    model, constraint, record = _run(tiny_model, tok, method, **params)
    assert constraint.verify(model)["sparsity"] == pytest.approx(round(sparsity * 64) / 64, abs=0.02)
    for name, w in linear_weights(model).items():
        per_row = (w == 0).sum(1)
        assert (per_row == round(sparsity * w.shape[1])).all(), name
        assert (constraint.masks[name].sum(1) == w.shape[1] - per_row).all()
    if method == "prune.wanda":
        assert len(record["calibration"]["hash"]) == 16 and record["calibration"]["samples"] == 8


def test_wanda_weighs_weights_by_input_norm(tiny_model, tok):
    """Wanda keeps small weights that read large inputs, which magnitude pruning would drop."""
    _, magnitude, _ = _run(tiny_model, tok, "prune.magnitude", sparsity=0.5)
    _, wanda, _ = _run(tiny_model, tok, "prune.wanda", sparsity=0.5, **CAL)
    differ = sum(int((magnitude.masks[k] != wanda.masks[k]).sum()) for k in wanda.masks)
    assert differ > 0


@pytest.mark.parametrize("score", ["magnitude", "wanda"])
def test_nm_pattern_holds(tiny_model, tok, score):
    model, constraint, _ = _run(tiny_model, tok, "prune.nm", n=2, m=4, score=score, **CAL)
    for name, w in linear_weights(model).items():
        groups = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert (groups <= 2).all(), name
        assert (constraint.masks[name].reshape(w.shape[0], -1, 4).sum(-1) == 2).all()
    assert constraint.verify(model)["sparsity"] == pytest.approx(0.5)
