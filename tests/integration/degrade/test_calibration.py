"""Calibration data with a tiny model's tokenizer: the user's files, the built-in set, padded batches."""

import copy

import pytest
from helpers.methods import run_method as _run

from recoverlm.degrade.calibration import load_calibration


def test_padded_calibration_batches_equal_single_samples(deep_model, tok, monkeypatch):
    """Right padding without a mask is exact under causal attention once padded tokens are skipped."""
    import recoverlm.degrade.calibration as calibration

    cal = {"n_calibration": 8, "max_length": 128}  # mostly uncut samples, of different lengths
    assert len({len(ids) for ids in load_calibration(tok, None, **cal).ids}) > 1
    _, _, batched = _run(deep_model, tok, "prune.depth", n_blocks=1, **cal)
    monkeypatch.setattr(calibration, "BATCH_SIZE", 1)
    _, _, single = _run(deep_model, tok, "prune.depth", n_blocks=1, **cal)
    assert batched["angular_distance"] == pytest.approx(single["angular_distance"], rel=1e-4)


def test_calibration_from_user_files(tok, tmp_path):
    jsonl = tmp_path / "cal.jsonl"
    jsonl.write_text(
        '{"text": "The quick brown fox."}\n\n{"prompt": "Explain why the sky is blue."}\n'
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n'
    )
    txt = tmp_path / "cal.txt"
    txt.write_text("First paragraph of text.\n\nSecond one, a little longer than the first.\n")
    a, b = load_calibration(tok, jsonl, 8, 32), load_calibration(tok, txt, 8, 32)
    builtin = load_calibration(tok, None, 8, 32)
    assert (a.summary()["samples"], b.summary()["samples"]) == (3, 2)
    assert a.texts[0] == "The quick brown fox."
    assert a.texts[1].startswith("<|im_start|>user\nExplain")  # prompts are rendered with the chat template
    assert a.texts[2].endswith("Hello!<|im_end|>\n")
    assert len({a.hash, b.hash, builtin.hash}) == 3
    assert load_calibration(tok, None, 8, 32).hash == builtin.hash  # deterministic
    assert all(len(ids) <= 32 for ids in builtin.ids)
    base = copy.deepcopy(tok)  # a base model without a chat template gets the prompts as plain text
    base.chat_template = None
    assert "<|im_start|>" not in load_calibration(base, None, 8, 32).texts[0]


def test_plain_calibration_text_gets_the_bos_a_base_model_expects(tok, tmp_path):
    """Without a chat template the texts carry no special tokens: they are encoded as the run's own
    prompts are (Gemma's tokenizer puts a BOS before each), once even where a text already has it."""
    from tokenizers.processors import TemplateProcessing

    from recoverlm.data import encode_prompt

    base = copy.deepcopy(tok)
    base.chat_template = None
    base.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", base.bos_token_id)])
    calib = load_calibration(base, None, 8, 32)
    assert all(int(ids[0]) == base.bos_token_id for ids in calib.ids)
    assert calib.ids[0].tolist() == encode_prompt(base, calib.texts[0], use_chat_template=False)[:32]
    assert calib.hash != load_calibration(tok, None, 8, 32).hash
    jsonl = tmp_path / "cal.jsonl"
    jsonl.write_text('{"text": "<|im_start|>The quick brown fox."}\n')
    assert load_calibration(base, jsonl, 8, 32).ids[0].tolist().count(base.bos_token_id) == 1
