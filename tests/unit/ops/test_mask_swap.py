"""Re-chosen masks keep every row's count and every n:m group's n, and swap the right weights."""

import pytest
import torch

from recoverlm.degrade.prune import magnitude_mask, nm_mask
from recoverlm.ops.mask_swap import nm_pattern, swap, swap_fraction, swap_in_groups, swap_in_rows


def _scores(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


def test_rows_keep_their_counts_and_swap_the_weakest_for_the_strongest():
    w = torch.randn(6, 40, generator=torch.Generator().manual_seed(0))
    mask = magnitude_mask(w, 0.5, "row")
    keep, grow = _scores(w.shape, 1)
    new = swap_in_rows(mask, keep, grow, 0.25)
    assert torch.equal(new.sum(1), mask.sum(1))
    for r in range(6):
        k = round(0.25 * int(mask[r].sum()))
        dropped, grown = (mask[r] & ~new[r]).nonzero().flatten(), (new[r] & ~mask[r]).nonzero().flatten()
        assert len(dropped) == len(grown) == k
        kept_scores = keep[r][mask[r]]
        assert torch.equal(keep[r][dropped].sort().values, kept_scores.sort().values[:k])
        assert torch.equal(grow[r][grown].sort().values, grow[r][~mask[r]].sort(descending=True).values[:k].sort().values)


def test_uneven_rows_and_full_rows_are_left_with_their_counts():
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, :7] = True  # one pruned place: at most one swap
    mask[1, :] = True  # nothing pruned: nothing to swap
    mask[2, :2] = True
    keep, grow = _scores(mask.shape, 2)
    new = swap_in_rows(mask, keep, grow, 1.0)
    assert torch.equal(new.sum(1), mask.sum(1))
    assert torch.equal(new[1], mask[1])
    assert int((mask[0] & ~new[0]).sum()) == 1
    assert not (new[2] & mask[2]).any()  # fraction 1 moves both kept weights of row 2


def test_nm_groups_keep_n_and_the_pattern_is_recognised():
    w = torch.randn(5, 32, generator=torch.Generator().manual_seed(3))
    mask = nm_mask(w, 2, 4)
    assert nm_pattern(mask) == (2, 4)
    keep, grow = _scores(w.shape, 4)
    new = swap(mask, keep, grow, 0.25)
    assert nm_pattern(new) == (2, 4)
    assert (new.reshape(5, 8, 4).sum(-1) == 2).all()
    changed_groups = (new != mask).reshape(5, 8, 4).any(-1)
    assert (changed_groups.sum(1) == round(0.25 * 16)).all()  # four swaps per row, one per group
    # In a changed group the weakest kept weight left and the strongest pruned one arrived.
    r, g = changed_groups.nonzero()[0].tolist()
    cols = slice(4 * g, 4 * g + 4)
    old, now = mask[r, cols], new[r, cols]
    assert keep[r, cols][old & ~now].item() == keep[r, cols][old].min().item()
    assert grow[r, cols][now & ~old].item() == grow[r, cols][~old].max().item()


def test_the_same_as_swap_in_groups_and_unstructured_masks_are_not_nm():
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(5))
    unstructured = magnitude_mask(w, 0.5, "tensor")
    assert nm_pattern(unstructured) is None
    keep, grow = _scores(w.shape, 6)
    assert torch.equal(swap(unstructured, keep, grow, 0.1), swap_in_rows(unstructured, keep, grow, 0.1))
    nm = nm_mask(w, 1, 8)
    assert nm_pattern(nm) == (1, 8)
    assert torch.equal(swap(nm, keep, grow, 0.5), swap_in_groups(nm, keep, grow, 0.5, 8))


@pytest.mark.parametrize("step,expected", [(0, 0.0), (5, 0.0), (10, 0.1 * 0.5 * (1 + 0.5 ** 0.5)), (40, 0.0)])
def test_the_fraction_decays_to_zero_at_stop(step, expected):
    assert swap_fraction(step, every=10, fraction=0.1, stop=40) == pytest.approx(expected)
    assert swap_fraction(20, every=10, fraction=0.1, stop=40) == pytest.approx(0.05)
