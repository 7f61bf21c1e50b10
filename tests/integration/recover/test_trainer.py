"""The recovery trainer on tiny models: both stages, divergences, baselines, LoRA, constraints, bad inputs."""

import json

import pytest
import torch
from helpers.recovery import short_config as _cfg, verified as _sparsity_ok, weights as _weights
from safetensors.torch import load_file

from recoverlm import data
from recoverlm.config import LoraConfig
from recoverlm.constraints import load_constraint
from recoverlm.degrade import degrade
from recoverlm.errors import RecoverLMError
from recoverlm.models import load_model
from recoverlm.recover import trainer as trainer_mod
from recoverlm.recover.objective import loss_sum
from recoverlm.recover.timing import PhaseTimer
from recoverlm.recover.trainer import recover


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_offpolicy_divergences_train_and_keep_masks(tmp_path, tiny_model, pruned, data_cfg, divergence):
    res = recover(tiny_model, pruned, tmp_path / "r", _cfg(divergence=divergence, select_best=False), data_cfg,
                  progress=False)
    assert res["constraint"]["sparsity"] == pytest.approx(0.5)
    assert _sparsity_ok(tmp_path / "r")["sparsity"] == pytest.approx(0.5)
    before, after = _weights(pruned), _weights(tmp_path / "r")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    held_out = data.split_prompts(data.load_prompts(data_cfg.prompts), data_cfg.n_heldout, data_cfg.split_seed)[1]
    assert res["heldout_hash"] == data.texts_hash(held_out)  # what evaluation later checks its prompts against


def test_onpolicy_stage_samples_from_student(tmp_path, tiny_model, pruned, data_cfg, monkeypatch):
    timer = PhaseTimer()
    res = recover(tiny_model, pruned, tmp_path / "r", _cfg(offpolicy_steps=1, onpolicy_steps=2, onpolicy_divergence="jsd",
                                                           eval_every=1), data_cfg, progress=False, timer=timer)
    assert timer.calls["sample"] == 2 and timer.tokens["sample"] > 0
    assert [h["stage"] for h in res["history"]] == ["start", "off-policy", "on-policy", "on-policy"]
    _sparsity_ok(tmp_path / "r")


def test_runs_in_one_process_may_differ_in_precision(tmp_path, tiny_model, pruned, data_cfg):
    """accelerate keeps one state per process; the Python API must not be stuck with the first run's."""
    for i, bf16 in enumerate((True, False)):
        res = recover(tiny_model, pruned, tmp_path / f"r{i}", _cfg(bf16=bf16, select_best=False), data_cfg, progress=False)
        assert res["recover"]["bf16"] is bf16
        assert res["training_precision"] == ("bf16 autocast" if bf16 else "float32")


def test_ema_teacher_and_skip_first_tokens(tmp_path, tiny_model, pruned, data_cfg):
    res = recover(tiny_model, pruned, tmp_path / "r",
                  _cfg(offpolicy_steps=1, onpolicy_steps=1, teacher_mode="ema", skip_first_tokens=2, ce_weight=0.5),
                  data_cfg, progress=False)
    assert res["constraint"]["sparsity"] == pytest.approx(0.5)


def test_qat_keeps_grid(tmp_path, tiny_model, quantized, data_cfg):
    res = recover(tiny_model, quantized, tmp_path / "r", _cfg(lr=5e-2, select_best=False), data_cfg, progress=False)
    assert res["constraint"]["kind"] == "quant_grid"
    load_constraint(tmp_path / "r").verify(load_model(tmp_path / "r"))
    before, after = _weights(quantized), _weights(tmp_path / "r")
    assert any(not torch.equal(before[k], after[k]) for k in before if "layers" in k)


def test_learned_grid_scales_are_exported_with_the_model(tmp_path, tiny_model, quantized, data_cfg):
    res = recover(tiny_model, quantized, tmp_path / "r",
                  _cfg(grid_scales="learned", grid_scale_lr=5e-2, lr=1e-3, select_best=False, onpolicy_steps=1,
                       eval_every=2), data_cfg, progress=False)
    assert res["constraint"]["learned_scales"]
    grid_before = load_file(str(quantized / "recoverlm" / "quant_grid.safetensors"))
    grid_after = load_file(str(tmp_path / "r" / "recoverlm" / "quant_grid.safetensors"))
    assert any(not torch.equal(grid_before[k], grid_after[k]) for k in grid_before if k.endswith(".scale"))
    assert all(torch.equal(grid_before[k], grid_after[k]) for k in grid_before if k.endswith(".zero"))
    load_constraint(tmp_path / "r").verify(load_model(tmp_path / "r"))


def test_teacher_grid_latents_start_from_the_degraded_model_and_keep_the_grid(tmp_path, tiny_model, quantized,
                                                                              data_cfg):
    cfg = _cfg(grid_latents="teacher", grid_scales="learned", onpolicy_steps=1, select_best=False)
    run = trainer_mod.Recovery(tiny_model, quantized, tmp_path / "r", cfg, data_cfg, progress=False, log=lambda *_: None)
    on_grid = trainer_mod.Recovery(tiny_model, quantized, tmp_path / "g", cfg.model_copy(update={"grid_latents": "grid"}),
                                   data_cfg, progress=False)
    degraded = load_model(quantized)
    ids = torch.tensor(run.train_set.prompt_ids[0]).unsqueeze(0)
    with torch.no_grad():  # moving the latents inside their cells changes nothing the model computes
        assert torch.equal(run.student(ids).logits, on_grid.student(ids).logits)
    teacher = dict(run.teacher.named_parameters())
    latents = {n: p for n, p in run.student.named_parameters() if n.endswith("weight.original")}
    name, latent = next(iter(latents.items()))
    plain = name.replace(".parametrizations.weight.original", ".weight")
    assert (latent != dict(degraded.named_parameters())[plain]).float().mean() > 0.9
    assert (latent == teacher[plain]).float().mean() > 0.9  # RTN: the teacher's own weights
    res = recover(tiny_model, quantized, tmp_path / "r2", cfg, data_cfg, progress=False)
    assert res["constraint"]["learned_scales"]
    load_constraint(tmp_path / "r2").verify(load_model(tmp_path / "r2"))


def test_learned_grid_scales_need_a_grid(tmp_path, tiny_model, pruned, quantized, data_cfg):
    with pytest.raises(RecoverLMError, match="needs a student on a quantization grid"):
        recover(tiny_model, pruned, tmp_path / "r", _cfg(grid_scales="learned"), data_cfg, progress=False)
    with pytest.raises(RecoverLMError, match="not supported with lora"):
        recover(tiny_model, quantized, tmp_path / "r", _cfg(grid_scales="learned", lora=LoraConfig(r=4)), data_cfg,
                progress=False)
    with pytest.raises(RecoverLMError, match="grid_latents 'teacher' needs a student on a quantization grid"):
        recover(tiny_model, pruned, tmp_path / "r", _cfg(grid_latents="teacher"), data_cfg, progress=False)
    with pytest.raises(RecoverLMError, match="grid_latents 'teacher' needs full fine-tuning"):
        recover(tiny_model, quantized, tmp_path / "r", _cfg(grid_latents="teacher", lora=LoraConfig(r=4)), data_cfg,
                progress=False)


def test_lora_under_masks_survives_merge(tmp_path, tiny_model, pruned, data_cfg):
    res = recover(tiny_model, pruned, tmp_path / "r", _cfg(lora=LoraConfig(r=4), lr=2e-2, select_best=False),
                  data_cfg, progress=False)
    out = tmp_path / "r"
    assert (out / "recoverlm" / "adapter" / "adapter_config.json").exists() and not (out / "adapter").exists()
    assert res["constraint"]["sparsity"] == pytest.approx(0.5)
    # The merged, re-masked export computes exactly what the masked adapter computed in training.
    from peft import PeftModel

    from recoverlm.constraints.lora import wrap_lora

    merged = load_model(out)
    base = load_model(pruned)
    trained = wrap_lora(base, LoraConfig(r=4), load_constraint(pruned))
    adapter = load_file(str(out / "recoverlm" / "adapter" / "adapter_model.safetensors"))
    state = {k.replace(".weight", ".default.weight"): v for k, v in adapter.items()}
    missing = trained.load_state_dict(state, strict=False)
    assert not [k for k in missing.unexpected_keys]
    ids = torch.randint(0, merged.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, trained(ids).logits, atol=1e-4)
    assert isinstance(trained, PeftModel)


def test_lora_on_quant_grid_keeps_base_frozen(tmp_path, tiny_model, quantized, data_cfg):
    recover(tiny_model, quantized, tmp_path / "r", _cfg(lora=LoraConfig(r=4), select_best=False), data_cfg, progress=False)
    out = tmp_path / "r"
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    before, after = _weights(quantized), _weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before)
    load_constraint(out).verify(load_model(out, adapter=False))


def test_baselines(tmp_path, tiny_model, pruned, data_cfg):
    none = recover(tiny_model, pruned, tmp_path / "none", _cfg(method="none"), data_cfg, progress=False)
    assert len(none["history"]) == 1
    before, after = _weights(pruned), _weights(tmp_path / "none")
    assert all(torch.equal(before[k], after[k]) for k in before)
    replay = recover(tiny_model, pruned, tmp_path / "replay", _cfg(method="sft-replay"), data_cfg, progress=False)
    assert replay["constraint"]["sparsity"] == pytest.approx(0.5)


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_model, pruned, data_cfg):
    one = recover(tiny_model, pruned, tmp_path / "a", _cfg(offpolicy_steps=1, select_best=False), data_cfg, progress=False)
    two = recover(tiny_model, pruned, tmp_path / "b", _cfg(offpolicy_steps=1, grad_accum=2, select_best=False), data_cfg,
                  progress=False)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert one["tokens"] == two["tokens"]


def test_non_finite_loss_stops_and_keeps_best(tmp_path, tiny_model, pruned, data_cfg, monkeypatch):
    def poisoned(*args):
        loss, div = loss_sum(*args)
        return loss * float("nan"), div

    monkeypatch.setattr(trainer_mod, "loss_sum", poisoned)
    with pytest.raises(RecoverLMError, match="non-finite loss at step 1"):
        recover(tiny_model, pruned, tmp_path / "r", _cfg(), data_cfg, progress=False)
    assert _sparsity_ok(tmp_path / "r")["sparsity"] == pytest.approx(0.5)
    assert json.loads((tmp_path / "r" / "recoverlm" / "recovery.json").read_text())["stopped"].startswith("non-finite")


def test_vocabulary_mismatch_is_an_error(tmp_path, tiny_model, data_cfg):
    from helpers.tiny_model import build_tiny_model

    other = build_tiny_model(tmp_path / "other", corpus=["completely different words here"] * 5)
    with pytest.raises(RecoverLMError, match="tokenizer mismatch"):
        recover(tiny_model, other, tmp_path / "r", _cfg(), data_cfg, progress=False)


def test_empty_prompt_file_is_an_error(tmp_path, tiny_model, pruned, data_cfg):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(RecoverLMError, match="holds no records"):
        recover(tiny_model, pruned, tmp_path / "r", _cfg(), data_cfg.model_copy(update={"prompts": empty}), progress=False)


def test_missing_chat_template_is_an_error(tmp_path, tiny_model, pruned, data_cfg):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    cfg_path = plain / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(tok_cfg))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(RecoverLMError, match="no chat template"):
        recover(plain, pruned, tmp_path / "r", _cfg(), data_cfg, progress=False)


def test_overlong_prompts_are_counted(tmp_path, tiny_model, pruned, data_cfg):
    from recoverlm.data import encode_prompt, load_prompts
    from recoverlm.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    lengths = sorted(len(encode_prompt(tok, p)) for p in load_prompts(data_cfg.prompts))
    limit = lengths[len(lengths) // 2]
    n_over = sum(n > limit for n in lengths)
    assert 0 < n_over < len(lengths)
    logs = []
    recover(tiny_model, pruned, tmp_path / "r", _cfg(offpolicy_steps=1), data_cfg.model_copy(update={"max_prompt_tokens": limit}),
            progress=False, log=logs.append)
    assert any(f"exceed max_prompt_tokens={limit}: skipped" in line for line in logs)


@pytest.mark.parametrize("method,params", [("quant.nf4", {"blocksize": 32}), ("quant.gptq", {"bits": 3, "group_size": 32}),
                                           ("prune.nm", {"n": 2, "m": 4})])
def test_saved_constraints_survive_recovery(tmp_path, tiny_model, data_cfg, method, params):
    degraded = tmp_path / "deg"
    degrade(tiny_model, method, params, degraded, data_cfg=data_cfg)
    res = recover(tiny_model, degraded, tmp_path / "r", _cfg(lr=5e-2, select_best=False), data_cfg, progress=False)
    assert res["constraint"]["kind"] == load_constraint(degraded).kind
    load_constraint(tmp_path / "r").verify(load_model(tmp_path / "r"))


def test_hidden_weight_needs_distill_and_matching_layers(tmp_path, tiny_model, data_cfg):
    with pytest.raises(RecoverLMError, match="hidden_weight needs method 'distill'"):
        recover(tiny_model, tiny_model, tmp_path / "r", _cfg(method="sft-replay", hidden_weight=1.0), data_cfg,
                progress=False)
    shallow = tmp_path / "shallow"
    degrade(tiny_model, "prune.depth", {"n_blocks": 1}, shallow, data_cfg=data_cfg)
    with pytest.raises(RecoverLMError, match="the teacher has 2 layers of width 64, the student 1"):
        recover(tiny_model, shallow, tmp_path / "r", _cfg(hidden_weight=1.0), data_cfg, progress=False)
