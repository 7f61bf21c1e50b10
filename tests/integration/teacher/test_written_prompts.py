"""Prompts the teacher writes itself: the opening of a user turn, what counts as usable, the cache,
and their place in the splits (training only)."""

import pytest

from recoverlm import models
from recoverlm.config import DataConfig
from recoverlm.errors import RecoverLMError
from recoverlm.teacher import written_prompts
from recoverlm.teacher.response_set import distill_set, heldout_set, validation_set
from recoverlm.teacher.written_prompts import teacher_written_prompts, usable_prompts, user_turn_opening


QUIET = dict(log=lambda *a: None)


@pytest.fixture()
def tokenizer(tiny_model):
    return models.load_tokenizer(tiny_model)


def drafts_of(tokenizer, texts, end_id, finished=True):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] + ([end_id] if finished else []) for t in texts]


def test_opening_is_the_template_up_to_the_users_message(tokenizer):
    opening, end_id = user_turn_opening(tokenizer)
    assert tokenizer.decode(opening) == "<|im_start|>user\n"
    assert tokenizer.convert_ids_to_tokens(end_id) == "<|im_end|>"


def test_a_tokenizer_without_chat_template_is_refused(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(RecoverLMError, match="need a chat template"):
        user_turn_opening(tokenizer)


def test_only_finished_new_clean_prompts_are_usable(tokenizer):
    _, end = user_turn_opening(tokenizer)
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    drafts = (drafts_of(tokenizer, ["Tell me about the sea.", "tell  me ABOUT the sea.", "Too short",
                                    "Write a poem about rain."], end)
              + drafts_of(tokenizer, ["Explain how clocks work to me."], end, finished=False)
              + [tokenizer("Name three rivers please.", add_special_tokens=False)["input_ids"] + [im_start, end]])
    seen = {"write a poem about rain."}
    assert usable_prompts(drafts, end, tokenizer, seen) == ["Tell me about the sea."]
    assert "tell me about the sea." in seen


class ScriptedTeacher:
    """Stands in for generation: hands out scripted drafts, one list per round, and counts calls."""

    def __init__(self, tokenizer, rounds):
        self.tokenizer, self.rounds, self.calls = tokenizer, list(rounds), 0

    def __call__(self, model, tokenizer, prompt_ids, max_new_tokens, *args, stop_id=None, **kwargs):
        self.calls += 1
        assert max_new_tokens > 8 and all(p == prompt_ids[0] for p in prompt_ids)
        texts = self.rounds.pop(0) if self.rounds else []
        return drafts_of(tokenizer, texts, stop_id) + [[]] * max(0, len(prompt_ids) - len(texts))


def test_written_prompts_exclude_curated_ones_and_are_cached(tiny_model, tokenizer, monkeypatch, tmp_path):
    monkeypatch.setenv("RECOVERLM_HOME", str(tmp_path))
    teacher = ScriptedTeacher(tokenizer, [["Describe a quiet morning.", "Write one sentence about rain."],
                                          ["List three kinds of bread.", "Describe a quiet morning.", "Name a star."]])
    monkeypatch.setattr(written_prompts, "generate", teacher)
    kwargs = dict(exclude=["Write one sentence about rain."], max_prompt_tokens=64, batch_size=4, **QUIET)
    first = teacher_written_prompts(tiny_model, 3, **kwargs)
    assert first == ["Describe a quiet morning.", "List three kinds of bread.", "Name a star."]
    assert teacher.calls == 2
    assert teacher_written_prompts(tiny_model, 3, **kwargs) == first and teacher.calls == 2  # from the cache


def test_a_teacher_that_repeats_itself_gives_fewer_with_a_note(tiny_model, tokenizer, monkeypatch, tmp_path):
    monkeypatch.setenv("RECOVERLM_HOME", str(tmp_path))
    monkeypatch.setattr(written_prompts, "generate", ScriptedTeacher(tokenizer, [["Describe a quiet morning."]] * 9))
    notes = []
    assert teacher_written_prompts(tiny_model, 5, exclude=[], max_prompt_tokens=64, log=notes.append) == [
        "Describe a quiet morning."]
    assert notes == ["the teacher wrote 1 distinct usable prompts of the 5 asked for"]


def test_no_usable_prompt_is_one_clear_error(tiny_model, tokenizer, monkeypatch, tmp_path):
    monkeypatch.setenv("RECOVERLM_HOME", str(tmp_path))
    monkeypatch.setattr(written_prompts, "generate", ScriptedTeacher(tokenizer, []))
    with pytest.raises(RecoverLMError, match="wrote no usable prompt"):
        teacher_written_prompts(tiny_model, 2, exclude=[], max_prompt_tokens=64, **QUIET)
    with pytest.raises(RecoverLMError, match="max_prompt_tokens=9 leaves no room"):
        teacher_written_prompts(tiny_model, 2, exclude=[], max_prompt_tokens=9, **QUIET)


def test_written_prompts_join_training_only(tiny_model, tokenizer, prompt_file, monkeypatch):
    monkeypatch.setattr(written_prompts, "generate", ScriptedTeacher(
        tokenizer, [["Explain rain to a child, number 0.", "Describe a quiet morning.", "List three kinds of bread."]]))
    cfg = DataConfig(prompts=prompt_file, n_heldout=4, n_validation=3, max_new_tokens=4, top_k_logits=4,
                     teacher_generation_dtype="float32", teacher_prompts=2)
    train = distill_set(tiny_model, cfg, **QUIET).prompts
    assert len(train) == 17 + 2 and train[-2:] == ["Describe a quiet morning.", "List three kinds of bread."]
    assert not set(train) & set(validation_set(tiny_model, cfg, **QUIET).prompts)
    assert not set(train) & set(heldout_set(tiny_model, cfg, **QUIET).prompts)
