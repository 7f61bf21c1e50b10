"""An interrupted recovery resumes from its checkpoint and ends where a straight run ends."""

import pytest
from helpers.recovery import short_config as _cfg, weights as _weights

from recoverlm.recover import trainer as trainer_mod
from recoverlm.recover.trainer import recover


@pytest.mark.parametrize("student,grid_scales", [("pruned", "fixed"), ("quantized", "learned")])
def test_resume_continues_exactly(tmp_path, tiny_model, student, grid_scales, data_cfg, monkeypatch, request):
    degraded = request.getfixturevalue(student)
    cfg = _cfg(offpolicy_steps=4, save_every=2, select_best=False, grid_scales=grid_scales)
    straight = recover(tiny_model, degraded, tmp_path / "straight", cfg, data_cfg, progress=False)
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
    resumed = recover(tiny_model, degraded, tmp_path / "resumed", cfg, data_cfg, progress=False, resume=True)
    assert resumed["tokens"] == straight["tokens"]  # the tokens trained before the interruption count too
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert not (tmp_path / "resumed.work").exists()
