"""Prompt splits: training, validation (choosing the best checkpoint) and held-out (scoring only)."""

import pytest

from recoverlm.data import split_prompts, split_three, validation_size
from recoverlm.errors import RecoverLMError


PROMPTS = [f"prompt {i}" for i in range(100)]


def test_three_splits_are_disjoint_and_keep_the_heldout_split():
    train, validation, heldout = split_three(PROMPTS, 10, None, seed=3)
    assert len(heldout) == 10 and len(validation) == validation_size(90, None) == 11
    assert not set(train) & set(validation) and not set(train) & set(heldout) and not set(validation) & set(heldout)
    assert set(train) | set(validation) | set(heldout) == set(PROMPTS)
    assert heldout == split_prompts(PROMPTS, 10, seed=3)[1]


@pytest.mark.parametrize("n_train, requested, expected", [(372, None, 24), (20, None, 2), (5, None, 1), (50, 7, 7), (50, 0, 0)])
def test_validation_size(n_train, requested, expected):
    assert validation_size(n_train, requested) == expected


def test_zero_validation_selects_on_heldout():
    train, validation, heldout = split_three(PROMPTS, 10, 0)
    assert validation == [] and len(train) == 90


def test_too_large_validation_names_its_field():
    with pytest.raises(RecoverLMError, match="n_validation=90"):
        split_three(PROMPTS, 10, 90)


def test_a_prompt_of_no_tokens_is_refused():
    """Without a BOS or template an empty prompt has no position to predict the response's first
    token from: its rows would shift every later sequence's cached teacher rows."""
    import pytest

    from recoverlm.data import encode_prompts
    from recoverlm.errors import RecoverLMError

    def tokenizer(text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}

    assert encode_prompts(tokenizer, ["ab"], 8, use_chat_template=False)[0] == [[97, 98]]
    with pytest.raises(RecoverLMError, match="prompt 2 encodes to no tokens"):
        encode_prompts(tokenizer, ["ab", ""], 8, use_chat_template=False)


def test_a_conversation_is_prompted_by_its_last_user_turn(tmp_path):
    import json

    import pytest

    from recoverlm.data import load_prompts
    from recoverlm.errors import RecoverLMError

    path = tmp_path / "p.jsonl"
    rows = [{"messages": [{"role": "user", "content": "What is the capital of France?"},
                          {"role": "assistant", "content": "Paris."}]},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
            {"messages": [{"content": "no role given"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_prompts(path) == ["What is the capital of France?", "Hi", "no role given"]
    path.write_text(json.dumps({"messages": [{"role": "assistant", "content": "Paris."}]}) + "\n")
    with pytest.raises(RecoverLMError, match="no message has the role 'user'"):
        load_prompts(path)


def test_several_greedy_responses_per_prompt_are_refused():
    import pytest

    from recoverlm.config import DataConfig
    from recoverlm.errors import RecoverLMError

    with pytest.raises(RecoverLMError, match="identical greedy copies"):
        DataConfig(responses_per_prompt=2)
    assert DataConfig(responses_per_prompt=2, temperature=0.7).responses_per_prompt == 2
