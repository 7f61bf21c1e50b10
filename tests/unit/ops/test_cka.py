import itertools
import math

import pytest
import torch

from recoverlm.ops.cka import (
    LinearCKAAccumulator,
    cka_matrix,
    debiased_linear_cka,
    gram_linear_cka,
    linear_cka,
    minibatch_cka,
    rbf_cka,
    soft_linear_cka,
    typical_rows,
    unbiased_hsic,
)


def _pair(n=60, dx=6, dy=5, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=torch.float64) + offset
    w = torch.randn(dx, dy, generator=g, dtype=torch.float64)
    y = x @ w + 0.5 * torch.randn(n, dy, generator=g, dtype=torch.float64)
    return x, y


def test_identical_inputs_give_one():
    x, _ = _pair()
    for f in (linear_cka, debiased_linear_cka, gram_linear_cka, rbf_cka):
        assert f(x, x) == pytest.approx(1.0, abs=1e-12)
    assert minibatch_cka([x[:30], x[30:]], [x[:30], x[30:]]) == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_and_isotropic_scaling_invariance():
    x, y = _pair()
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    xt = 3.7 * x @ q
    assert linear_cka(xt, y) == pytest.approx(linear_cka(x, y), abs=1e-12)
    assert debiased_linear_cka(xt, y) == pytest.approx(debiased_linear_cka(x, y), abs=1e-12)
    assert rbf_cka(xt, y) == pytest.approx(rbf_cka(x, y), abs=1e-12)


def test_not_invariant_to_general_linear_map():
    x, y = _pair()
    a = torch.diag(torch.tensor([10.0, 1.0, 0.1, 1.0, 5.0, 0.3], dtype=torch.float64))
    a = a @ torch.randn(6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert abs(linear_cka(x @ a, y) - linear_cka(x, y)) > 1e-3


def test_streaming_equals_one_shot():
    x, y = _pair(n=50, offset=100.0)
    acc = LinearCKAAccumulator(6, 5)
    start = 0
    for size in (5, 1, 17, 3, 24):
        acc.update(x[start:start + size], y[start:start + size])
        start += size
    assert acc.n == 50
    assert acc.value() == pytest.approx(linear_cka(x, y), abs=1e-9)
    assert acc.debiased_value() == pytest.approx(debiased_linear_cka(x, y), abs=1e-9)


def test_merge_equals_single_accumulator():
    x, y = _pair(n=40)
    x[25:] += 50.0  # second rank sees a different offset, so the two shifts differ
    y[25:] -= 20.0
    whole, a, b = LinearCKAAccumulator(6, 5), LinearCKAAccumulator(6, 5), LinearCKAAccumulator(6, 5)
    for s in (slice(0, 10), slice(10, 25), slice(25, 40)):
        whole.update(x[s], y[s])
    a.update(x[:10], y[:10])
    a.update(x[10:25], y[10:25])
    b.update(x[25:], y[25:])
    a.merge(b)
    assert a.n == 40
    assert a.value() == pytest.approx(whole.value(), abs=1e-9)
    assert a.debiased_value() == pytest.approx(whole.debiased_value(), abs=1e-9)
    empty = LinearCKAAccumulator(6, 5)
    empty.merge(a)
    assert empty.debiased_value() == pytest.approx(whole.debiased_value(), abs=1e-9)


def _hsic_closed_form(k, l):
    """Song et al. 2012, eq. (5), with explicit n x n Grams whose diagonals are zeroed."""
    n = k.shape[0]
    k, l = k - torch.diag(torch.diag(k)), l - torch.diag(torch.diag(l))
    one = torch.ones(n, dtype=torch.float64)
    val = torch.trace(k @ l) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (one @ k @ l @ one)
    return float(val / (n * (n - 3)))


def _hsic_u_statistic(k, l):
    """Mean over ordered distinct (i, j, q, r) of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq."""
    k, l, n = k.tolist(), l.tolist(), k.shape[0]
    tot = sum(k[i][j] * l[i][j] + k[i][j] * l[q][r] - 2 * k[i][j] * l[i][q]
              for i, j, q, r in itertools.permutations(range(n), 4))
    return tot / math.perm(n, 4)


def test_debiased_matches_direct_u_statistic():
    x, y = _pair(n=7, dx=3, dy=4, offset=2.0)
    k, l = x @ x.T, y @ y.T
    hxy, hxx, hyy = (_hsic_u_statistic(a, b) for a, b in ((k, l), (k, k), (l, l)))
    assert _hsic_closed_form(k, l) == pytest.approx(hxy, rel=1e-10)
    assert unbiased_hsic(x, y) == pytest.approx(hxy, rel=1e-9, abs=1e-12)
    assert debiased_linear_cka(x, y) == pytest.approx(hxy / math.sqrt(hxx * hyy), abs=1e-9)
    assert minibatch_cka([x], [y]) == pytest.approx(debiased_linear_cka(x, y), abs=1e-12)


def test_gram_reference_matches_feature_space():
    x, y = _pair(n=30, dx=8, dy=3)
    assert gram_linear_cka(x, y) == pytest.approx(linear_cka(x, y), abs=1e-9)


def test_outlier_dimensions_float32_stay_finite():
    x, y = _pair(n=64, dx=16, dy=16, seed=3)
    for t in (x, y):
        t[:, 3] = t[:, 3] * 1e3
        t[:, 7] = 3e4 + 50 * t[:, 7]  # massive near-constant activation
    x32, y32 = x.float(), y.float()
    acc = LinearCKAAccumulator(16, 16)
    for s in (slice(0, 20), slice(20, 64)):
        acc.update(x32[s], y32[s])
    vals = [linear_cka(x32, y32), gram_linear_cka(x32, y32), rbf_cka(x32, y32), acc.value(),
            debiased_linear_cka(x32, y32), acc.debiased_value(),
            minibatch_cka([x32[:32], x32[32:]], [y32[:32], y32[32:]])]
    for v in vals:
        assert math.isfinite(v) and 0.0 <= v <= 1.0 + 1e-9
    assert acc.value() == pytest.approx(linear_cka(x32, y32), abs=1e-9)
    assert acc.debiased_value() == pytest.approx(debiased_linear_cka(x32, y32), abs=1e-9)
    assert unbiased_hsic(x32, x32) > 0


def test_cka_matrix_shape_and_diagonal():
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(20, d, generator=g) for d in (4, 6, 8)]
    ys = [torch.randn(20, d, generator=g) + xs[0][:, :1] for d in (3, 4, 5, 6, 7)]
    m = cka_matrix(xs, ys)
    assert m.shape == (3, 5)
    for i in range(3):
        assert m[i, i].item() == pytest.approx(linear_cka(xs[i], ys[i]), abs=1e-12)


def test_independent_data_gives_small_cka():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(4000, 8, generator=g), torch.randn(4000, 8, generator=g)
    assert linear_cka(x, y) < 0.02
    assert abs(debiased_linear_cka(x, y)) < 0.01


def test_errors():
    x, y = _pair(n=10)
    for f in (linear_cka, debiased_linear_cka, gram_linear_cka, rbf_cka, unbiased_hsic):
        with pytest.raises(ValueError, match="same number of samples"):
            f(x, y[:9])
    with pytest.raises(ValueError):
        linear_cka(x[:1], y[:1])
    with pytest.raises(ValueError):
        debiased_linear_cka(x[:3], y[:3])
    acc = LinearCKAAccumulator(6, 5)
    with pytest.raises(ValueError):
        acc.update(x, y[:9])
    acc.update(x[:3], y[:3])
    with pytest.raises(ValueError):
        acc.debiased_value()


def test_soft_linear_cka_equals_linear_cka_with_outliers_and_widths():
    """The differentiable form is the same number as linear_cka, huge outlier columns included."""
    for seed, (dx, dy) in enumerate([(6, 5), (5, 9), (12, 3)]):
        x, y = _pair(n=80, dx=dx, dy=dy, seed=seed, offset=2.0)
        x[:, 0] *= 3e4  # massive-activation-like columns, in one model or both
        y[:, -1] = 2e4 + 50.0 * y[:, -1]
        got = soft_linear_cka(x, y)
        assert got.dtype == torch.float64 and got.dim() == 0
        assert float(got) == pytest.approx(linear_cka(x, y), abs=1e-10)
    x32, y32 = (t.float() for t in _pair())
    assert float(soft_linear_cka(x32, y32)) == pytest.approx(linear_cka(x32, y32), abs=1e-10)


def test_soft_linear_cka_gradcheck_and_invariances():
    x, y = _pair(n=12, dx=4, dy=3)
    assert torch.autograd.gradcheck(soft_linear_cka, (x.clone().requires_grad_(), y.clone().requires_grad_()))
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    base = float(soft_linear_cka(x, y))
    assert float(soft_linear_cka(3.7 * x @ q, y)) == pytest.approx(base, abs=1e-12)
    assert float(soft_linear_cka(x, 0.01 * y + 5.0)) == pytest.approx(base, abs=1e-12)
    assert float(soft_linear_cka(x, x)) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError):
        soft_linear_cka(x, y[:5])


def test_soft_linear_cka_gradient_raises_cka():
    """A small step along the gradient raises CKA: what the training term relies on."""
    x, y = _pair(n=40, dx=5, dy=5, seed=3)
    y = torch.randn_like(y).requires_grad_()
    before = soft_linear_cka(x, y)
    before.backward()
    with torch.no_grad():
        after = soft_linear_cka(x, y + 1e-2 * y.grad / y.grad.norm())
    assert float(after) > float(before.detach())


def test_typical_rows_equals_typical_token_mask():
    from recoverlm.analysis.layer_cka import typical_token_mask

    g = torch.Generator().manual_seed(0)
    h = [torch.randn(3, 10, 8, generator=g) for _ in range(3)]  # (B, T, d) per layer
    h[0][0, 0] += 400.0  # a sink at layer 0 only, one at the last layer only, one on padding
    h[2][1, 4] -= 300.0
    h[1][2, 9] += 1e5
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[2, 7:] = 0
    expected = typical_token_mask(tuple(h), mask, ratio=20.0)
    real = mask.bool()
    rows = typical_rows(torch.stack([t[real] for t in h]), 20.0)
    assert rows.tolist() == expected[real].tolist() and not expected[~real].any()
    assert not rows[0] and rows.sum() == real.sum() - 2
    assert typical_rows((t[real] for t in h), 20.0).tolist() == rows.tolist()  # any iterable of layers
    with pytest.raises(ValueError, match="ratio must be > 1"):
        typical_rows(torch.stack(h).flatten(1, 2), 1.0)
