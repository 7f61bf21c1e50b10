import math

import pytest
import torch

from recoverlm.ops import divergences as losses


def _logits(seed, shape=(5, 7, 11)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3


def test_divergences_are_zero_for_identical_logits():
    a = _logits(0)
    assert torch.allclose(losses.forward_kl(a, a), torch.zeros(a.shape[:-1]), atol=1e-6)
    assert torch.allclose(losses.reverse_kl(a, a), torch.zeros(a.shape[:-1]), atol=1e-6)
    assert torch.allclose(losses.generalized_jsd(a, a, 0.5), torch.zeros(a.shape[:-1]), atol=1e-6)


def test_divergences_are_positive_for_different_logits():
    a, b = _logits(0), _logits(1)
    for value in (losses.forward_kl(a, b), losses.reverse_kl(a, b), losses.generalized_jsd(a, b, 0.3)):
        assert (value > 1e-4).all()


def test_forward_kl_matches_definition_and_reverse_swaps():
    s, t = _logits(2, (3, 6)), _logits(3, (3, 6))
    p_t, p_s = t.softmax(-1), s.softmax(-1)
    expected = (p_t * (p_t.log() - p_s.log())).sum(-1)
    assert torch.allclose(losses.forward_kl(s, t), expected, atol=1e-5)
    assert torch.allclose(losses.reverse_kl(s, t), losses.forward_kl(t, s))


def test_jsd_is_bounded_and_rejects_limits():
    s, t = _logits(4), _logits(5)
    jsd = losses.generalized_jsd(s, t, 0.5)
    assert (jsd <= math.log(2) + 1e-6).all()
    with pytest.raises(ValueError):
        losses.generalized_jsd(s, t, 0.0)


def test_topk_kl_equals_full_kl_when_k_is_vocab_and_lower_bounds_it_otherwise():
    s, t = _logits(6, (4, 11)), _logits(7, (4, 11))
    full = losses.forward_kl(s, t)
    idx_all = torch.argsort(t, dim=-1, descending=True)
    exact = losses.topk_forward_kl(s, losses.bucket_logprobs(t, idx_all), idx_all)
    assert torch.allclose(exact, full, atol=1e-4)
    idx3 = idx_all[:, :3]
    approx = losses.topk_forward_kl(s, losses.bucket_logprobs(t, idx3), idx3)
    assert (approx <= full + 1e-5).all() and (approx > 0).all()


def test_bucket_logprobs_sum_to_one():
    t = _logits(8, (4, 11))
    idx = torch.topk(t, 4, dim=-1).indices
    assert torch.allclose(losses.bucket_logprobs(t, idx).exp().sum(-1), torch.ones(4), atol=1e-5)


def test_temperature_softens_both_sides():
    s, t = _logits(9, (4, 11)), _logits(10, (4, 11))
    assert (losses.forward_kl(s, t, temperature=4.0) < losses.forward_kl(s, t)).all()


def test_hidden_relative_mse_is_relative_per_position_and_averaged_over_layers():
    from recoverlm.ops.divergences import hidden_relative_mse

    teacher = torch.randn(3, 5, 8)
    assert torch.equal(hidden_relative_mse(teacher, teacher), torch.zeros(5))
    student = teacher * 1.1  # 10% off everywhere: a relative squared error of 0.01 at every layer
    assert torch.allclose(hidden_relative_mse(student, teacher), torch.full((5,), 0.01), atol=1e-5)
    big = teacher.clone()
    big[:, 0] *= 1000  # a massive-activation position weighs no more than any other
    assert torch.allclose(hidden_relative_mse(big * 1.1, big), torch.full((5,), 0.01), atol=1e-5)
    off = teacher.clone()
    off[1] = 0  # one layer of three entirely wrong: error 1 there, so 1/3 on average
    assert torch.allclose(hidden_relative_mse(off, teacher), torch.full((5,), 1 / 3), atol=1e-5)
