import pytest
import torch
from helpers.constrained import optimizer_steps

from recoverlm.constraints import SparsityConstraint, load_constraint
from recoverlm.constraints.grid_math import fake_quantize, latent_within_cell, learned_scale_fake_quantize
from recoverlm.lm.blocks import linear_weights
from recoverlm.degrade.prune import magnitude_mask, prune_magnitude
from recoverlm.degrade.quantize import quantize_rtn
from recoverlm.errors import RecoverLMError
from recoverlm.models import load_model


def _train(model, constraint, steps=3, lr=1e-2):
    constraint.attach(model)
    model.train()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer_steps(model, constraint, steps, lr)
    changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    constraint.finalize(model)
    return changed


def test_magnitude_mask_prunes_exactly_per_row():
    w = torch.randn(6, 10)
    mask = magnitude_mask(w, 0.5, "row")
    assert (mask.sum(1) == 5).all()
    kept_min = (w.abs() * mask).masked_fill(~mask, float("inf")).amin(1)
    pruned_max = (w.abs() * ~mask).amax(1)
    assert (kept_min >= pruned_max).all()


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


def test_learned_scale_projection_matches_the_fixed_grid_and_reaches_the_scale():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 64, generator=gen)
    scale = torch.rand(4, 2, generator=gen) * 0.1 + 0.05
    zero = torch.full((4, 2), 8.0)
    scale.requires_grad_(True)
    projected = learned_scale_fake_quantize(w, scale, zero, 0, 15)
    assert torch.equal(projected.detach(), fake_quantize(w, scale.detach(), zero, 0, 15))
    projected.pow(2).sum().backward()
    # The integers are held fixed: d/ds sum(((q - z) s)^2) = sum(2 (q - z)^2 s) over each group.
    levels = (projected.detach().reshape(4, 2, 32) / scale.detach().unsqueeze(-1)).round()
    expected = (2 * levels ** 2 * scale.detach().unsqueeze(-1)).sum(-1)
    torch.testing.assert_close(scale.grad, expected)


def test_latents_within_cell_keep_the_projection_and_follow_the_reference():
    gen = torch.Generator().manual_seed(1)
    scale = torch.rand(4, 2, generator=gen) * 0.1 + 0.05
    zero = torch.full((4, 2), 8.0)
    reference = torch.randn(4, 64, generator=gen) * 0.3
    on_grid = fake_quantize(reference, scale, zero, 0, 15)
    # A damaged grid: some weights one level off the reference's rounding.
    damaged = on_grid.clone()
    damaged[:, ::7] += scale.repeat_interleave(32, dim=1)[:, ::7]
    damaged = fake_quantize(damaged, scale, zero, 0, 15)
    latent = latent_within_cell(damaged, reference, scale, zero, 0, 15)
    assert torch.equal(fake_quantize(latent, scale, zero, 0, 15), damaged)
    steps = scale.repeat_interleave(32, dim=1)
    inside = (reference - damaged).abs() < 0.49 * steps
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(latent[inside], reference[inside])  # RTN of the reference: exactly where it was
    assert torch.all((latent - damaged).abs()[~inside] <= 0.49 * steps[~inside] + 1e-7)  # clamped at the cell edge
    assert torch.all(torch.sign(latent - damaged)[~inside] == torch.sign(reference - damaged)[~inside])


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


def test_quant_args_are_checked(tiny_model):
    model = load_model(tiny_model)
    with pytest.raises(RecoverLMError, match="bits"):
        quantize_rtn(model, bits=9)
    with pytest.raises(RecoverLMError, match="group_size"):
        quantize_rtn(model, bits=4, group_size=7)
