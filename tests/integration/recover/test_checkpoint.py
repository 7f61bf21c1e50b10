"""An interrupted recovery resumes from its checkpoint and ends where a straight run ends."""

import pytest
import torch
from helpers.recovery import crash_at, short_config as _cfg, weights as _weights

from recoverlm.recover import trainer as trainer_mod
from recoverlm.recover.trainer import recover


@pytest.mark.parametrize("student,grid_scales,ema", [("pruned", "fixed", False), ("quantized", "learned", False),
                                                     ("pruned", "fixed", True)])
def test_resume_continues_exactly(tmp_path, tiny_model, student, grid_scales, ema, data_cfg, monkeypatch, request):
    """With an EMA teacher too: the tiny model ties its head to its embeddings, which the EMA copy
    holds as one tensor under two names."""
    degraded = request.getfixturevalue(student)
    extra = {"teacher_mode": "ema", "onpolicy_steps": 2, "offpolicy_steps": 2} if ema else {"offpolicy_steps": 4}
    cfg = _cfg(save_every=2, select_best=False, grid_scales=grid_scales, **extra)
    straight = recover(tiny_model, degraded, tmp_path / "straight", cfg, data_cfg, progress=False)
    crash_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        recover(tiny_model, degraded, tmp_path / "resumed", cfg, data_cfg, progress=False)
    assert not (tmp_path / "resumed").exists()
    assert (tmp_path / "resumed.work" / "checkpoint" / "state.json").exists()
    monkeypatch.undo()
    resumed = recover(tiny_model, degraded, tmp_path / "resumed", cfg, data_cfg, progress=False, resume=True)
    assert resumed["tokens"] == straight["tokens"]  # the tokens trained before the interruption count too
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert not (tmp_path / "resumed.work").exists()


def test_an_interrupt_finishes_the_step_and_checkpoints_it(tmp_path, tiny_model, pruned, data_cfg, monkeypatch):
    """Ctrl-C without save_every: the step in flight finishes and is checkpointed, and a resumed
    run ends where an uninterrupted one does."""
    import os
    import signal

    cfg = _cfg(offpolicy_steps=4, select_best=False)
    recover(tiny_model, pruned, tmp_path / "straight", cfg, data_cfg, progress=False)
    real = trainer_mod.Recovery.train_step

    def interrupted_at_3(self, step, *a):
        out = real(self, step, *a)
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the step's results are being kept
        return out

    monkeypatch.setattr(trainer_mod.Recovery, "train_step", interrupted_at_3)
    logs = []
    with pytest.raises(KeyboardInterrupt):
        recover(tiny_model, pruned, tmp_path / "resumed", cfg, data_cfg, progress=False, log=logs.append)
    assert any("stopped after step 3" in line for line in logs)
    monkeypatch.setattr(trainer_mod.Recovery, "train_step", real)
    recover(tiny_model, pruned, tmp_path / "resumed", cfg, data_cfg, progress=False, resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_resumes_only_the_run_that_wrote_it(tmp_path, tiny_model, pruned, quantized, data_cfg, monkeypatch):
    """Other settings or another student are refused in one line; so is a damaged file; where and
    how the run is carried out (here its checkpoint cadence) may change."""
    from recoverlm.errors import RecoverLMError

    cfg = _cfg(offpolicy_steps=4, save_every=2, select_best=False)
    crash_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        recover(tiny_model, pruned, tmp_path / "r", cfg, data_cfg, progress=False)
    monkeypatch.undo()
    with pytest.raises(RecoverLMError, match="written by a recovery with other settings"):
        recover(tiny_model, pruned, tmp_path / "r", cfg.model_copy(update={"lr": 1e-3}), data_cfg, progress=False,
                resume=True)
    with pytest.raises(RecoverLMError, match="written by a recovery with other student"):
        recover(tiny_model, quantized, tmp_path / "r", cfg, data_cfg, progress=False, resume=True)
    checkpoint = tmp_path / "r.work" / "checkpoint"
    kept = (checkpoint / "rng.safetensors").read_bytes()
    (checkpoint / "rng.safetensors").write_bytes(kept[:40])
    with pytest.raises(RecoverLMError, match=r"checkpoint in .*checkpoint cannot be read.*delete .*r\.work"):
        recover(tiny_model, pruned, tmp_path / "r", cfg, data_cfg, progress=False, resume=True)
    (checkpoint / "rng.safetensors").write_bytes(kept)
    resumed = recover(tiny_model, pruned, tmp_path / "r", cfg.model_copy(update={"save_every": 3}),
                      data_cfg, progress=False, resume=True)
    assert resumed["tokens"] > 0 and not (tmp_path / "r.work").exists()
