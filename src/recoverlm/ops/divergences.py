"""Token-level divergences between teacher and student next-token distributions.

All functions are pure and return one value per position, shape (...,), in nats. The caller sums
them over the completion mask and divides by the completion-token count of the *global* batch, so
that gradient accumulation and data parallelism give the same gradient as one big batch.

The `*_logprobs` functions take normalised log-probabilities over any support: the full vocabulary,
or k teacher tokens plus one tail bucket (cached teacher targets). The logits versions apply the
temperature to both models and call them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def kl_logprobs(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p(v) (log p(v) - log q(v)), for finite log-probabilities: a p(v) that
    underflows to 0 contributes 0, but a log p(v) of -inf would give NaN. Every caller passes
    log-softmaxes of finite logits or a tail bucket clamped above -inf; no guard is paid for on
    this full-vocabulary path."""
    p = p_log.exp()
    return (p * (p_log - q_log)).sum(-1)


def jsd_logprobs(student_log: torch.Tensor, teacher_log: torch.Tensor, beta: float) -> torch.Tensor:
    """beta*KL(p_T||M) + (1-beta)*KL(p_S||M) with M = beta*p_T + (1-beta)*p_S (TRL's GKD convention).

    Only 0 < beta < 1 is accepted: at the limits M equals one of the two distributions and the
    value is identically zero, so use forward_kl (beta -> 0 gradient direction) or reverse_kl
    explicitly. log M uses a two-term log-sum-exp so it stays finite where either side underflows.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"generalized JSD needs 0 < beta < 1, got {beta}; use forward_kl or reverse_kl for the limits")
    log_m = torch.logaddexp(teacher_log + math.log(beta), student_log + math.log(1 - beta))
    return beta * kl_logprobs(teacher_log, log_m) + (1 - beta) * kl_logprobs(student_log, log_m)


def divergence_logprobs(student_log: torch.Tensor, teacher_log: torch.Tensor, kind: str, beta: float = 0.5) -> torch.Tensor:
    if kind == "forward_kl":
        return kl_logprobs(teacher_log, student_log)
    if kind == "reverse_kl":
        return kl_logprobs(student_log, teacher_log)
    if kind == "jsd":
        return jsd_logprobs(student_log, teacher_log, beta)
    raise ValueError(f"unknown divergence {kind!r}; choose from {', '.join(DIVERGENCES)}")


def _log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_T || p_S): mode-covering; the off-policy default. Float32 softmax."""
    return kl_logprobs(_log_softmax(teacher_logits, temperature), _log_softmax(student_logits, temperature))


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_S || p_T): mode-seeking; the natural on-policy objective."""
    return kl_logprobs(_log_softmax(student_logits, temperature), _log_softmax(teacher_logits, temperature))


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                    temperature: float = 1.0) -> torch.Tensor:
    return jsd_logprobs(_log_softmax(student_logits, temperature), _log_softmax(teacher_logits, temperature), beta)


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, beta: float = 0.5,
               temperature: float = 1.0) -> torch.Tensor:
    return divergence_logprobs(_log_softmax(student_logits, temperature), _log_softmax(teacher_logits, temperature),
                               kind, beta)


def bucket_logprobs(logits: torch.Tensor, indices: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities of k chosen tokens plus one tail bucket holding the remaining mass.

    logits (..., V), indices (..., k) -> (..., k+1). The tail is log(1 - sum_k p), computed as
    log1p(-exp(logsumexp(top))) clamped away from 0 so its gradient stays finite.
    """
    logp = _log_softmax(logits, temperature)
    top = logp.gather(-1, indices.long())
    head = torch.logsumexp(top, dim=-1, keepdim=True).clamp(max=-1e-7)
    tail = torch.log1p(-head.exp())
    return torch.cat([top, tail], dim=-1)


def topk_divergence(student_logits: torch.Tensor, teacher_bucket_logprobs: torch.Tensor, teacher_indices: torch.Tensor,
                    kind: str = "forward_kl", beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """A divergence between k+1-bucket distributions (the teacher's top-k tokens plus the tail).

    By the data-processing inequality each is a lower bound on its full-vocabulary value, exact
    when the teacher's tail mass is zero. It lets the teacher run once and be cached.
    """
    s = bucket_logprobs(student_logits, teacher_indices, temperature)
    return divergence_logprobs(s, teacher_bucket_logprobs.float(), kind, beta)


def topk_forward_kl(student_logits: torch.Tensor, teacher_bucket_logprobs: torch.Tensor,
                    teacher_indices: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return topk_divergence(student_logits, teacher_bucket_logprobs, teacher_indices, "forward_kl", temperature=temperature)


def hidden_relative_error(student_states: torch.Tensor, teacher_states: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """|h_student - h_teacher|^2 / |h_teacher|^2 per layer and position: (L, N, d) -> (L, N), float32."""
    s, t = student_states.float(), teacher_states.float()
    return (s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(eps)


def hidden_relative_mse(student_states: torch.Tensor, teacher_states: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The hidden-state loss per position, (L, N, d) -> (N,): the relative error averaged over layers.

    Dividing per position (not by a layer-wide variance) keeps the few massive-activation tokens
    from outweighing every other token, and makes the layers count alike whatever their scale.
    """
    return hidden_relative_error(student_states, teacher_states, eps).mean(0)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target): cross-entropy on hard tokens, per position."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none").view(targets.shape)
