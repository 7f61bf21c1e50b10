"""The extraction suite run on a tiny model."""

from recoverlm.evaluate.lm_eval_runner import run_suites


def test_run_extraction_suite(tiny):
    model, tok = tiny
    out = run_suites(model, tok, ["extraction"], limit=4, batch_size=4)["extraction"]
    assert out["n"] == 4 and 0.0 <= out["acc"] <= 1.0
    assert len(out["items"]["acc"]) == 4
