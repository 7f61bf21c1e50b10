"""A recovery with the teacher placed and offloaded trains as one without, and asks for the
teacher exactly at evaluations and at the steps that run it."""

import torch
from helpers.recovery import short_config, weights

from recoverlm.recover.placement import TeacherPlacement
from recoverlm.recover.trainer import recover


def test_placement_asks_for_the_teacher_where_it_runs(tmp_path, tiny_model, pruned, data_cfg, monkeypatch):
    asked = []
    real = TeacherPlacement.need

    def spy(self, needed):
        asked.append(needed)
        return real(self, needed)

    monkeypatch.setattr(TeacherPlacement, "need", spy)
    cfg = short_config(offpolicy_steps=2, onpolicy_steps=1, eval_every=2, select_best=False)
    plain = recover(tiny_model, pruned, tmp_path / "plain", cfg, data_cfg, progress=False)
    # eval at 0, off-policy 1 and 2 (cached top-k), eval at 2, on-policy 3, eval at 3
    assert asked == [True, False, False, True, True, True]
    asked.clear()
    placed = cfg.model_copy(update={"teacher_device": "cpu", "teacher_offload": True})
    out = recover(tiny_model, pruned, tmp_path / "placed", placed, data_cfg, progress=False)
    assert asked == [True, False, False, True, True, True]
    assert out["history"][-1]["kl"] == plain["history"][-1]["kl"]
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "placed")
    assert all(torch.equal(a[k], b[k]) for k in a)
