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
