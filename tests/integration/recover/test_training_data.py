"""What a recovery trains on: the user's own pairs for sft-replay."""

import json

import pytest
from helpers.recovery import short_config as _cfg

from recoverlm.errors import RecoverLMError
from recoverlm.recover.trainer import recover


def test_replay_on_user_data(tmp_path, tiny_model, pruned, data_cfg):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Say {w}.", "response": f"{w}!"}) for w in ["rain", "sun", "sea", "snow"]))
    cfg = data_cfg.model_copy(update={"replay_data": data})
    recover(tiny_model, pruned, tmp_path / "r", _cfg(method="sft-replay", replay_source="data"), cfg, progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(RecoverLMError, match=r"bad.jsonl:1: missing required key\(s\) response"):
        recover(tiny_model, pruned, tmp_path / "r2", _cfg(method="sft-replay", replay_source="data"),
                data_cfg.model_copy(update={"replay_data": bad}), progress=False)


def test_task_prompts_from_a_built_in_sft_task(data_cfg):
    from recoverlm.tasks import load_task_data
    from recoverlm.recover.training_data import task_prompts

    cfg = data_cfg.model_copy(update={"task_prompts": "extraction", "n_task_prompts": 5})
    prompts = task_prompts(cfg)
    assert len(prompts) == 5 and all(p.startswith("Extract the name") for p in prompts)
    trained_on = {p["prompt"] for p in load_task_data("extraction", n=512, seed=0)}  # the SFT degradation's data
    assert not set(prompts) & trained_on


def test_the_cached_top_k_is_tempered_as_the_student_is(tiny_model, data_cfg):
    """At recover.temperature 2 the teacher's cached buckets are softened too: a student equal to
    the teacher has zero off-policy loss, as it has at temperature 1."""
    import torch

    from recoverlm import models
    from recoverlm.config import RecoverConfig
    from recoverlm.data import collate
    from recoverlm.lm.forward import completion_logits
    from recoverlm.ops.divergences import topk_divergence
    from recoverlm.recover.training_data import training_set

    tokenizer, model = models.load_tokenizer(tiny_model), models.load_model(tiny_model, dtype=torch.float32)
    for temperature in (1.0, 2.0):
        cfg = RecoverConfig(temperature=temperature)
        rs = training_set(cfg, data_cfg, tiny_model, tiny_model, tokenizer, log=lambda _: None)
        batch = collate(rs.prompt_ids[:4], rs.response_ids[:4], tokenizer.pad_token_id)
        with torch.no_grad():
            logits = completion_logits(model, batch).float()
        n = logits.shape[0]
        loss = topk_divergence(logits, rs.topk_logprobs[:n], rs.topk_indices[:n].long(), temperature=temperature)
        assert loss.abs().max().item() < 1e-5, temperature
    replay = training_set(RecoverConfig(method="sft-replay", temperature=2.0), data_cfg, tiny_model, tiny_model,
                          tokenizer, log=lambda _: None)
    assert torch.equal(replay.topk_logprobs, training_set(RecoverConfig(), data_cfg, tiny_model, tiny_model, tokenizer,
                                                          log=lambda _: None).topk_logprobs)


def test_prompts_the_run_scores_are_not_trained_on(data_cfg):
    """Task prompts or replay pairs that repeat a validation or held-out prompt are left out, and said."""
    from recoverlm.data import load_prompts, scored_prompts
    from recoverlm.recover.training_data import scored_texts, unscored

    scored = scored_prompts(load_prompts(data_cfg.prompts), data_cfg.n_heldout, data_cfg.n_validation,
                            data_cfg.split_seed)
    said = []
    kept = unscored(["A prompt of my own.", scored[0].upper() + "  ", scored[-1]], scored_texts(data_cfg),
                    "task_prompts", said.append)
    assert kept == ["A prompt of my own."] and "left out 2 of 3" in said[0]
    with pytest.raises(RecoverLMError, match="every prompt is a validation or held-out prompt"):
        unscored([scored[0]], scored_texts(data_cfg), "replay_data")
