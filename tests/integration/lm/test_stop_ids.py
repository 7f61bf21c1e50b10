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
