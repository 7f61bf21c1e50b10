"""SFT-forgetting damage: fine-tuning tiny models on a narrow task, the record, bad parameters."""

import json

import pytest
import torch
from helpers.files import write_lines as _write

from recoverlm.data import collate
from recoverlm.degrade import METHODS, degrade
from recoverlm.degrade.sft import _encode, finetune_sft, response_nll
from recoverlm.tasks import load_task_data
from recoverlm.errors import RecoverLMError
from recoverlm.models import load_model
from helpers.threads import one_thread  # noqa: F401 (an autouse fixture)


FAST = {"n_train": 16, "batch_size": 4}


@torch.no_grad()
def _train_nll(model, tok, task, n_train, seed=0):
    """Mean response NLL over the training items, which is what SFT minimises."""
    prompt_ids, response_ids = _encode(tok, load_task_data(task, n=n_train, seed=seed))
    batch = collate(prompt_ids, response_ids, tok.pad_token_id)
    return response_nll(model, batch).item()


@pytest.mark.parametrize("task,lora", [("extraction", False), ("rewriting", True)])
def test_finetune_reduces_training_loss(tiny_model, tok, task, lora):
    model = load_model(tiny_model)
    before = _train_nll(model, tok, task, FAST["n_train"])
    model, constraint = finetune_sft(model, task=task, steps=30, lr=3e-3, lora=lora, tokenizer=tok, **FAST)
    after = _train_nll(model, tok, task, FAST["n_train"])
    assert constraint.kind == "none"
    if lora:
        # The adapter cannot touch the tiny model's frozen tied embeddings (std 0.02, d=64), which cap
        # every logit near +-1.3, so ~0.4 nats (5.86 -> 5.44) is a large move; full FT is not capped.
        assert after < before - 0.3, (before, after)
    else:
        assert after < 0.7 * before, (before, after)


def test_lora_result_is_a_plain_model_that_reloads(tiny_model, tok, tmp_path):
    model, _ = finetune_sft(load_model(tiny_model), task="rewriting", steps=3, lr=3e-3, lora=True, tokenizer=tok, **FAST)
    assert not any(type(m).__module__.startswith("peft") for m in model.modules())
    assert not any("lora" in name for name, _ in model.named_parameters())
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    reloaded = load_model(tmp_path / "m")
    ids = torch.tensor([[1, 5, 9, 12]])
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_degrade_sft_writes_record(tiny_model, tmp_path):
    out = tmp_path / "sft"
    record = degrade(tiny_model, "sft", {"task": "rewriting", "steps": 2, **FAST}, out)
    saved = json.loads((out / "recoverlm" / "degradation.json").read_text())
    assert saved["method"] == "sft" and saved["params"]["task"] == "rewriting"
    sft = saved["sft"]
    assert sft["task"] == "rewriting" and sft["steps"] == 2 and sft["n_train"] == 16
    assert sft["response_tokens_trained"] > 0 and len(sft["data_hash"]) == 16
    assert 0.0 <= sft["accuracy_before"] <= 1.0 and 0.0 <= sft["accuracy_after"] <= 1.0
    assert record["sft"] == sft
    assert set(METHODS["sft"][1]) == set(saved["params"])


@pytest.mark.parametrize("params,message", [
    ({"task": "poetry"}, "task 'poetry' is neither a built-in task"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"lr": 0}, "lr must be a number > 0"),
    ({"lr": -1e-4}, "lr must be a number > 0"),
    ({"lr": "fast"}, "lr must be a number > 0"),
    ({"batch_size": 0}, "batch_size must be"),
    ({"lora": "yes"}, "lora must be true or false"),
    ({"epochs": 3}, "does not take epochs"),
    ("EMPTY", "holds no records"),
    ("BAD", ":1: invalid JSON"),
])
def test_bad_params_raise_and_write_nothing(tiny_model, tmp_path, params, message):
    if params == "EMPTY":
        params = {"task": str(_write(tmp_path / "empty.jsonl", [""]))}
    elif params == "BAD":
        params = {"task": str(_write(tmp_path / "bad.jsonl", ["{oops"]))}
    out = tmp_path / "out"
    with pytest.raises(RecoverLMError, match=message):
        degrade(tiny_model, "sft", {**params, "steps": params.get("steps", 2)}, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no partial folder either
