"""The recovery loss on tiny models: the hidden-state term, per position and layer, in both stages."""

import pytest
import torch
from helpers.recovery import short_config as _cfg

from recoverlm.recover import trainer as trainer_mod
from recoverlm.recover.objective import loss_sum


def test_hidden_states_are_matched_per_position_and_layer(tmp_path, tiny_model, pruned, data_cfg):
    """With hidden_weight the loss adds the relative hidden-state error, taken against the teacher's
    states at exactly the positions the logits score, in both stages."""
    from recoverlm.lm.forward import completion_outputs
    from recoverlm.ops.divergences import hidden_relative_mse

    run = trainer_mod.Recovery(tiny_model, pruned, tmp_path / "r", _cfg(hidden_weight=2.0, onpolicy_steps=1), data_cfg,
                               progress=False)
    for on_policy in (False, True):
        mb = run.micro_batches(1, [0, 1, 2, 3], on_policy=on_policy)[0]
        total, parts = loss_sum(run.student, mb, run.cfg, run.teachers, run.train_set, run.pad_id)
        with torch.no_grad():
            s_logits, s_states = completion_outputs(run.student, mb.batch, hidden=True)
            _, t_states = completion_outputs(run.teacher, mb.batch, hidden=True)
        assert s_states.shape == (run.teacher.config.num_hidden_layers, s_logits.shape[0], run.teacher.config.hidden_size)
        expected = float((hidden_relative_mse(s_states, t_states) * mb.keep).sum()) / mb.n_tokens
        assert parts["hidden"] == pytest.approx(expected, rel=1e-4) and expected > 0
        assert float(total.detach()) / mb.n_tokens == pytest.approx(parts["divergence"] + 2.0 * expected, rel=1e-4)
    res = run.run()
    assert "train_hidden" in res["history"][-1] and res["constraint"]["sparsity"] == pytest.approx(0.5)
