"""The per-token training objective of one micro-batch: a divergence to the teacher (cached top-k
off-policy, full vocabulary on-policy), cross-entropy for sft-replay, and the optional
hidden-state and cross-entropy terms; summed over the response tokens that count."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import RecoverConfig
from ..data import Batch
from ..lm.forward import completion_outputs, completion_targets
from ..ops.divergences import (
    divergence,
    hidden_relative_mse,
    token_nll,
    topk_divergence,
)


def loss_mask(response_lengths: list[int], skip_first: int) -> torch.Tensor:
    """Which response tokens count in the loss (sequence-major, like completion_logits rows)."""
    return torch.cat([torch.arange(n) >= skip_first for n in response_lengths]) if response_lengths else torch.zeros(0, dtype=torch.bool)


@dataclass
class MicroBatch:
    batch: Batch
    seq_indices: list[int]
    response_lengths: list[int]
    sources: list[int]
    on_policy: bool
    keep: torch.Tensor  # bool per response token

    @property
    def n_tokens(self) -> int:
        return int(self.keep.sum())


def loss_sum(student, mb: MicroBatch, cfg: RecoverConfig, teachers, train_set, pad_id: int) -> tuple[torch.Tensor, dict]:
    """Sum over kept response tokens of the per-token loss, and the mean of its parts (the
    divergence, and the hidden-state error when it is trained) for logging."""
    want_hidden = cfg.hidden_weight > 0 and cfg.method == "distill"
    logits, states = completion_outputs(student, mb.batch, hidden=want_hidden)
    keep = mb.keep.to(logits.device)
    targets = completion_targets(mb.batch).to(logits.device)

    def mean(per_token: torch.Tensor) -> float:
        return float((per_token.detach() * keep).sum()) / max(mb.n_tokens, 1)

    if cfg.method == "sft-replay":
        per_token = token_nll(logits, targets)
        return (per_token * keep).sum(), {"divergence": mean(per_token)}
    t_logits, t_states = (teachers.outputs(mb, pad_id, logits=mb.on_policy, hidden=want_hidden)
                          if mb.on_policy or want_hidden else (None, None))
    if mb.on_policy:
        per_token = divergence(logits, t_logits, cfg.onpolicy_divergence, cfg.beta, cfg.temperature)
    else:
        idx, lp = train_set.topk_rows(mb.seq_indices)
        per_token = topk_divergence(logits, lp.to(logits.device), idx.to(logits.device), cfg.divergence,
                                    cfg.beta, cfg.temperature)
    parts = {"divergence": mean(per_token)}
    if want_hidden:
        hidden = hidden_relative_mse(states, t_states)
        parts["hidden"] = mean(hidden)
        per_token = per_token + cfg.hidden_weight * hidden
    if cfg.ce_weight:
        per_token = per_token + cfg.ce_weight * token_nll(logits, targets)
    return (per_token * keep).sum(), parts
