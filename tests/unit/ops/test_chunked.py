"""Divergences through the LM head in chunks equal the plain computation, values and gradients
(to 1e-6: the divergences take their softmax in float32, whatever the logits' dtype)."""

import pytest
import torch

from recoverlm.ops.chunked import chunked_per_token, head_logits
from recoverlm.ops.divergences import bucket_logprobs, divergence, topk_divergence

N, D, V = 37, 16, 97


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=g, dtype=torch.float64).requires_grad_(True)
    weight = (torch.randn(V, D, generator=g, dtype=torch.float64) / 4).requires_grad_(True)
    t_hidden = torch.randn(N, D, generator=g, dtype=torch.float64)
    t_weight = torch.randn(V, D, generator=g, dtype=torch.float64) / 4
    keep = torch.rand(N, generator=g) > 0.2
    return hidden, weight, t_hidden, t_weight, keep


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_full_vocabulary_divergences_equal_the_plain_ones(kind, beta, temperature, softcap):
    hidden, weight, t_hidden, t_weight, keep = _setup()

    def loss_of(logits, rows):
        t_logits = head_logits(t_hidden[rows], t_weight, softcap=softcap)
        return divergence(logits, t_logits, kind, beta, temperature)

    plain = loss_of(head_logits(hidden, weight, softcap=softcap), slice(0, N))
    want = _grads((plain * keep).sum(), hidden, weight)
    for chunk in (1, 5, 16, N):
        chunked = chunked_per_token(hidden, weight, loss_of, chunk, softcap=softcap)
        # atol 1e-6: a chunk's float64 logits may round to float32 one ulp apart from the whole batch's
        assert torch.allclose(chunked, plain, atol=1e-6, rtol=1e-6)
        got = _grads((chunked * keep).sum(), hidden, weight)
        for a, b in zip(got, want):
            assert torch.allclose(a, b, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_cached_topk_divergences_equal_the_plain_ones(kind):
    hidden, weight, t_hidden, t_weight, keep = _setup(1)
    t_logits = head_logits(t_hidden, t_weight)
    idx = torch.topk(t_logits, 8, dim=-1).indices
    lp = bucket_logprobs(t_logits, idx, temperature=1.5)

    def loss_of(logits, rows):
        return topk_divergence(logits, lp[rows], idx[rows], kind, 0.5, 1.5)

    plain = loss_of(head_logits(hidden, weight), slice(0, N))
    chunked = chunked_per_token(hidden, weight, loss_of, 6)
    assert torch.allclose(chunked, plain, atol=1e-7, rtol=1e-6)
    for a, b in zip(_grads((chunked * keep).sum(), hidden, weight), _grads((plain * keep).sum(), hidden, weight)):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-6)


def test_float32_agrees_to_1e6():
    hidden, weight, t_hidden, t_weight, keep = (t.float() if t.is_floating_point() else t for t in _setup(2))
    hidden, weight = hidden.detach().requires_grad_(True), weight.detach().requires_grad_(True)

    def loss_of(logits, rows):
        return divergence(logits, head_logits(t_hidden[rows], t_weight), "forward_kl")

    plain = loss_of(head_logits(hidden, weight), slice(0, N))
    chunked = chunked_per_token(hidden, weight, loss_of, 8)
    assert (chunked - plain).abs().max() < 1e-6
    for a, b in zip(_grads((chunked * keep).sum(), hidden, weight), _grads((plain * keep).sum(), hidden, weight)):
        assert (a - b).abs().max() < 1e-6
