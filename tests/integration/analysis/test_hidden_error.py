"""The relative hidden-state error between a teacher and its degraded copies."""

import pytest
import torch

from recoverlm.models import load_model


PAD = 2


def test_relative_hidden_error_is_zero_for_the_teacher_and_grows_with_damage(tiny_model, eval_set, tmp_path):
    from recoverlm.analysis.hidden_error import relative_hidden_error
    from recoverlm.data import collate
    from recoverlm.degrade import degrade
    from recoverlm.ops.divergences import hidden_relative_mse
    from recoverlm.lm.forward import completion_outputs

    teacher = load_model(tiny_model).eval()
    assert relative_hidden_error(teacher, teacher, eval_set, PAD) == [0.0] * teacher.config.num_hidden_layers
    errors = {}
    for sparsity in (0.2, 0.6):
        degrade(tiny_model, "prune.magnitude", {"sparsity": sparsity}, tmp_path / str(sparsity))
        errors[sparsity] = relative_hidden_error(teacher, load_model(tmp_path / str(sparsity)).eval(), eval_set, PAD,
                                                 batch_size=4)
    assert all(0 < a < b for a, b in zip(errors[0.2], errors[0.6]))
    # batching (and its padding) does not change the value: the trainer's loss averaged over positions
    student = load_model(tmp_path / "0.6").eval()
    batch = collate(eval_set.prompt_ids, eval_set.response_ids, PAD)
    with torch.no_grad():
        s, t = completion_outputs(student, batch, hidden=True)[1], completion_outputs(teacher, batch, hidden=True)[1]
    assert sum(errors[0.6]) / len(errors[0.6]) == pytest.approx(float(hidden_relative_mse(s, t).mean()), rel=1e-5)
