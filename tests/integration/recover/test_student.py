"""The student during recovery on tiny models: on-policy sampling, its precision, and grid weights cached for it."""

import contextlib

import pytest
import torch
from helpers.recovery import short_config as _cfg

from recoverlm.recover import student as student_mod
from recoverlm.recover import trainer as trainer_mod
from recoverlm.recover.trainer import recover


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


def test_lmbda_zero_never_samples(tmp_path, tiny_model, pruned, data_cfg, monkeypatch):
    monkeypatch.setattr(student_mod, "sample", lambda *a, **k: pytest.fail("sampled with lmbda=0"))
    recover(tiny_model, pruned, tmp_path / "r", _cfg(offpolicy_steps=0, onpolicy_steps=2, lmbda=0.0), data_cfg, progress=False)


def test_cached_grid_weights_sample_what_the_grid_computes(tmp_path, tiny_model, quantized, data_cfg, monkeypatch):
    run = trainer_mod.Recovery(tiny_model, quantized, tmp_path / "r", _cfg(onpolicy_steps=1), data_cfg, progress=False)
    prompts = run.train_set.prompt_ids[:4]

    def sample():
        return student_mod.sample(run.acc, run.student, run.tokenizer, prompts, run.cfg, 3, run.sharded)

    cached = sample()
    monkeypatch.setattr(student_mod, "cached_weights", lambda sharded: contextlib.nullcontext())
    assert sample() == cached
