"""Pruning masks on plain tensors."""

import torch

from recoverlm.degrade.prune import magnitude_mask


def test_magnitude_mask_prunes_exactly_per_row():
    w = torch.randn(6, 10)
    mask = magnitude_mask(w, 0.5, "row")
    assert (mask.sum(1) == 5).all()
    kept_min = (w.abs() * mask).masked_fill(~mask, float("inf")).amin(1)
    pruned_max = (w.abs() * ~mask).amax(1)
    assert (kept_min >= pruned_max).all()
