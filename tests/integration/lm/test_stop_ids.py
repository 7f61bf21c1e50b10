"""Generation stops at every end-of-turn token the model declares, not only the tokenizer's EOS."""

from types import SimpleNamespace

from recoverlm import models
from recoverlm.lm.generate import generate, stop_ids


def test_the_turn_ends_of_the_generation_config_join_the_tokenizers_eos():
    tok = SimpleNamespace(eos_token_id=1)
    assert stop_ids(SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[1, 106])), tok) == [1, 106]
    assert stop_ids(SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=7)), tok) == [1, 7]
    assert stop_ids(SimpleNamespace(), tok) == [1]


def test_a_response_ends_at_the_first_turn_end(tiny_model):
    model, tok = models.load_model(tiny_model), models.load_tokenizer(tiny_model)
    prompt = [tok.encode("rain", add_special_tokens=False)]
    free = generate(model, tok, prompt, 8, progress=False)[0]
    turn_end = next(t for t in free[1:] if t != tok.eos_token_id)  # a token greedy decoding reaches after the first
    model.generation_config.eos_token_id = [tok.eos_token_id, turn_end]
    stopped = generate(model, tok, prompt, 8, progress=False)[0]
    assert stopped == free[: free.index(turn_end) + 1]


def test_decoding_options_the_model_ships_do_not_apply(tiny_model):
    """A shipped repetition penalty (Qwen2.5's 1.05), n-gram ban or minimum length would make greedy
    answers other than the argmax and samples other than the cached distribution's."""
    model, tok = models.load_model(tiny_model), models.load_tokenizer(tiny_model)
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("rain", "List three fruits.")]
    plain = generate(model, tok, prompts, 10, progress=False)
    shipped = model.generation_config
    shipped.repetition_penalty, shipped.no_repeat_ngram_size, shipped.min_new_tokens = 1.3, 2, 10
    assert generate(model, tok, prompts, 10, progress=False) == plain
    assert model.generation_config is shipped and shipped.repetition_penalty == 1.3  # given back as it was
