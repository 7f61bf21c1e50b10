"""recover.train_blocks: the pure choice of blocks from a CKA trajectory, and its config checks."""

import pytest

from recoverlm.config import BlockChoice, RecoverConfig, parse_config
from recoverlm.errors import RecoverLMError
from recoverlm.recover.block_choice import check_models, choice_record, choose_blocks, describe, needs_cka

# Index 0 the embeddings, index l + 1 block l's output. Drops per block: 0.01, 0.30, 0.05, 0.20, -0.02;
# output CKA per block: 0.98, 0.68, 0.63, 0.43, 0.45 (the lowest outputs sit above the largest drops).
CKA = [0.99, 0.98, 0.68, 0.63, 0.43, 0.45]


def _choice(**rule):
    return RecoverConfig(train_blocks=rule).train_blocks


@pytest.mark.parametrize("rule,score,blocks", [
    ("least_aligned", "drop", [1, 3]), ("most_aligned", "drop", [0, 4]),
    ("least_aligned", "output", [3, 4]), ("most_aligned", "output", [0, 1]),
])
def test_aligned_rules_rank_by_drop_or_output(rule, score, blocks):
    chosen, scores = choose_blocks(_choice(**{rule: 2, "score": score}), CKA, 5, seed=0)
    assert chosen == blocks
    expected = [CKA[i] - CKA[i + 1] for i in range(5)] if score == "drop" else CKA[1:]
    assert scores == pytest.approx(expected)


def test_drop_is_the_default_score_and_ties_go_to_the_lower_block():
    choice = _choice(least_aligned=1)
    assert choice.score == "drop" and needs_cka(choice)
    assert choose_blocks(choice, [1.0, 0.75, 0.5, 0.25], 3, seed=0)[0] == [0]
    assert choose_blocks(_choice(least_aligned=3), CKA, 5, seed=0)[0] == [1, 2, 3]


def test_random_is_seeded_deterministic_and_of_size_k():
    choice = _choice(random=3)
    assert not needs_cka(choice) and choice.score is None
    draws = {seed: choose_blocks(choice, None, 30, seed)[0] for seed in range(5)}
    assert all(len(b) == 3 and b == sorted(b) and len(set(b)) == 3 for b in draws.values())
    assert draws[0] == choose_blocks(choice, None, 30, 0)[0] and choose_blocks(choice, None, 30, 0)[1] is None
    assert len({tuple(b) for b in draws.values()}) > 1


def test_a_list_passes_through_sorted_and_all_is_every_block():
    assert choose_blocks(RecoverConfig(train_blocks=[3, 1]).train_blocks, None, 5, 0) == ([1, 3], None)
    assert choose_blocks("all", None, 4, 0) == ([0, 1, 2, 3], None)


@pytest.mark.parametrize("choice,match", [
    ({"least_aligned": 6}, "K = 6 exceeds the student's 5 blocks"), ({"random": 9}, "K = 9 exceeds"),
    ([0, 5], "block 5 does not exist; the student has 5 blocks"),
])
def test_beyond_the_depth_is_one_clear_error(choice, match):
    choice = RecoverConfig(train_blocks=choice).train_blocks
    with pytest.raises(RecoverLMError, match=match):
        choose_blocks(choice, CKA, 5, seed=0)
    with pytest.raises(RecoverLMError, match=match):
        check_models(choice, 5, 5)


def test_cka_rules_need_the_teachers_depth_and_a_whole_trajectory():
    with pytest.raises(RecoverLMError, match="needs the teacher's depth"):
        check_models(_choice(least_aligned=1), 6, 5)
    check_models(_choice(random=1), 6, 5)  # random compares nothing
    with pytest.raises(RecoverLMError, match="does not fit 5 blocks"):
        choose_blocks(_choice(least_aligned=1), CKA[:-1], 5, 0)
    with pytest.raises(RecoverLMError, match="undefined"):
        choose_blocks(_choice(least_aligned=1), [1.0, float("nan"), 0.5], 2, 0)


def test_record_and_log_line():
    choice = _choice(least_aligned=2)
    blocks, scores = choose_blocks(choice, CKA, 5, 0)
    assert choice_record(choice) == {"least_aligned": 2, "score": "drop"}
    assert describe(choice, blocks, scores, 5, 0) == \
        "train_blocks least_aligned 2 (score drop): blocks [1, 3] of 5; CKA drop 0.300, 0.200"
    assert describe(_choice(random=1), [2], None, 5, 7) == "train_blocks random 1 (seed 7): blocks [2] of 5"


@pytest.mark.parametrize("value,match", [
    ({"least_aligned": 2, "random": 1}, "exactly one of least_aligned, most_aligned, random; got least_aligned, rand"),
    ({"score": "drop"}, "exactly one of .*; got none"),
    ({"least_aligned": 0}, "K must be a whole number >= 1, got 0"),
    ({"random": True}, "K must be a whole number"),
    ({"least": 2}, "unknown key 'least'"),
    ({"random": 2, "score": "drop"}, "random uses none"),
    ({"most_aligned": 2, "score": "input"}, "score must be drop or output"),
    ([], "empty list"), ([-1, 2], "count from 0"), ([1, 1], "repeat"),
    ("some", "Input should be 'all'"),
])
def test_config_refuses_bad_choices_at_load_time(value, match):
    with pytest.raises(RecoverLMError, match=match):
        parse_config(RecoverConfig, {"train_blocks": value})


def test_config_forms_round_trip():
    for value in ("all", [2, 0], {"least_aligned": 2}, {"most_aligned": 1, "score": "output"}, {"random": 3}):
        cfg = RecoverConfig(train_blocks=value)
        again = parse_config(RecoverConfig, cfg.model_dump(mode="json"))
        assert again.train_blocks == cfg.train_blocks
    assert RecoverConfig().train_blocks == "all"
    assert isinstance(RecoverConfig(train_blocks={"random": 1}).train_blocks, BlockChoice)
