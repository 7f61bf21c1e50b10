"""The gsm8k suite run on a tiny model."""

from recoverlm.evaluate.lm_eval_runner import run_suites


def test_run_gsm8k_suite(tiny):
    model, tok = tiny
    out = run_suites(model, tok, ["gsm8k"], limit=2, batch_size=2, max_gen_toks=8)["gsm8k"]
    assert out["n"] == 2 and 0.0 <= out["exact_match"] <= 1.0
