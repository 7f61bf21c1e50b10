"""The "does alignment cause recovery?" section: twins are paired on everything but the CKA term,
and the verdict follows the intervals."""

from recoverlm.report.alignment import alignment_section, mean_ci, paired_cells


def _cell(seed, method, cka_weight, cka, ratio, knowledge, lr=1e-4, degradation="wanda-50"):
    recover = {"offpolicy_steps": 60, "onpolicy_steps": 20, "lr": lr, "cka_weight": cka_weight}
    return {"name": f"m/{degradation}/{method}-seed{seed}", "model": "m", "degradation": degradation,
            "method": method, "seed": seed, "ratio": ratio, "kl": {"recovered": 1 - ratio},
            "config": {"recover": recover}, "cka": {"recovered": cka},
            "suites": {"recovered": {"knowledge": {"acc": knowledge}}}}


def test_twins_differ_only_in_the_term():
    cells = [_cell(0, "two-stage", 0.0, 0.8, 0.6, 0.6), _cell(0, "two-stage+cka", 1.0, 0.9, 0.6, 0.6),
             _cell(0, "lr-high", 0.0, 0.8, 0.6, 0.6, lr=1e-3), _cell(1, "two-stage+cka", 1.0, 0.9, 0.6, 0.6)]
    pairs = paired_cells(cells)
    assert [(a["method"], b["method"], a["seed"]) for a, b in pairs] == [("two-stage+cka", "two-stage", 0)]


def test_twins_share_data_and_damaged_copy_but_not_the_machine():
    """Another prompt set or another damaged copy is not a twin; another thread count is."""
    base, term = _cell(0, "two-stage", 0.0, 0.8, 0.6, 0.6), _cell(0, "two-stage+cka", 1.0, 0.9, 0.6, 0.6)
    other_data = {**_cell(0, "two-stage-mixed", 0.0, 0.8, 0.6, 0.6), "config": {**base["config"], "data": {"task_prompts": "t"}}}
    assert [b["method"] for _, b in paired_cells([term, other_data, base])] == ["two-stage"]
    assert paired_cells([term, {**base, "degraded_hash": "other"}]) == []
    threaded = {**base, "config": {"recover": {**base["config"]["recover"], "threads": 2, "logit_chunk": 512}}}
    assert [b["method"] for _, b in paired_cells([term, threaded])] == ["two-stage"]
    assert paired_cells([term, base, {**base, "method": "copy"}]) == []  # two twins: neither is taken


def test_the_verdict_says_when_cka_rose_and_recovery_did_not():
    cells = []
    for seed, (dr, dc) in enumerate([(0.01, 0.10), (-0.01, 0.11), (0.0, 0.09)]):
        cells += [_cell(seed, "two-stage", 0.0, 0.8, 0.6, 0.6), _cell(seed, "two-stage+cka", 1.0, 0.8 + dc, 0.6 + dr, 0.6)]
    text = alignment_section(cells)
    assert "| m | wanda-50 | `two-stage+cka` (vs `two-stage`) | 3 |" in text
    assert "CKA rose (+0.100) but recovery did not move beyond noise" in text


def test_the_verdict_follows_a_clear_gain_and_a_term_that_did_nothing():
    gain = []
    for seed, dr in enumerate([0.10, 0.12, 0.11]):
        gain += [_cell(seed, "two-stage", 0.0, 0.8, 0.5, 0.6), _cell(seed, "two-stage+cka", 1.0, 0.9 + seed / 100, 0.5 + dr, 0.6)]
    assert "consistent with a cause" in alignment_section(gain)
    flat = []
    for seed, dc in enumerate([0.01, -0.02, 0.0]):
        flat += [_cell(seed, "two-stage", 0.0, 0.8, 0.5, 0.6), _cell(seed, "two-stage+cka", 1.0, 0.8 + dc, 0.5, 0.6)]
    assert "did not reliably raise held-out CKA" in alignment_section(flat)


def test_the_converse_control_needs_cells_and_reports_a_partial_r():
    assert "too few to test" in alignment_section([_cell(0, "two-stage", 0.0, 0.8, 0.6, 0.6)])
    cells = [_cell(s, f"arm{a}", 0.0, 0.7 + 0.02 * a + 0.01 * s, 0.5 + 0.03 * a, 0.55 + 0.02 * a + 0.005 * (s % 2))
             for a in range(4) for s in range(3)]
    text = alignment_section(cells)
    assert "Across 12 trained cells" in text and "partial r =" in text


def test_mean_ci_is_a_t_interval():
    mean, ci = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci[0] < 2.0 < ci[1]
    assert round(ci[1] - 2.0, 3) == round(4.303 * 1.0 / 3 ** 0.5, 3)
    assert mean_ci([1.0]) == (1.0, None)


def _targeted(seed, method, choice, blocks, ratio, degradation="wanda-50"):
    cell = _cell(seed, method, 0.0, 0.8, ratio, 0.6, degradation=degradation)
    cell["stages"] = {"recover": 100.0 + seed}
    cell["recovery"] = {"train_blocks": {"choice": choice, "blocks": blocks, "of": 30,
                                         "trained_parameters": 3_000_000 * len(blocks), "total_parameters": 135e6}}
    return cell


def test_targeted_blocks_are_compared_with_chance_at_equal_k():
    from recoverlm.report.arms import targeted_section

    cells = [_targeted(s, "least-aligned-2", {"least_aligned": 2, "score": "drop"}, [3, 7], 0.40 + s / 100)
             for s in range(3)]
    cells += [_targeted(s, "random-2", {"random": 2}, [s, 9], 0.35) for s in range(3)]
    cells += [_targeted(s, "two-stage", "all", list(range(30)), 0.55) for s in range(3)]
    text = targeted_section(cells)
    assert "| m | wanda-50 | `least-aligned-2` | [3, 7] | 3 | 6.0M |" in text
    assert "| m | wanda-50 | `two-stage` | all | 3 | 90.0M |" in text
    assert "K = 2: the least-aligned blocks beat random blocks in 3 of 3" in text
    assert targeted_section([_targeted(0, "two-stage", "all", [0, 1], 0.5)]) is None


def test_the_mask_section_sets_the_re_chosen_masks_beside_the_fixed_one():
    from recoverlm.report.arms import mask_section

    fixed = _cell(0, "two-stage", 0.0, 0.8, 0.53, 0.60)
    fixed["recovery"] = {}
    moved = _cell(0, "two-stage+mask-update", 0.0, 0.8, 0.60, 0.62)
    moved["recovery"] = {"mask_update": {"changed": 0.12, "updates": 10, "swapped": 5000}}
    text = mask_section([fixed, moved])
    assert "| m | wanda-50 | `two-stage` | fixed | 1 | 0.530 | 0.600 | 0 | 0 | 0 |" in text
    assert "| m | wanda-50 | `two-stage+mask-update` | re-chosen | 1 | 0.600 | 0.620 | 10 | 5000 | 0.120 |" in text
    assert mask_section([fixed]) is None


def test_least_aligned_arms_of_two_scores_are_each_set_against_chance():
    from recoverlm.report.arms import targeted_section

    def ranked(seed, method, score, ratio):
        cell = _targeted(seed, method, {"least_aligned": 2, "score": score}, [3, 7], ratio)
        cell["recovery"]["train_blocks"]["score"] = score  # as recover records the score it ranked by
        return cell

    cells = [ranked(s, "least-aligned-2", "drop", 0.40) for s in range(2)]
    cells += [ranked(s, "least-aligned-2-output", "output", 0.30) for s in range(2)]
    cells += [_targeted(s, "random-2", {"random": 2}, [s, 9], 0.35) for s in range(2)]
    text = targeted_section(cells)
    assert "K = 2 (score drop): the least-aligned blocks beat random blocks in 2 of 2" in text
    assert "K = 2 (score output): the least-aligned blocks beat random blocks in 0 of 2" in text


def test_cka_and_ratio_changes_come_from_the_same_seeds():
    """A twin pair without a ratio drops out of every column: CKA from two seeds beside a ratio
    from one would set unlike against unlike (and left the verdict without an interval)."""
    cells = []
    for seed in range(2):
        cells += [_cell(seed, "two-stage", 0.0, 0.8, 0.5, 0.6), _cell(seed, "two-stage+cka", 1.0, 0.9, 0.55, 0.6)]
    cells[3]["ratio"] = None
    text = alignment_section(cells)
    assert "| m | wanda-50 | `two-stage+cka` (vs `two-stage`) | 1 |" in text
    assert "one seed so far" in text


def test_targeted_blocks_pair_only_with_random_blocks_of_the_same_recipe():
    """Two least-aligned arms at one K with different recipes each meet the random arm of their own."""
    from recoverlm.report.arms import targeted_section

    def arm(seed, method, choice, ratio, lr):
        cell = _targeted(seed, method, choice, [3, 7], ratio)
        cell["config"]["recover"]["lr"] = lr
        return cell

    cells = [arm(0, "least-2", {"least_aligned": 2}, 0.30, 1e-4), arm(0, "least-2-fast", {"least_aligned": 2}, 0.10, 1e-3),
             arm(0, "random-2", {"random": 2}, 0.20, 1e-4)]
    text = targeted_section(cells)
    assert "beat random blocks in 1 of 1 (degradation, seed) pairs (mean ratio 0.300 against 0.200)" in text
