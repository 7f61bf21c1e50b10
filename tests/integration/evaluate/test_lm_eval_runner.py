"""run_suites on tiny random models, and the shipped knowledge suite giving the same numbers in memory
and through the plain lm_eval CLI."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from recoverlm import models
from recoverlm.errors import RecoverLMError
from recoverlm.evaluate.lm_eval_runner import SUITES_DIR, TASK_PREFIX, run_suites


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer random Llama and a byte-level BPE tokenizer trained here, both offline."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["Question: What is the capital of France?\nAnswer: Paris", "hello world, the cat sat on the mat."] * 4,
        vocab_size=300, min_frequency=1, special_tokens=["<|eos|>", "<|pad|>"],
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|eos|>", pad_token="<|pad|>")
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    return LlamaForCausalLM(cfg).eval(), tok


def test_run_suites_on_tiny_model(tiny):
    model, tok = tiny
    model.train()
    out = run_suites(model, tok, ["knowledge", "arithmetic", "instructions"], limit=8, batch_size=8, max_gen_toks=8)
    assert model.training  # lm-eval switches to eval mode; run_suites switches back
    model.eval()
    expected = {
        "knowledge": ["acc", "acc_norm"],
        "arithmetic": ["exact_match"],
        "instructions": ["prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc"],
    }
    for suite, metrics in expected.items():
        res = out[suite]
        assert res["n"] == 8
        for m in metrics:
            assert math.isfinite(res[m]) and 0.0 <= res[m] <= 1.0, (suite, m, res[m])
    k = out["knowledge"]
    assert len(k["items"]["acc"]) == 8 and set(k["items"]["acc"]) <= {0.0, 1.0}
    assert k["acc"] == pytest.approx(sum(k["items"]["acc"]) / 8)
    assert k["stderr"]["acc"] is not None
    assert set(k["by_category"]) == {"geography"}  # the first 8 items
    assert len(out["instructions"]["items"]["prompt_level_strict_acc"]) == 8


def test_plain_prompts_without_a_chat_template(tiny):
    model, tok = tiny
    plain = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<|eos|>", pad_token="<|pad|>")
    with pytest.raises(RecoverLMError, match="chat template.*apply_chat_template=False"):
        run_suites(model, plain, ["instructions"], limit=2)
    out = run_suites(model, plain, ["knowledge", "instructions"], limit=2, apply_chat_template=False, max_gen_toks=4)
    assert out["knowledge"]["n"] == 2 and out["instructions"]["n"] == 2


def test_task_yaml_path_from_another_directory(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    monkeypatch.chdir(tmp_path)  # the data files must not depend on the working directory
    path = str(SUITES_DIR / "knowledge" / "knowledge.yaml")
    out = run_suites(model, tok, [path], limit=3)
    assert out[path]["n"] == 3 and 0.0 <= out[path]["acc"] <= 1.0


def test_unknown_suite_names_the_available_ones(tiny):
    model, tok = tiny
    with pytest.raises(RecoverLMError, match="arithmetic, extraction, gsm8k, instructions, knowledge, rewriting"):
        run_suites(model, tok, ["knowledgee"], limit=2)
    with pytest.raises(RecoverLMError, match="not found"):
        run_suites(model, tok, ["missing/task.yaml"], limit=2)


def test_cli_matches_in_memory_run(tiny_model, tmp_path):
    limit = 12
    model, tok = models.load_model(tiny_model), models.load_tokenizer(tiny_model)
    native = run_suites(model, tok, ["knowledge"], limit=limit, batch_size=4)["knowledge"]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_model},dtype=float32",
           "--tasks", TASK_PREFIX + "knowledge", "--include_path", str(SUITES_DIR), "--limit", str(limit),
           "--batch_size", "4", "--output_path", str(tmp_path / "out"), "--log_samples"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    cli = results["results"][TASK_PREFIX + "knowledge"]
    assert native["n"] == limit
    assert cli["acc,none"] == pytest.approx(native["acc"], abs=1e-12)
    assert cli["acc_norm,none"] == pytest.approx(native["acc_norm"], abs=1e-12)
    # item by item, not just on average
    samples = [json.loads(line) for f in sorted((tmp_path / "out").rglob("samples_*.jsonl")) for line in f.open()]
    cli_items = [float(s["acc"]) for s in sorted(samples, key=lambda s: s["doc_id"])]
    assert cli_items == native["items"]["acc"]
