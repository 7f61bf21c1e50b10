"""The teacher's top-k next-token log-probabilities over response tokens, cached with the
responses so that off-policy distillation never runs the teacher again."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data import collate
from ..lm.forward import completion_logits
from ..ops.divergences import bucket_logprobs


@torch.no_grad()
def teacher_topk(teacher, prompt_ids: list[list[int]], response_ids: list[list[int]], k: int, pad_id: int,
                 batch_size: int = 16, temperature: float = 1.0, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top-k log-probabilities (+ tail bucket) at every response token, concatenated.

    Returns (indices (N, k) int32, bucket log-probs (N, k+1) float32), rows in sequence order.
    """
    all_idx, all_lp = [], []
    for start in tqdm(range(0, len(prompt_ids), batch_size), desc="teacher top-k", disable=not progress, leave=False):
        batch = collate(prompt_ids[start: start + batch_size], response_ids[start: start + batch_size], pad_id)
        logits = completion_logits(teacher, batch).float()
        idx = torch.topk(logits, k, dim=-1).indices
        all_lp.append(bucket_logprobs(logits, idx, temperature).cpu())
        all_idx.append(idx.to(torch.int32).cpu())
    return torch.cat(all_idx), torch.cat(all_lp)
