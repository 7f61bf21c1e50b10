"""The quantization-grid Constraint on a tiny model: training on the grid, latents seeded from the
teacher, learned scales and their export."""

import pytest
import torch
from helpers.constrained import train_and_finalize as _train

from recoverlm.constraints import load_constraint
from recoverlm.degrade.quantize import quantize_rtn
from recoverlm.errors import RecoverLMError
from recoverlm.lm.blocks import linear_weights
from recoverlm.models import load_model


def test_quant_grid_survives_training_steps(tiny_model, tmp_path):
    model = load_model(tiny_model)
    model, constraint = quantize_rtn(model, bits=4, group_size=32)
    constraint.verify(model)
    before = {k: v.clone() for k, v in linear_weights(model).items()}
    assert _train(model, constraint, lr=5e-2)
    constraint.verify(model)
    moved = sum(int((before[k] != v).sum()) for k, v in linear_weights(model).items())
    assert moved > 0, "QAT with a large learning rate should move some weights to other grid points"
    constraint.save(tmp_path)
    load_constraint(tmp_path).verify(model)


def test_seeded_latents_leave_the_quantized_model_unchanged(tiny_model):
    teacher = load_model(tiny_model)
    model, constraint = quantize_rtn(load_model(tiny_model), bits=4, group_size=32)
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        before = model(ids).logits
        constraint.attach(model)
        seeded = constraint.seed_latents(model, teacher)
        after = model(ids).logits
    assert torch.equal(before, after)
    assert seeded["moved"] > 0.9 and 0.1 < seeded["mean_offset_in_steps"] < 0.5
    # Round-to-nearest of the teacher: every latent is the teacher's own weight, up to the margin
    # that keeps it off the rounding boundary (0.01 of a grid step).
    name = next(iter(constraint.scales))
    module = dict(model.named_modules())[name.rsplit(".", 1)[0]]
    gap = (module.parametrizations.weight.original - dict(teacher.named_parameters())[name]).abs()
    steps = constraint.scales[name].repeat_interleave(32, dim=1)
    assert torch.all(gap <= 0.0101 * steps) and (gap == 0).float().mean() > 0.9
    constraint.finalize(model)
    constraint.verify(model)


def test_seeded_latents_need_the_teachers_shapes(tiny_model):
    teacher = load_model(tiny_model)
    model, constraint = quantize_rtn(load_model(tiny_model), bits=4, group_size=32)
    constraint.attach(model)
    name = next(iter(constraint.scales))
    module = dict(teacher.named_modules())[name.rsplit(".", 1)[0]]
    module.weight = torch.nn.Parameter(module.weight[:, :-32].clone())
    with pytest.raises(RecoverLMError, match="grid latents from the teacher need its"):
        constraint.seed_latents(model, teacher)


def test_learned_grid_scales_move_and_the_export_verifies_on_them(tiny_model, tmp_path):
    model = load_model(tiny_model)
    model, constraint = quantize_rtn(model, bits=4, group_size=32)
    degraded_scales = {k: v.clone() for k, v in constraint.scales.items()}
    constraint.learn_scales = True
    assert _train(model, constraint, lr=5e-2)
    assert constraint.verify(model)["learned_scales"]
    assert any(not torch.equal(degraded_scales[k], v) for k, v in constraint.scales.items())
    constraint.save(tmp_path)
    load_constraint(tmp_path).verify(model)  # the saved grid is the learned one
    stale = load_constraint(tmp_path)
    stale.scales = degraded_scales
    with pytest.raises(RecoverLMError, match="off the grid"):
        stale.verify(model)


def test_learned_scales_that_no_step_moved_are_the_degraded_ones_exactly(tiny_model):
    """A learned scale is the degraded scale times exp(gain): untouched, it re-bakes bit for bit."""
    model = load_model(tiny_model)
    model, constraint = quantize_rtn(model, bits=4, group_size=32)
    degraded = {k: v.clone() for k, v in constraint.scales.items()}
    before = {k: v.detach().clone() for k, v in linear_weights(model).items()}
    constraint.learn_scales = True
    constraint.attach(model)
    gains = [p for n, p in model.named_parameters() if n.endswith(".log_gain")]
    assert len(gains) == len(degraded) and all(float(g.detach().abs().max()) == 0 for g in gains)
    constraint.finalize(model)
    assert all(torch.equal(degraded[k], v) for k, v in constraint.scales.items())
    after = linear_weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    constraint.verify(model)
