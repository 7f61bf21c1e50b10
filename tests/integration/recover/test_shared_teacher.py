"""One copy of the weights under LoRA when the student is the teacher's weights under its
Constraint: the same training as two separate models, chosen automatically, said once, and
refused where the student is not that projection (GPTQ moves the kept weights)."""

import pytest
import torch
from helpers.recovery import short_config, weights

from recoverlm.config import LoraConfig
from recoverlm.degrade import degrade
from recoverlm.lm.blocks import unwrapped
from recoverlm.recover.shared_teacher import TeacherView
from recoverlm.recover.trainer import Recovery


def _run(tiny_model, student, out, data_cfg, share):
    logs = []
    cfg = short_config(offpolicy_steps=2, onpolicy_steps=1, eval_every=1, hidden_weight=0.5, select_best=False,
                       lora=LoraConfig(r=4, alpha=8), share_teacher=share)
    run = Recovery(tiny_model, student, out, cfg, data_cfg, progress=False, log=logs.append)
    shared = isinstance(run.teacher, TeacherView) and run.teacher.module is unwrapped(run.student)
    record = run.run()
    return record, logs, shared


@pytest.mark.parametrize("method,params", [("prune.magnitude", {"sparsity": 0.5}),
                                           ("quant.rtn", {"bits": 4, "group_size": 16}),
                                           ("quant.nf4", {"blocksize": 32})])
def test_one_copy_trains_as_two_copies_do(tmp_path, tiny_model, data_cfg, method, params):
    student = tmp_path / "deg"
    degrade(tiny_model, method, params, student, data_cfg=data_cfg)
    one, logs, shared = _run(tiny_model, student, tmp_path / "one", data_cfg, "auto")
    assert shared and any("one copy of the weights" in line for line in logs)
    two, _, shared_off = _run(tiny_model, student, tmp_path / "two", data_cfg, "off")
    assert not shared_off
    for a, b in zip(one["history"], two["history"]):
        for key in ("kl", "loss", "hidden"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in w2:
        assert torch.allclose(w1[name], w2[name], atol=1e-6), name
    assert one["constraint"] == two["constraint"]
    if method == "prune.magnitude":  # merged into the weights (a grid keeps its base and ships the adapter beside it)
        degraded = weights(student)
        assert any(not torch.equal(w1[n], degraded[n]) for n in degraded), "the adapter was lost in the merge"
    else:
        assert (tmp_path / "one" / "adapter" / "adapter_config.json").is_file()


def test_a_masked_matrix_without_an_adapter_keeps_two_copies(tmp_path, tiny_model, data_cfg):
    student = tmp_path / "deg"
    degrade(tiny_model, "prune.magnitude", {"sparsity": 0.5}, student)
    logs = []
    cfg = short_config(offpolicy_steps=1, lora=LoraConfig(r=4, alpha=8, target_modules=["q_proj"]))
    run = Recovery(tiny_model, student, tmp_path / "r", cfg, data_cfg, progress=False, log=logs.append)
    assert not isinstance(run.teacher, TeacherView)
    assert any("two copies" in line and "not adapted" in line for line in logs)


def test_a_student_that_is_not_the_teachers_projection_keeps_two_copies(tmp_path, tiny_model, data_cfg):
    student = tmp_path / "gptq"
    degrade(tiny_model, "quant.gptq", {"bits": 4, "group_size": 16}, student, data_cfg=data_cfg)
    _, logs, shared = _run(tiny_model, student, tmp_path / "r", data_cfg, "auto")
    assert not shared and any("two copies" in line and "not the teacher's" in line for line in logs)
