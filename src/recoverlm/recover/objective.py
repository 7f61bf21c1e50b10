"""The per-token training objective of one micro-batch: a divergence to the teacher (cached top-k
off-policy, full vocabulary on-policy), cross-entropy for sft-replay, and the optional
hidden-state and cross-entropy terms; summed over the response tokens that count. The optional
CKA term is one value per micro-batch, weighted by its tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..analysis.layer_cka import DEFAULT_MASSIVE_RATIO
from ..config import RecoverConfig
from ..data import Batch
from ..errors import RecoverLMError
from ..lm.forward import (
    completion_head_inputs,
    completion_outputs,
    completion_targets,
    head_of,
)
from ..ops.chunked import auto_chunk, chunked_per_token
from ..ops.cka import soft_linear_cka, typical_rows
from ..ops.divergences import (
    divergence,
    hidden_relative_mse,
    token_nll,
    topk_divergence,
)
from .student import check_cka_layers


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
    divergence, and the hidden-state error when it is trained) for logging. With
    `recover.logit_chunk` (or where `auto` chooses chunks), the student's logits (and a single teacher's, on-policy) are made
    through the LM head a chunk of positions at a time and never held for the whole batch.
    With `recover.cka_weight`, cka_weight * (1 - CKA) * the micro-batch's tokens is added
    (cka_term) and the CKA logged as part "cka"."""
    want_hidden = cfg.method == "distill" and (cfg.hidden_weight > 0 or cfg.cka_weight > 0)
    chunk = logit_chunk_of(student, mb, cfg)
    if chunk:
        rows, states = completion_head_inputs(student, mb.batch, hidden=want_hidden)
    else:
        rows, states = completion_outputs(student, mb.batch, hidden=want_hidden)
    keep = mb.keep.to(rows.device)
    targets = completion_targets(mb.batch).to(rows.device)
    # Cross-entropy on the teacher's tokens: on-policy responses are the student's own samples,
    # whose likelihood it must not be taught to raise.
    ce_weight = 0.0 if mb.on_policy else cfg.ce_weight

    def mean(per_token: torch.Tensor) -> float:
        return float((per_token.detach() * keep).sum()) / max(mb.n_tokens, 1)

    live = cfg.method == "distill" and (mb.on_policy or want_hidden)
    t_rows, t_states = (teachers.outputs(mb, pad_id, logits=mb.on_policy, hidden=want_hidden,
                                         head_inputs=bool(chunk)) if live else (None, None))
    if cfg.method == "distill" and not mb.on_policy:
        idx, lp = (t.to(rows.device) for t in train_set.topk_rows(mb.seq_indices))

    def per_token_of(logits: torch.Tensor, span: slice) -> torch.Tensor:
        """(divergence, cross-entropy) of the rows `span` from their student logits, shape (2, n)."""
        nll = (token_nll(logits, targets[span]) if cfg.method == "sft-replay" or ce_weight
               else torch.zeros(logits.shape[0], device=logits.device))
        if cfg.method == "sft-replay":
            return torch.stack([nll, nll])
        if mb.on_policy:
            div = divergence(logits, teachers.logits_of(t_rows[span]), cfg.onpolicy_divergence, cfg.beta, cfg.temperature)
        else:
            div = topk_divergence(logits, lp[span], idx[span], cfg.divergence, cfg.beta, cfg.temperature)
        return torch.stack([div, nll])

    if chunk:
        head = head_of(student)
        terms = chunked_per_token(rows, head.weight, per_token_of, chunk, head.bias, head.softcap)
    else:
        terms = per_token_of(rows, slice(0, rows.shape[0]))
    if cfg.method == "sft-replay":
        return (terms[1] * keep).sum(), {"divergence": mean(terms[1])}
    per_token, parts = terms[0], {"divergence": mean(terms[0])}
    if ce_weight:
        per_token = per_token + ce_weight * terms[1]
    if want_hidden and cfg.hidden_weight:
        hidden = hidden_relative_mse(states, t_states)
        parts["hidden"] = mean(hidden)
        per_token = per_token + cfg.hidden_weight * hidden
    total = (per_token * keep).sum()
    if want_hidden and cfg.cka_weight:
        cka = cka_term(states, t_states, keep, cfg.cka_layers)
        # too few typical rows: the term adds nothing and logs as 1, so every micro-batch has the part
        parts["cka"] = 1.0 if cka is None else float(cka.detach())
        if cka is not None:
            total = total + (cfg.cka_weight * (1.0 - cka) * mb.n_tokens).to(total.dtype)
    return total, parts


def logit_chunk_of(student, mb: MicroBatch, cfg: RecoverConfig) -> int:
    """recover.logit_chunk for this micro-batch: `auto` sized by its response positions and the
    vocabulary (ops.chunked.auto_chunk), and off where the LM head is not one it can chunk."""
    if cfg.logit_chunk != "auto":
        return cfg.logit_chunk
    try:
        head = head_of(student)
    except RecoverLMError:
        return 0
    return auto_chunk(int(mb.batch.completion[:, 1:].sum()), head.weight.shape[0])


def cka_term(states: torch.Tensor, t_states: torch.Tensor, keep: torch.Tensor, layers: list[int] | None,
             massive_ratio: float = DEFAULT_MASSIVE_RATIO) -> torch.Tensor | None:
    """Mean over `layers` (None: every block) of the differentiable linear CKA between the student's
    and the teacher's (L, N, d) block outputs, on the kept rows the teacher carries at typical norms
    (at most `massive_ratio` x the median kept-row norm at every block, as in the CKA analysis);
    None when fewer than 2 such rows remain. A float64 0-dim tensor, with the student's gradient.

    It is the analysis's (biased) linear CKA of this micro-batch's rows. CKA does not add up over
    rows, and with rows not far above the width it reads high by chance, so unlike the other terms
    its value and gradient depend on how a step is split (grad_accum, processes)."""
    if states.shape[0] != t_states.shape[0]:
        raise RecoverLMError(f"cka_weight pairs the blocks by index: the student has {states.shape[0]} blocks, "
                             f"the teacher {t_states.shape[0]}")
    check_cka_layers(layers, t_states.shape[0])
    keep = keep.to(t_states.device)
    if int(keep.sum()) < 2:
        return None
    use = keep.clone()
    use[keep] = typical_rows((t[keep] for t in t_states), massive_ratio)
    if int(use.sum()) < 2:
        return None
    chosen = range(t_states.shape[0]) if layers is None else layers
    s_use = use.to(states.device)
    return torch.stack([soft_linear_cka(states[i][s_use], t_states[i][use]) for i in chosen]).mean()
