"""Re-choosing which weights a sparse matrix keeps, without changing how many or where the pattern
allows them: drop the weakest kept weights and regrow as many pruned ones, per row (unstructured)
or one swap per group of m consecutive inputs (n:m). Every row keeps its count of weights and every
n:m group its n, so the sparsity and its pattern stay exactly those of the mask given.

The scores are the caller's: for dropping, higher means keep (e.g. |W| x input-activation norm);
for regrowth, higher means grow (e.g. the magnitude of the accumulated gradient).
"""

from __future__ import annotations

import math

import torch

NM_GROUPS = (4, 8, 16)  # group sizes m tried when a mask is read as n:m


def nm_pattern(mask: torch.Tensor) -> tuple[int, int] | None:
    """(n, m) when every group of m consecutive inputs of every row keeps exactly n weights (0 < n
    < m), for the smallest such m in NM_GROUPS; None for an unstructured mask."""
    rows, cols = mask.shape
    for m in NM_GROUPS:
        if cols % m:
            continue
        kept = mask.reshape(rows, cols // m, m).sum(-1)
        n = int(kept.flatten()[0])
        if 0 < n < m and bool((kept == n).all()):
            return n, m
    return None


def swap_fraction(step: int, every: int, fraction: float, stop: int) -> float:
    """The fraction of kept weights a mask update at `step` swaps: updates every `every` steps,
    decaying from `fraction` along a half cosine to zero at step `stop` (RigL's schedule), none after."""
    if step <= 0 or step % every or step >= stop:
        return 0.0
    return fraction * 0.5 * (1.0 + math.cos(math.pi * step / stop))


def _ranks(scores: torch.Tensor, descending: bool) -> torch.Tensor:
    """Each entry's rank within its row (0 = first), ties broken by position."""
    order = torch.argsort(scores, dim=-1, descending=descending, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    return ranks


def swap_in_rows(mask: torch.Tensor, keep_score: torch.Tensor, grow_score: torch.Tensor,
                 fraction: float) -> torch.Tensor:
    """Per row, drop the round(fraction x kept) kept weights with the lowest keep_score and grow as
    many pruned weights with the highest grow_score (only weights pruned before the update regrow)."""
    kept = mask.sum(-1, keepdim=True)
    k = torch.minimum(torch.round(fraction * kept.double()).long(), mask.shape[-1] - kept)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=mask.device)
    drop = mask & (_ranks(torch.where(mask, keep_score.double(), inf), descending=False) < k)
    grow = ~mask & (_ranks(torch.where(mask, -inf, grow_score.double()), descending=True) < k)
    return (mask & ~drop) | grow


def swap_in_groups(mask: torch.Tensor, keep_score: torch.Tensor, grow_score: torch.Tensor, fraction: float,
                   m: int) -> torch.Tensor:
    """n:m masks: in round(fraction x kept) groups of each row (at most all of them), the weakest
    kept weight gives its place to the strongest pruned one; the groups chosen are those whose
    strongest pruned weight has the highest grow_score. Every group still keeps exactly n."""
    rows, cols = mask.shape
    g_mask = mask.reshape(rows, cols // m, m)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=mask.device)
    keep_s = torch.where(g_mask, keep_score.double().reshape_as(g_mask), inf)
    grow_s = torch.where(g_mask, -inf, grow_score.double().reshape_as(g_mask))
    best_grow, grow_at = grow_s.max(-1)
    drop_at = keep_s.argmin(-1)
    n_groups = cols // m
    k = min(n_groups, round(fraction * int(mask[0].sum())))
    chosen = _ranks(best_grow, descending=True) < k  # (rows, groups)
    chosen &= torch.isfinite(best_grow)
    new = g_mask.clone()
    r, g = chosen.nonzero(as_tuple=True)
    new[r, g, drop_at[r, g]] = False
    new[r, g, grow_at[r, g]] = True
    return new.reshape(rows, cols)


def swap(mask: torch.Tensor, keep_score: torch.Tensor, grow_score: torch.Tensor, fraction: float) -> torch.Tensor:
    """The re-chosen mask of one matrix, in its own pattern (n:m where the mask is n:m)."""
    pattern = nm_pattern(mask)
    if pattern is not None:
        return swap_in_groups(mask, keep_score, grow_score, fraction, pattern[1])
    return swap_in_rows(mask, keep_score, grow_score, fraction)
