"""The N:M pattern read off a user's sparse matrix is the tightest one it follows."""

import torch

from recoverlm.constraints.infer import nm_pattern


def _mask(n, m, rows=4, groups=6):
    row = torch.zeros(groups, m, dtype=torch.bool)
    row[:, :n] = True
    return row.reshape(1, -1).repeat(rows, 1)


def test_the_tightest_pattern_is_named():
    assert nm_pattern(_mask(1, 4)) == (1, 4)
    assert nm_pattern(_mask(2, 4)) == (2, 4)
    assert nm_pattern(_mask(2, 8)) == (2, 8)  # it also follows 2:4, which allows twice as many
    assert nm_pattern(_mask(4, 8)) == (4, 8)
    assert nm_pattern(torch.ones(4, 24, dtype=torch.bool)) is None
