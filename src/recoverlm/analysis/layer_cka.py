"""Layer-by-layer CKA of students against a teacher: every model sees the same tokens, once per
batch, and its layers are those of `lm.capture` (the embeddings, then every block's raw output).

Memory is bounded by the batch: each batch's states are reduced to padding-free rows (tokens, or one
mean row per sequence), folded into float64 streaming accumulators (O(d^2) per layer pair, whatever
the token count) and dropped. Only the cross-layer matrix keeps raw rows, and only for a fixed-size,
seeded random subsample of them.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data import collate
from ..errors import RecoverLMError
from ..lm.capture import hidden_states
from ..lm.modes import eval_mode
from ..ops.cka import LinearCKAAccumulator, cka_matrix, typical_rows
from ..teacher.response_set import ResponseSet

POOLINGS = ("token", "mean")
# Teacher tokens whose hidden-state norm exceeds this multiple of the median are left out of CKA by
# default (see typical_token_mask); None keeps every token.
DEFAULT_MASSIVE_RATIO = 20.0


def typical_token_mask(states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """Real tokens whose hidden-state norm stays within `ratio` x the median real-token norm at every layer.

    Decoder LMs park a few "massive activations" (attention-sink tokens: the first token, some
    delimiters) at norms hundreds of times the median. Linear CKA is a ratio of second moments, so
    those few rows can dominate it and read as near-perfect alignment while the other tokens differ.
    The mask is computed from the teacher alone and applied to every model, so all compare the same rows.
    """
    if ratio <= 1:
        raise RecoverLMError(f"massive-activation ratio must be > 1, got {ratio}")
    real = attention_mask.bool()
    keep = torch.zeros_like(real)
    keep[real] = typical_rows((h[real.to(h.device)] for h in states), ratio).to(real.device)
    return keep


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise RecoverLMError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")


def pool(states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor, pooling: str = "token") -> list[torch.Tensor]:
    """Padding-free CKA rows on the CPU: every real token (B*T -> n_real, d), or the mean over each
    sequence's real tokens ("mean": one float64 row per sequence)."""
    _check_pooling(pooling)
    out = []
    for h in states:
        mask = attention_mask.to(h.device)
        if pooling == "token":
            out.append(h[mask.bool()].float().cpu())
        else:
            w = mask.to(torch.float64)[..., None]
            out.append(((h.double() * w).sum(1) / w.sum(1)).cpu())
    return out


def _picked_rows(pick: torch.Tensor, offset: int, attention_mask: torch.Tensor, rows_mask: torch.Tensor,
                 pooling: str) -> tuple[torch.Tensor, int]:
    """The rows of this batch that the sample `pick` chose, and the offset of the next batch. The
    sample is drawn over every real token (or sequence), the rows are those the massive-activation
    mask kept: a picked token that was left out is dropped, and the rest are mapped to their rows."""
    if pooling == "mean":  # a row per sequence, whatever the mask kept
        n = attention_mask.shape[0]
        return pick[(pick >= offset) & (pick < offset + n)] - offset, offset + n
    real = attention_mask.bool().flatten()
    kept = rows_mask.bool().flatten()[real]  # per real token: is it a row?
    n = int(real.sum())
    chosen = pick[(pick >= offset) & (pick < offset + n)] - offset
    chosen = chosen[kept[chosen]]
    return (torch.cumsum(kept.long(), 0) - 1)[chosen], offset + n


def _subsample(total: int, k: int, seed: int) -> torch.Tensor:
    """Sorted global row indices: all rows if total <= k, else k drawn without replacement (seeded).

    Drawn over the whole eval set before any forward pass, so the choice does not depend on how the
    sequences are batched or padded.
    """
    if total <= k:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def _or_none(fn):
    """A CKA value, or None where the estimator is undefined (too few rows, zero estimated variance)."""
    try:
        return fn()
    except ValueError:
        return None


def _cross(xs: list[list[torch.Tensor]], ys: list[list[torch.Tensor]], total: int, seed: int) -> dict:
    """Teacher-layer x student-layer linear CKA on the subsampled rows (lists: batch -> layer -> rows)."""
    t_layers = [torch.cat(parts) for parts in zip(*xs)]
    s_layers = [torch.cat(parts) for parts in zip(*ys)]
    n = t_layers[0].shape[0] if t_layers else 0
    out = {"samples": n, "of": total, "seed": seed, "matrix": None, "reason": None}
    if n < 2:
        return {**out, "reason": f"needs at least 2 rows, the subsample has {n}"}
    try:
        out["matrix"] = cka_matrix(t_layers, s_layers).tolist()
    except ValueError as exc:
        out["reason"] = str(exc)
    return out


@torch.no_grad()
def layer_cka(teacher, students: dict[str, torch.nn.Module], eval_set: ResponseSet, pad_id: int,
              batch_size: int = 8, progress: bool = True, *, pooling: str = "token", cross_tokens: int = 0,
              seed: int = 0, max_sequences: int | None = None,
              massive_ratio: float | None = DEFAULT_MASSIVE_RATIO) -> dict[str, dict]:
    """Per student, linear and debiased CKA between teacher layer l and student layer l.

    Layer 0 is the embeddings, layer l the output of block l - 1 (blocks count from 0, as
    recover.cka_layers and train_blocks count them). Layers are paired by index up to the
    shallower model's depth (a depth-pruned student has fewer); `cross_tokens` > 0 adds, per student,
    the full teacher-layers x student-layers matrix on a seeded subsample of at most that many rows
    (tokens, or sequences with pooling="mean"), the same rows for every student. Debiased values
    are None where undefined (fewer than 4 rows). Each model is run once per batch. With
    `massive_ratio`, tokens the teacher carries as massive activations (see typical_token_mask) are
    left out of every model's rows; "excluded_tokens" counts them.
    """
    _check_pooling(pooling)
    if massive_ratio is not None and not massive_ratio > 1:
        raise RecoverLMError(f"massive-activation ratio must be > 1, got {massive_ratio}")
    n_seq = len(eval_set) if max_sequences is None else min(max_sequences, len(eval_set))
    total = n_seq if pooling == "mean" else sum(
        len(p) + len(r) for p, r in zip(eval_set.prompt_ids[:n_seq], eval_set.response_ids[:n_seq]))
    pick = _subsample(total, cross_tokens, seed) if cross_tokens > 0 else None
    accs: dict[str, list[LinearCKAAccumulator]] = {}
    depth: dict[str, tuple[int, int]] = {}
    cross_t: list[list[torch.Tensor]] = []
    cross_s: dict[str, list[list[torch.Tensor]]] = {name: [] for name in students}
    offset = n_tokens = excluded = 0
    with eval_mode(teacher, *students.values()):
        for start in tqdm(range(0, n_seq, batch_size), desc="cka", disable=not progress, leave=False):
            sl = slice(start, min(start + batch_size, n_seq))
            batch = collate(eval_set.prompt_ids[sl], eval_set.response_ids[sl], pad_id)
            n_tokens += int(batch.attention_mask.sum())
            t_states = hidden_states(teacher, batch.input_ids, batch.attention_mask)
            rows_mask = batch.attention_mask
            if massive_ratio is not None:
                rows_mask = typical_token_mask(t_states, batch.attention_mask, massive_ratio).to(batch.attention_mask.dtype)
                excluded += int(batch.attention_mask.sum() - rows_mask.sum())
            t_rows = pool(t_states, rows_mask, pooling)
            del t_states
            local = None
            if pick is not None:
                local, offset = _picked_rows(pick, offset, batch.attention_mask, rows_mask, pooling)
                cross_t.append([h[local] for h in t_rows])
            for name, student in students.items():
                s_rows = pool(hidden_states(student, batch.input_ids, batch.attention_mask), rows_mask, pooling)
                if name not in accs:
                    depth[name] = (len(t_rows), len(s_rows))
                    accs[name] = [LinearCKAAccumulator(t.shape[1], s.shape[1]) for t, s in zip(t_rows, s_rows)]
                for acc, t, s in zip(accs[name], t_rows, s_rows):
                    acc.update(t, s)
                if local is not None:
                    cross_s[name].append([h[local] for h in s_rows])
    result = {}
    for name, a in accs.items():
        result[name] = {
            "layers": list(range(len(a))), "linear": [acc.value() for acc in a],
            "debiased": [_or_none(acc.debiased_value) for acc in a],
            "tokens": n_tokens, "samples": a[0].n if a else 0, "pooling": pooling,
            "teacher_layers": depth[name][0], "student_layers": depth[name][1],
            "massive_ratio": massive_ratio, "excluded_tokens": excluded,
        }
        if pick is not None:
            result[name]["cross_layer"] = _cross(cross_t, cross_s[name], total, seed)
    return result


def trajectory(teacher, student, eval_set: ResponseSet, pad_id: int, batch_size: int = 8, pooling: str = "token",
               max_sequences: int | None = None, massive_ratio: float | None = DEFAULT_MASSIVE_RATIO) -> list[float]:
    """Per-layer linear CKA of one student against the teacher, for a trainer's periodic evaluation.

    No cross-layer matrix and no progress bar; `max_sequences` caps the cost (the first sequences of
    the set, so successive calls compare like with like). Both models get their train/eval mode back.
    """
    out = layer_cka(teacher, {"student": student}, eval_set, pad_id, batch_size, progress=False, pooling=pooling,
                    max_sequences=max_sequences, massive_ratio=massive_ratio)
    return out["student"]["linear"]
