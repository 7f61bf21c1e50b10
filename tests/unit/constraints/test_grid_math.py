"""Grid maths on small tensors: the learned-scale projection and latents kept within their grid cells."""

import torch

from recoverlm.constraints.grid_math import fake_quantize, latent_within_cell, learned_scale_fake_quantize


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
