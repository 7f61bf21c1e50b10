"""The sparsity Constraint on a tiny model: masks survive training, a broken mask is caught, it reloads."""

import pytest
import torch
from helpers.constrained import train_and_finalize as _train

from recoverlm.constraints import SparsityConstraint, load_constraint
from recoverlm.degrade.prune import prune_magnitude
from recoverlm.errors import RecoverLMError
from recoverlm.lm.blocks import linear_weights
from recoverlm.models import load_model


def test_masks_survive_training_steps(tiny_model, tmp_path):
    model = load_model(tiny_model)
    model, constraint = prune_magnitude(model, 0.5)
    assert _train(model, constraint)
    summary = constraint.verify(model)
    assert summary["sparsity"] == pytest.approx(0.5)
    for name, w in linear_weights(model).items():
        assert (w == 0).float().mean().item() >= 0.5
    constraint.save(tmp_path)
    reloaded = load_constraint(tmp_path)
    assert isinstance(reloaded, SparsityConstraint)
    assert all(torch.equal(reloaded.masks[k], v) for k, v in constraint.masks.items())


def test_broken_mask_is_detected(tiny_model):
    model = load_model(tiny_model)
    model, constraint = prune_magnitude(model, 0.5)
    name = next(iter(constraint.masks))
    with torch.no_grad():
        linear_weights(model)[name].fill_(1.0)
    with pytest.raises(RecoverLMError, match="sparsity broken"):
        constraint.verify(model)
