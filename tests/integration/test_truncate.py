"""An over-long prompt under overflow: truncate keeps its end inside a whole template."""

from recoverlm.data import encode_prompt, encode_prompts
from recoverlm.models import load_tokenizer


def test_a_truncated_prompt_keeps_its_template_and_its_end(tiny_model):
    tok = load_tokenizer(tiny_model)
    chat = bool(getattr(tok, "chat_template", None))
    prompt = " ".join(f"word{i}" for i in range(60)) + " the end"
    full = encode_prompt(tok, prompt, chat)
    short = encode_prompt(tok, "x", chat)
    limit = len(short) + 20
    assert len(full) > limit
    (ids,), kept, n_over = encode_prompts(tok, [prompt], limit, chat, overflow="truncate")
    assert kept == [0] and n_over == 1 and len(ids) <= limit
    assert ids[: 2] == short[: 2]  # the opening (BOS, template) survives
    assert tok.decode(ids).rstrip().endswith(tok.decode(full).rstrip()[-12:])  # and so does the prompt's end
