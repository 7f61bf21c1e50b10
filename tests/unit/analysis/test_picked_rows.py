"""The cross-layer CKA sample is drawn over real tokens and mapped to the rows the massive-activation
mask kept: none of a batch's picks point past its rows, and left-out tokens are dropped."""

import torch

from recoverlm.analysis.layer_cka import _picked_rows


def test_picks_map_to_kept_rows_and_offsets_count_real_tokens():
    attention = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # 5 real tokens
    kept = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0]])  # the second token is an attention sink: 4 rows
    pick = torch.tensor([0, 1, 2, 4, 5, 7])  # 5 and 7 belong to the next batch
    rows, offset = _picked_rows(pick, 0, attention, kept, "token")
    assert offset == 5
    assert rows.tolist() == [0, 1, 3]  # token 0 -> row 0, token 1 left out, token 2 -> row 1, token 4 -> row 3
    rows, offset = _picked_rows(pick, 5, attention, kept, "token")
    assert rows.tolist() == [0, 1] and offset == 10  # tokens 0 and 2 of the same layout
    rows, offset = _picked_rows(torch.tensor([1, 2]), 0, attention, kept, "mean")
    assert rows.tolist() == [1] and offset == 2
