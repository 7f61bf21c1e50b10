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


def test_cross_entropy_is_on_the_teachers_tokens_only(tmp_path, tiny_model, pruned, data_cfg):
    """ce_weight adds the cross-entropy of the teacher's cached responses; on-policy responses are
    the student's own samples, which it must not be taught to make likelier."""
    run = trainer_mod.Recovery(tiny_model, pruned, tmp_path / "r", _cfg(ce_weight=0.5, onpolicy_steps=1), data_cfg,
                               progress=False)
    plain = trainer_mod.Recovery(tiny_model, pruned, tmp_path / "p", _cfg(onpolicy_steps=1), data_cfg, progress=False)
    for on_policy, adds in ((False, True), (True, False)):
        mb = run.micro_batches(1, [0, 1, 2, 3], on_policy=on_policy)[0]
        with_ce, _ = loss_sum(run.student, mb, run.cfg, run.teachers, run.train_set, run.pad_id)
        without, _ = loss_sum(plain.student, mb, plain.cfg, plain.teachers, plain.train_set, plain.pad_id)
        with_ce, without = float(with_ce.detach()), float(without.detach())
        assert (with_ce > without + 1e-3) is adds
        if not adds:
            assert with_ce == pytest.approx(without, rel=1e-6)


def test_each_micro_batch_samples_its_own_stream(tmp_path, tiny_model, pruned, data_cfg):
    """A prompt in two micro-batches of one on-policy step is sampled twice, not copied."""
    run = trainer_mod.Recovery(tiny_model, pruned, tmp_path / "r", _cfg(onpolicy_steps=1, grad_accum=2), data_cfg,
                               progress=False)
    first, second = run.micro_batches(1, [0, 1, 0, 2], on_policy=True)
    assert first.seq_indices[0] == second.seq_indices[0] == 0
    assert not torch.equal(first.batch.input_ids[0], second.batch.input_ids[0])
