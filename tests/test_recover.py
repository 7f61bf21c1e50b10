"""The recovery trainer on tiny models: both stages, divergences, baselines, LoRA, constraints, resume."""

import contextlib
import json

import pytest
import torch
from safetensors.torch import load_file

from recoverlm.config import DataConfig, LoraConfig, RecoverConfig
from recoverlm.constraints import load_constraint
from recoverlm.degrade import degrade
from recoverlm.errors import RecoverLMError
from recoverlm.models import load_model
from recoverlm.recover import student as student_mod
from recoverlm.recover import trainer as trainer_mod
from recoverlm.recover.objective import loss_mask, loss_sum
from recoverlm.recover.timing import PhaseTimer
from recoverlm.recover.trainer import recover


@pytest.fixture(scope="module")
def data_cfg(prompt_file):
    return DataConfig(prompts=prompt_file, n_heldout=4, max_new_tokens=8, top_k_logits=8,
                      teacher_generation_dtype="float32")


@pytest.fixture(scope="module")
def pruned(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "m"
    degrade(tiny_model, "prune.magnitude", {"sparsity": 0.5}, out)
    return out


@pytest.fixture(scope="module")
def quantized(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("quant") / "m"
    degrade(tiny_model, "quant.rtn", {"bits": 4, "group_size": 32}, out)
    return out


def _cfg(**kw):
    base = dict(offpolicy_steps=3, onpolicy_steps=0, batch_size=4, lr=5e-3, warmup_steps=1, eval_every=0,
                cka_every_eval=False, onpolicy_max_new_tokens=6)
    return RecoverConfig(**{**base, **kw})


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _sparsity_ok(folder):
    model = load_model(folder)
    return load_constraint(folder).verify(model)


def test_loss_mask_skips_first_tokens():
    assert loss_mask([3, 1], 1).tolist() == [False, True, True, False]


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_offpolicy_divergences_train_and_keep_masks(tmp_path, tiny_model, pruned, data_cfg, divergence):
    res = recover(tiny_model, pruned, tmp_path / "r", _cfg(divergence=divergence, select_best=False), data_cfg,
                  progress=False)
    assert res["constraint"]["sparsity"] == pytest.approx(0.5)
    assert _sparsity_ok(tmp_path / "r")["sparsity"] == pytest.approx(0.5)
    before, after = _weights(pruned), _weights(tmp_path / "r")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_onpolicy_stage_samples_from_student(tmp_path, tiny_model, pruned, data_cfg, monkeypatch):
    timer = PhaseTimer()
    res = recover(tiny_model, pruned, tmp_path / "r", _cfg(offpolicy_steps=1, onpolicy_steps=2, onpolicy_divergence="jsd",
                                                           eval_every=1), data_cfg, progress=False, timer=timer)
    assert timer.calls["sample"] == 2 and timer.tokens["sample"] > 0
    assert [h["stage"] for h in res["history"]] == ["start", "off-policy", "on-policy", "on-policy"]
    _sparsity_ok(tmp_path / "r")


@pytest.mark.parametrize("student,bf16,autocast", [("pruned", True, True), ("pruned", False, False),
                                                   ("quantized", True, False)])
def test_onpolicy_sampling_precision(tmp_path, tiny_model, data_cfg, monkeypatch, request, student, bf16, autocast):
    """bf16 runs sample under autocast, except a grid student, whose computed weights autocast would
    cast again at every token."""
    seen = []
    real = student_mod.generate

    def spy(*a, **k):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return real(*a, **k)

    monkeypatch.setattr(student_mod, "generate", spy)
    recover(tiny_model, request.getfixturevalue(student), tmp_path / "r",
            _cfg(offpolicy_steps=0, onpolicy_steps=1, bf16=bf16, select_best=False), data_cfg, progress=False)
    assert seen == [autocast]


def test_runs_in_one_process_may_differ_in_precision(tmp_path, tiny_model, pruned, data_cfg):
    """accelerate keeps one state per process; the Python API must not be stuck with the first run's."""
    for i, bf16 in enumerate((True, False)):
        res = recover(tiny_model, pruned, tmp_path / f"r{i}", _cfg(bf16=bf16, select_best=False), data_cfg, progress=False)
        assert res["recover"]["bf16"] is bf16


def test_lmbda_zero_never_samples(tmp_path, tiny_model, pruned, data_cfg, monkeypatch):
    monkeypatch.setattr(student_mod, "sample", lambda *a, **k: pytest.fail("sampled with lmbda=0"))
    recover(tiny_model, pruned, tmp_path / "r", _cfg(offpolicy_steps=0, onpolicy_steps=2, lmbda=0.0), data_cfg, progress=False)


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
    grid_before = load_file(str(quantized / "quant_grid.safetensors"))
    grid_after = load_file(str(tmp_path / "r" / "quant_grid.safetensors"))
    assert any(not torch.equal(grid_before[k], grid_after[k]) for k in grid_before if k.endswith(".scale"))
    assert all(torch.equal(grid_before[k], grid_after[k]) for k in grid_before if k.endswith(".zero"))
    load_constraint(tmp_path / "r").verify(load_model(tmp_path / "r"))


def test_cached_grid_weights_sample_what_the_grid_computes(tmp_path, tiny_model, quantized, data_cfg, monkeypatch):
    run = trainer_mod.Recovery(tiny_model, quantized, tmp_path / "r", _cfg(onpolicy_steps=1), data_cfg, progress=False)
    prompts = run.train_set.prompt_ids[:4]

    def sample():
        return student_mod.sample(run.acc, run.student, run.tokenizer, prompts, run.cfg, 3, run.sharded)

    cached = sample()
    monkeypatch.setattr(student_mod, "frozen_weights", lambda sharded: contextlib.nullcontext())
    assert sample() == cached


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
    assert (out / "adapter" / "adapter_config.json").exists()
    assert res["constraint"]["sparsity"] == pytest.approx(0.5)
    # The merged, re-masked export computes exactly what the masked adapter computed in training.
    from peft import PeftModel

    from recoverlm.constraints.lora import wrap_lora

    merged = load_model(out)
    base = load_model(pruned)
    trained = wrap_lora(base, LoraConfig(r=4), load_constraint(pruned))
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
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
    load_constraint(out).verify(load_model(out))


def test_baselines(tmp_path, tiny_model, pruned, data_cfg):
    none = recover(tiny_model, pruned, tmp_path / "none", _cfg(method="none"), data_cfg, progress=False)
    assert len(none["history"]) == 1
    before, after = _weights(pruned), _weights(tmp_path / "none")
    assert all(torch.equal(before[k], after[k]) for k in before)
    replay = recover(tiny_model, pruned, tmp_path / "replay", _cfg(method="sft-replay"), data_cfg, progress=False)
    assert replay["constraint"]["sparsity"] == pytest.approx(0.5)


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


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_model, pruned, data_cfg):
    one = recover(tiny_model, pruned, tmp_path / "a", _cfg(offpolicy_steps=1, select_best=False), data_cfg, progress=False)
    two = recover(tiny_model, pruned, tmp_path / "b", _cfg(offpolicy_steps=1, grad_accum=2, select_best=False), data_cfg,
                  progress=False)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert one["tokens"] == two["tokens"]


@pytest.mark.parametrize("student,grid_scales", [("pruned", "fixed"), ("quantized", "learned")])
def test_resume_continues_exactly(tmp_path, tiny_model, student, grid_scales, data_cfg, monkeypatch, request):
    degraded = request.getfixturevalue(student)
    cfg = _cfg(offpolicy_steps=4, save_every=2, select_best=False, grid_scales=grid_scales)
    recover(tiny_model, degraded, tmp_path / "straight", cfg, data_cfg, progress=False)
    real = trainer_mod.Recovery.train_step

    def crash(self, step, *a):
        if step == 3:
            raise KeyboardInterrupt
        return real(self, step, *a)

    monkeypatch.setattr(trainer_mod.Recovery, "train_step", crash)
    with pytest.raises(KeyboardInterrupt):
        recover(tiny_model, degraded, tmp_path / "resumed", cfg, data_cfg, progress=False)
    assert not (tmp_path / "resumed").exists()
    assert (tmp_path / "resumed.work" / "checkpoint" / "state.json").exists()
    monkeypatch.setattr(trainer_mod.Recovery, "train_step", real)
    recover(tiny_model, degraded, tmp_path / "resumed", cfg, data_cfg, progress=False, resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert not (tmp_path / "resumed.work").exists()


def test_non_finite_loss_stops_and_keeps_best(tmp_path, tiny_model, pruned, data_cfg, monkeypatch):
    def poisoned(*args):
        loss, div = loss_sum(*args)
        return loss * float("nan"), div

    monkeypatch.setattr(trainer_mod, "loss_sum", poisoned)
    with pytest.raises(RecoverLMError, match="non-finite loss at step 1"):
        recover(tiny_model, pruned, tmp_path / "r", _cfg(), data_cfg, progress=False)
    assert _sparsity_ok(tmp_path / "r")["sparsity"] == pytest.approx(0.5)
    assert json.loads((tmp_path / "r" / "recovery.json").read_text())["stopped"].startswith("non-finite")


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
    degrade(tiny_model, method, params, degraded)
    res = recover(tiny_model, degraded, tmp_path / "r", _cfg(lr=5e-2, select_best=False), data_cfg, progress=False)
    assert res["constraint"]["kind"] == load_constraint(degraded).kind
    load_constraint(tmp_path / "r").verify(load_model(tmp_path / "r"))


def test_task_prompts_are_scored_by_the_task_teacher(tmp_path, tiny_model, pruned, data_cfg):
    tasks = tmp_path / "task.jsonl"
    tasks.write_text("\n".join(json.dumps({"prompt": f"Extract the city: Ann lives in {c}."}) for c in
                               ["Oslo", "Rome", "Lima", "Kyiv", "Cairo", "Quito"]))
    cfg = data_cfg.model_copy(update={"task_prompts": tasks})
    run = trainer_mod.Recovery(tiny_model, pruned, tmp_path / "r", _cfg(offpolicy_steps=1, onpolicy_steps=2, batch_size=8),
                               cfg, progress=False)
    assert set(run.train_set.sources) == {0, 1} and run.teachers.task_teacher is not None
    mixed = [i for i, s in enumerate(run.train_set.sources) if s == 0][:2] + \
            [i for i, s in enumerate(run.train_set.sources) if s == 1][:2]
    mb = run._micro_batches(1, mixed, on_policy=False)[0]
    logits, states = run.teachers.outputs(mb, run.pad_id, hidden=True)
    with torch.no_grad():
        from recoverlm.lm.forward import completion_outputs

        main = completion_outputs(run.teacher, mb.batch, hidden=True)
        task = completion_outputs(run.teachers.task_teacher, mb.batch, hidden=True)
    rows = torch.repeat_interleave(torch.tensor(mb.sources), torch.tensor(mb.response_lengths))
    assert torch.allclose(logits[rows == 0], main[0][rows == 0], atol=1e-4)
    assert torch.allclose(logits[rows == 1], task[0][rows == 1], atol=1e-4)
    assert torch.allclose(states[:, rows == 0], main[1][:, rows == 0], atol=1e-4)
    assert torch.allclose(states[:, rows == 1], task[1][:, rows == 1], atol=1e-4)
    res = run.run()
    assert res["constraint"]["sparsity"] == pytest.approx(0.5)


def test_hidden_states_are_matched_per_position_and_layer(tmp_path, tiny_model, pruned, data_cfg):
    """With hidden_weight the loss adds the relative hidden-state error, taken against the teacher's
    states at exactly the positions the logits score, in both stages."""
    from recoverlm.lm.forward import completion_outputs
    from recoverlm.ops.divergences import hidden_relative_mse

    run = trainer_mod.Recovery(tiny_model, pruned, tmp_path / "r", _cfg(hidden_weight=2.0, onpolicy_steps=1), data_cfg,
                               progress=False)
    for on_policy in (False, True):
        mb = run._micro_batches(1, [0, 1, 2, 3], on_policy=on_policy)[0]
        total, parts = loss_sum(run.student, mb, run.cfg, run.teachers, run.train_set, run.pad_id)
        with torch.no_grad():
            s_logits, s_states = completion_outputs(run.student, mb.batch, hidden=True)
            _, t_states = completion_outputs(run.teacher, mb.batch, hidden=True)
        assert s_states.shape == (run.teacher.config.num_hidden_layers, s_logits.shape[0], run.teacher.config.hidden_size)
        expected = float((hidden_relative_mse(s_states, t_states) * mb.keep).sum()) / mb.n_tokens
        assert parts["hidden"] == pytest.approx(expected, rel=1e-4) and expected > 0
        assert float(total.detach()) / mb.n_tokens == pytest.approx(parts["divergence"] + 2.0 * expected, rel=1e-4)
    res = run.run()
    assert "train_hidden" in res["history"][-1] and res["constraint"]["sparsity"] == pytest.approx(0.5)


def test_hidden_weight_needs_distill_and_matching_layers(tmp_path, tiny_model, data_cfg):
    with pytest.raises(RecoverLMError, match="hidden_weight needs method 'distill'"):
        recover(tiny_model, tiny_model, tmp_path / "r", _cfg(method="sft-replay", hidden_weight=1.0), data_cfg,
                progress=False)
    shallow = tmp_path / "shallow"
    degrade(tiny_model, "prune.depth", {"n_blocks": 1}, shallow)
    with pytest.raises(RecoverLMError, match="the teacher has 2 layers of width 64, the student 1"):
        recover(tiny_model, shallow, tmp_path / "r", _cfg(hidden_weight=1.0), data_cfg, progress=False)
