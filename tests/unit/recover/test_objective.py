"""The recovery objective's pieces on plain values."""

from recoverlm.recover.objective import loss_mask


def test_loss_mask_skips_first_tokens():
    assert loss_mask([3, 1], 1).tolist() == [False, True, True, False]
