"""recover.train_blocks on the tiny model: only the chosen decoder blocks change (full fine-tuning
and LoRA), the CKA rules measure the damaged student and say what they chose in recovery.json."""

import json

import pytest
import torch
from helpers.recovery import short_config, verified, weights
from safetensors.torch import load_file

from recoverlm.config import LoraConfig
from recoverlm.degrade import degrade
from recoverlm.errors import RecoverLMError
from recoverlm.recover.trainer import Recovery, recover


def _in_block(key: str, block: int) -> bool:
    return f".layers.{block}." in key


def _only_block_changed(before: dict, after: dict, block: int) -> None:
    assert before.keys() == after.keys()
    outside = [k for k in before if not _in_block(k, block)]
    assert outside and all(torch.equal(before[k], after[k]) for k in outside), \
        [k for k in outside if not torch.equal(before[k], after[k])]
    assert any(not torch.equal(before[k], after[k]) for k in before if _in_block(k, block))


def test_full_fine_tuning_changes_only_the_chosen_block(tmp_path, tiny_model, pruned, data_cfg):
    logs = []
    res = recover(tiny_model, pruned, tmp_path / "r", short_config(train_blocks=[1], lr=2e-2, select_best=False),
                  data_cfg, progress=False, log=logs.append)
    _only_block_changed(weights(pruned), weights(tmp_path / "r"), 1)
    assert verified(tmp_path / "r")["sparsity"] == pytest.approx(0.5)
    note = res["train_blocks"]
    assert note["choice"] == [1] and note["blocks"] == [1] and note["of"] == 2 and "scores" not in note
    block_1 = sum(v.numel() for k, v in weights(pruned).items() if _in_block(k, 1))
    assert note["trained_parameters"] == block_1 < note["total_parameters"]
    assert "train_blocks [1]: blocks [1] of 2" in logs


def test_all_blocks_records_the_trained_parameter_count(tmp_path, tiny_model, pruned, data_cfg):
    res = recover(tiny_model, pruned, tmp_path / "r", short_config(offpolicy_steps=1), data_cfg, progress=False)
    note = res["train_blocks"]
    assert note["choice"] == "all" and note["blocks"] == [0, 1]
    assert note["trained_parameters"] == note["total_parameters"] > 0


def test_lora_adapts_and_merges_only_the_chosen_block(tmp_path, tiny_model, pruned, data_cfg):
    logs = []
    res = recover(tiny_model, pruned, tmp_path / "r",
                  short_config(train_blocks=[1], lora=LoraConfig(r=4), lr=2e-2, select_best=False), data_cfg,
                  progress=False, log=logs.append)
    out = tmp_path / "r"
    adapter = load_file(str(out / "recoverlm" / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(_in_block(k, 1) for k in adapter)
    assert json.loads((out / "recoverlm" / "adapter" / "adapter_config.json").read_text())["layers_to_transform"] == [1]
    # masked layers left without an adapter cannot take their mask from the masked adapter
    assert any("two copies" in line and "train_blocks" in line for line in logs)
    _only_block_changed(weights(pruned), weights(out), 1)
    assert verified(out)["sparsity"] == pytest.approx(0.5)
    assert res["train_blocks"]["trained_parameters"] == sum(v.numel() for v in adapter.values())


def test_least_aligned_measures_the_damaged_student_and_records_it(tmp_path, tiny_model, pruned, data_cfg):
    logs = []
    cfg = short_config(train_blocks={"least_aligned": 1}, offpolicy_steps=1, cka_every_eval=True, select_best=False)
    res = recover(tiny_model, pruned, tmp_path / "r", cfg, data_cfg, progress=False, log=logs.append)
    record = json.loads((tmp_path / "r" / "recoverlm" / "recovery.json").read_text())
    note = record["train_blocks"]
    assert note["choice"] == {"least_aligned": 1, "score": "drop"} and note["score"] == "drop"
    cka, scores = note["cka"], note["scores"]
    assert len(cka) == 3 and scores == pytest.approx([cka[0] - cka[1], cka[1] - cka[2]])
    assert note["blocks"] == [max(range(2), key=lambda b: (scores[b], -b))]
    assert cka == pytest.approx(res["history"][0]["cka"], abs=1e-6)  # the step-0 evaluation saw the same model
    assert any(line.startswith("train_blocks least_aligned 1 (score drop): blocks ") for line in logs)
    _only_block_changed(weights(pruned), weights(tmp_path / "r"), note["blocks"][0])


def test_one_copy_teacher_measures_what_two_copies_measure(tmp_path, tiny_model, quantized, data_cfg):
    """LoRA on a grid shares the teacher's weights: the CKA comes from the grid attached against it lifted."""
    runs = {}
    for share in ("auto", "off"):
        cfg = short_config(train_blocks={"most_aligned": 1, "score": "output"}, lora=LoraConfig(r=4),
                           share_teacher=share)
        runs[share] = Recovery(tiny_model, quantized, tmp_path / share, cfg, data_cfg, progress=False,
                               log=lambda *_: None)
    assert runs["auto"].shared and not runs["off"].shared
    one, two = runs["auto"].notes["train_blocks"], runs["off"].notes["train_blocks"]
    assert one["cka"] == pytest.approx(two["cka"], abs=1e-5) and one["blocks"] == two["blocks"]
    assert min(one["cka"][1:]) < 0.9999  # the grid was attached: the student is not the teacher
    adapted = {n for n, p in runs["auto"].student.named_parameters() if p.requires_grad}
    assert adapted and all(_in_block(n, one["blocks"][0]) for n in adapted)
    runs["auto"].run()
    load_file(str(tmp_path / "auto" / "adapter" / "adapter_model.safetensors"))  # beside the grid: part of the model


def test_choices_beyond_the_depth_fail_before_teacher_work(tmp_path, tiny_model, pruned, data_cfg):
    with pytest.raises(RecoverLMError, match="K = 3 exceeds the student's 2 blocks"):
        recover(tiny_model, pruned, tmp_path / "r", short_config(train_blocks={"random": 3}), data_cfg, progress=False)
    with pytest.raises(RecoverLMError, match="block 2 does not exist"):
        recover(tiny_model, pruned, tmp_path / "r", short_config(train_blocks=[2]), data_cfg, progress=False)
    shallow = tmp_path / "shallow"
    degrade(tiny_model, "prune.depth", {"n_blocks": 1}, shallow, data_cfg=data_cfg)
    with pytest.raises(RecoverLMError, match="needs the teacher's depth"):
        recover(tiny_model, shallow, tmp_path / "r", short_config(train_blocks={"least_aligned": 1}), data_cfg,
                progress=False)



def test_grid_student_trains_only_the_chosen_blocks_latents(tmp_path, tiny_model, quantized, data_cfg):
    """QAT with checkpointing: the frozen embeddings must not cut the gradient into block 0. (Fixed
    scales: learned ones round-trip through a log and move the frozen blocks' values by ~1e-8.)"""
    cfg = short_config(train_blocks=[0], lr=5e-2, gradient_checkpointing=True, select_best=False)
    recover(tiny_model, quantized, tmp_path / "r", cfg, data_cfg, progress=False)
    _only_block_changed(weights(quantized), weights(tmp_path / "r"), 0)
    verified(tmp_path / "r")
