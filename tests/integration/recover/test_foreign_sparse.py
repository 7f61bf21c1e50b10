"""A sparse model another tool wrote, without recoverlm's constraint files: its exact zeros are
found, kept through recovery, and an N:M pattern is named; `constraint: none` trains it dense."""

import shutil

import pytest
import torch
from helpers.recovery import short_config as _cfg
from helpers.recovery import weights as _weights

from recoverlm.constraints.infer import infer_sparsity
from recoverlm.degrade import degrade
from recoverlm.recover.trainer import recover
from recoverlm.runs import SIDE_DIR


def _foreign(tiny_model, tmp_path, method, params):
    """A degraded folder with recoverlm's own files taken away, as another pruning tool leaves it."""
    out = tmp_path / method
    degrade(tiny_model, method, params, out)
    shutil.rmtree(out / SIDE_DIR)
    return out


def test_zeros_of_a_foreign_sparse_model_are_kept(tmp_path, tiny_model, data_cfg):
    student = _foreign(tiny_model, tmp_path, "prune.magnitude", {"sparsity": 0.5})
    constraint, summary = infer_sparsity(student)
    assert summary["masked"] == summary["matrices"] > 0 and summary["sparsity"] == pytest.approx(0.5)
    logs = []
    res = recover(tiny_model, student, tmp_path / "r", _cfg(lr=5e-2, select_best=False), data_cfg,
                  progress=False, log=logs.append)
    assert any("inferred sparsity masks from exact zeros" in line for line in logs)
    assert res["constraint"]["kind"] == "sparsity" and res["constraint"]["sparsity"] == pytest.approx(0.5)
    before, after = _weights(student), _weights(tmp_path / "r")
    for name, mask in constraint.masks.items():
        assert torch.equal(after[name] == 0, ~mask), name  # every zero kept, no new ones
    assert any(not torch.equal(before[k], after[k]) for k in constraint.masks)


def test_nm_pattern_is_recognised_and_none_opts_out(tmp_path, tiny_model, data_cfg):
    student = _foreign(tiny_model, tmp_path, "prune.nm", {"n": 2, "m": 4})
    assert infer_sparsity(student)[1]["pattern"] == "2:4"
    recover(tiny_model, student, tmp_path / "dense", _cfg(lr=5e-2, select_best=False, constraint="none"),
            data_cfg, progress=False, log=lambda *_: None)
    after = _weights(tmp_path / "dense")
    zeros = [float((after[name] == 0).float().mean()) for name in infer_sparsity(student)[0].masks]
    assert max(zeros) < 0.1  # trained dense: the zeros filled in


def test_a_dense_model_is_left_dense(tmp_path, tiny_model):
    plain = shutil.copytree(tiny_model, tmp_path / "plain")
    constraint, summary = infer_sparsity(plain)
    assert constraint.kind == "none" and summary["masked"] == 0


@pytest.mark.parametrize("bits", [2, 3])
def test_a_float_model_fake_quantized_to_few_bits_is_not_read_as_pruned(tmp_path, tiny_model, bits):
    """Its zeros are a grid level: a quarter or more of its weights, yet none of them pruned."""
    from recoverlm.constraints.infer import describe_inferred

    student = _foreign(tiny_model, tmp_path, "quant.rtn", {"bits": bits, "group_size": 32, "symmetric": True})
    zeros = [float((w == 0).float().mean()) for w in _weights(student).values() if w.dim() == 2]
    assert max(zeros) >= 0.25  # what made such a folder read as sparse
    constraint, summary = infer_sparsity(student)
    assert constraint.kind == "none" and summary["masked"] == 0 and summary["on_grid"] > 0
    assert "grid levels, not pruning" in describe_inferred(summary)


def test_a_pruned_then_fake_quantized_model_keeps_its_mask(tmp_path, tiny_model):
    """2:4 zeros are pruning whatever the values: the pattern decides before the repetition does."""
    from safetensors.torch import save_file

    from recoverlm.degrade.quantize import rtn_grid

    student = _foreign(tiny_model, tmp_path, "prune.nm", {"n": 2, "m": 4})
    weights = _weights(student)
    for name, w in weights.items():
        if ".layers." in name and w.dim() == 2:
            scale, _ = rtn_grid(w, 3, 32, True)
            q = (w.float().reshape(w.shape[0], -1, 32) / scale.unsqueeze(-1)).round().clamp(-4, 3)
            weights[name] = (q * scale.unsqueeze(-1)).reshape(w.shape).to(w.dtype) * (w != 0)
    for f in student.glob("*.safetensors"):
        f.unlink()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(student / "model.safetensors"), metadata={"format": "pt"})
    constraint, summary = infer_sparsity(student)
    assert summary["masked"] == summary["matrices"] and summary["pattern"] == "2:4" and summary["on_grid"] == 0
