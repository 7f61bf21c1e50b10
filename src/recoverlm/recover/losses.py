"""Token-level divergences between teacher and student next-token distributions.

All functions are pure and return one value per position, shape (...,), in nats. The caller sums
them over the completion mask and divides by the completion-token count of the *global* batch, so
that gradient accumulation and data parallelism give the same gradient as one big batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_T || p_S) = sum_v p_T(v) (log p_T(v) - log p_S(v)); mode-covering. Float32 softmax."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_S || p_T); mode-seeking, the natural on-policy objective."""
    return forward_kl(teacher_logits, student_logits, temperature)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                    temperature: float = 1.0) -> torch.Tensor:
    """beta*KL(p_T||M) + (1-beta)*KL(p_S||M) with M = beta*p_T + (1-beta)*p_S (as in TRL's GKD).

    Only beta == 0 and beta == 1 are handled as the limits, which are zero for any inputs;
    use forward_kl / reverse_kl for those. log M is formed with a two-term log-sum-exp so it stays
    finite where either distribution underflows.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"generalized_jsd needs 0 < beta < 1, got {beta}; use forward_kl or reverse_kl for the limits")
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_m = torch.logaddexp(t + math.log(beta), s + math.log(1 - beta))
    kl_t = (t.exp() * (t - log_m)).sum(-1)
    kl_s = (s.exp() * (s - log_m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def bucket_logprobs(logits: torch.Tensor, indices: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities of k chosen tokens plus one tail bucket holding the remaining mass.

    logits (..., V), indices (..., k) -> (..., k+1). The tail is log(1 - sum_k p), computed as
    log1p(-exp(logsumexp(top))) clamped away from 0 so its gradient stays finite.
    """
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    top = logp.gather(-1, indices.long())
    head = torch.logsumexp(top, dim=-1, keepdim=True).clamp(max=-1e-7)
    tail = torch.log1p(-head.exp())
    return torch.cat([top, tail], dim=-1)


def topk_forward_kl(student_logits: torch.Tensor, teacher_bucket_logprobs: torch.Tensor,
                    teacher_indices: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Forward KL between k+1-bucket distributions (teacher's top-k tokens plus the tail).

    By the data-processing inequality it is a lower bound on the full-vocabulary KL, exact when
    the teacher's tail mass is zero. It lets the teacher run once and be cached.
    """
    s = bucket_logprobs(student_logits, teacher_indices, temperature)
    t = teacher_bucket_logprobs.float()
    return (t.exp() * (t - s)).sum(-1)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target): cross-entropy on hard tokens, per position."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none").view(targets.shape)
