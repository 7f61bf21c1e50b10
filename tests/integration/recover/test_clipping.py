"""Gradient clipping scales the update the weights really get: a pruned student's gradients are
masked before the norm is taken, as DeepSpeed's hooks mask them before its engine clips."""

from helpers.recovery import short_config as _cfg

from recoverlm.recover import trainer as trainer_mod


def test_pruned_weights_have_no_gradient_when_clipping(tmp_path, tiny_model, pruned, data_cfg, monkeypatch):
    run = trainer_mod.Recovery(tiny_model, pruned, tmp_path / "r", _cfg(offpolicy_steps=1, max_grad_norm=1e-4),
                               data_cfg, progress=False)
    seen = []
    real = run.acc.clip_grad_norm_

    def spy(parameters, max_norm):
        model = run.acc.unwrap_model(run.student)
        for name, mask in run.constraint.masks.items():
            grad = dict(model.named_parameters())[name].grad
            seen.append((grad[~mask].abs().max().item(), grad[mask].abs().max().item()))
        return real(parameters, max_norm)

    monkeypatch.setattr(run.acc, "clip_grad_norm_", spy)
    run.train_step(1, list(range(4)), on_policy=False)
    assert seen and all(pruned_max == 0.0 for pruned_max, _ in seen)
    assert any(kept_max > 0.0 for _, kept_max in seen)
