"""The teachers of a recovery: task prompts are scored by the task teacher."""

import json

import pytest
import torch
from helpers.recovery import short_config as _cfg

from recoverlm.recover import trainer as trainer_mod


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
    mb = run.micro_batches(1, mixed, on_policy=False)[0]
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


@pytest.mark.parametrize("term", [{"hidden_weight": 1.0}, {"cka_weight": 1.0}, {}])
def test_off_policy_hidden_targets_load_the_task_teacher(tmp_path, tiny_model, pruned, data_cfg, term):
    """Without an on-policy stage the task teacher still runs live where its rows need hidden
    states (the hidden-state or CKA term); with neither, its cached top-k is all it gives."""
    tasks = tmp_path / "task.jsonl"
    tasks.write_text("\n".join(json.dumps({"prompt": f"Extract the city: Ann lives in {c}."}) for c in ["Oslo", "Rome"]))
    run = trainer_mod.Recovery(tiny_model, pruned, tmp_path / "r", _cfg(offpolicy_steps=1, **term),
                               data_cfg.model_copy(update={"task_prompts": tasks}), progress=False)
    assert (run.teachers.task_teacher is not None) == bool(term)
