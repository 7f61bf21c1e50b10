"""The headline table from records alone: mean and spread over seeds, and a note where the cells
of one degradation did not start from the same damaged copy."""

from recoverlm.report.study import findings, headline


def _rec(method, seed, ratio, start="aaaa", degraded_kl=0.3):
    return {"name": f"m/nf4/{method}-seed{seed}", "degradation": "nf4", "method": method, "ratio": ratio,
            "kl": {"degraded": degraded_kl}, "degraded_hash": start,
            "suites": {"teacher": {"knowledge": {"acc": 0.7}}, "degraded": {"knowledge": {"acc": 0.6}},
                       "recovered": {"knowledge": {"acc": 0.65}}}}


def test_seeds_are_averaged_with_their_spread():
    text = headline([_rec("two-stage", 0, 0.2), _rec("two-stage", 1, 0.4)], titled=False)
    assert "| nf4 | 0.300 | 0.700 / 0.600 | 0.300 ± 0.141 (2 seeds) · 0.650 |" in text
    assert "different degraded models" not in text


def test_cells_from_different_damaged_copies_are_said_so():
    text = headline([_rec("two-stage", 0, 0.2), _rec("two-stage", 1, 0.4, start="bbbb", degraded_kl=0.5)], titled=False)
    assert "| nf4 | 0.400 |" in text
    assert "nf4: its cells started from 2 different degraded models" in text


def test_what_held_compares_methods_on_the_seeds_both_have():
    """Mid-study, one method's three seeds are not set against another's one."""
    rows = [{**_rec("sft-replay", 0, 0.50), "seed": 0}, {**_rec("sft-replay", 1, 0.10), "seed": 1},
            {**_rec("two-stage", 0, 0.30), "seed": 0}, {**_rec("two-stage", 1, 0.20), "seed": 1},
            {**_rec("two-stage", 2, 0.90), "seed": 2}]
    sentences = findings(rows, None)
    assert "`two-stage` beat `sft-replay` on held-out teacher KL in 0 of 1 (model, degradation) pairs " \
           "(by the seeds both have finished)." in sentences
    even = findings([r for r in rows if r["seed"] < 2], None)
    assert any("(by the mean over seeds)" in s for s in even)


def test_the_cka_correlation_does_not_depend_on_the_records_order():
    """Every trained run keeps its own start, `none` cells (no trajectory) are left out: the same
    records in any order give the same rows and the same partial r."""
    from recoverlm.report.study import cka_section, evaluations

    def run(method, seed, kls, ckas):
        history = [{"step": 20 * i, "kl": k, "cka": [1.0, c, c - 0.01]} for i, (k, c) in enumerate(zip(kls, ckas))]
        return {**_rec(method, seed, 0.3), "seed": seed, "history": history}

    records = [run("none", 0, [0.4], [0.90]), run("two-stage", 0, [0.4, 0.3, 0.25], [0.90, 0.93, 0.95]),
               run("two-stage", 1, [0.4, 0.32, 0.2], [0.90, 0.92, 0.97]), run("sft-replay", 0, [0.4, 0.39, 0.35], [0.90, 0.91, 0.90]),
               run("sft-replay", 1, [0.4, 0.38, 0.36], [0.90, 0.90, 0.92])]
    rows = evaluations(records)
    assert len(rows) == 12 and {r["run"] for r in rows} == {r["name"] for r in records[1:]}
    forward, backward = cka_section(records)[0], cka_section(records[::-1])[0]
    assert forward == backward and "12 checkpoints of 4 trained runs" in forward


def test_a_bend_every_run_shares_is_not_read_as_cka_tracking_kl():
    """CKA and KL both follow the same bent curve in every run, with independent noise: with each
    step removed as a level, nothing is left to correlate (a linear step term would leave the bend)."""
    import random

    from recoverlm.report.study import cka_section

    rng = random.Random(1)  # independent noise; a linear step term gives partial r = -0.99 on these rows
    records = []
    for seed in range(6):
        history = []
        for step in (0, 20, 40, 60, 80):
            bend = 1.0 / (1.0 + step / 5)  # most of the change in the first steps
            c = 0.9 - 0.3 * bend + rng.gauss(0, 0.01)
            history.append({"step": step, "kl": 0.2 + bend + rng.gauss(0, 0.01), "cka": [1.0, c, c]})
        records.append({**_rec("two-stage", seed, 0.3), "seed": seed, "history": history})
    text, res = cka_section(records)
    partial = res["features"]["mean"]["partial"]
    assert abs(partial["r"]) < 0.5 and partial["ci"][0] < 0 < partial["ci"][1], text
    assert res["features"]["mean"]["pearson"]["r"] < -0.9  # the raw correlation is the shared bend
