"""Centered Kernel Alignment (CKA) between two sets of activations of the same n tokens.

Used to compare teacher and student hidden states layer by layer. LLM activations contain a few
massive outlier dimensions (|x| up to ~3e4), so every routine works on float64 copies and centres
(or shifts) the data *before* forming any product: raw second moments of 3e4-sized values would
swamp the variance in the other dimensions and the centring subtraction would cancel catastrophically,
which is what makes a naive HSIC come out negative or NaN.

Notation: K = X X^T, L = Y Y^T (linear kernels), k_i = |x_i|^2, l_i = |y_i|^2, s_x = sum_i x_i.
Apart from `rbf_cka` and `gram_linear_cka` nothing forms an n x n matrix; the feature-space forms
cost O(n d^2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "LinearCKAAccumulator",
    "cka_matrix",
    "debiased_linear_cka",
    "gram_linear_cka",
    "linear_cka",
    "minibatch_cka",
    "rbf_cka",
    "soft_linear_cka",
    "typical_rows",
    "unbiased_hsic",
]


def _check(x: torch.Tensor, y: torch.Tensor, min_n: int) -> None:
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError(f"CKA inputs must be 2-D (n, d); got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA inputs need the same number of samples (rows); got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < min_n:
        raise ValueError(f"this CKA estimator needs at least {min_n} samples, got {x.shape[0]}")


def _centre(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().to(torch.float64)
    return x - x.mean(dim=0)


def _ratio(num: torch.Tensor | float, a: torch.Tensor | float, b: torch.Tensor | float) -> float:
    """num / sqrt(a b); a, b are squared Frobenius norms or self-HSICs and must be positive."""
    num, a, b = float(num), float(a), float(b)
    if not (a > 0 and b > 0):
        raise ValueError("CKA is undefined: an input has zero (or non-positive estimated) variance")
    return num / math.sqrt(a * b)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred X, Y.

    Feature-space form (d x d products, no n x n Gram). Inputs are cast to float64 and centred
    before the products so outlier dimensions cannot cancel the signal in the other dimensions.
    """
    _check(x, y, 2)
    xc, yc = _centre(x), _centre(y)
    return _ratio((yc.T @ xc).square().sum(), (xc.T @ xc).square().sum(), (yc.T @ yc).square().sum())


def soft_linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`linear_cka` with autograd, for training: a float64 0-dim tensor, differentiable in x and y.

    x (n, d1) and y (n, d2) rows of the same n samples, any float dtype and device. Like
    `linear_cka` it casts to float64 and centres before any product, and forms only d x d products
    (O(n d^2), no n x n Gram); float64 is exempt from autocast, so bf16 autocast does not lower it.
    Nothing is checked against the data (no device sync): an input with zero variance gives NaN.
    """
    _check(x, y, 2)
    xc, yc = (t.to(torch.float64) for t in (x, y))
    xc, yc = xc - xc.mean(dim=0), yc - yc.mean(dim=0)
    num = (yc.T @ xc).square().sum()
    return num / ((xc.T @ xc).square().sum() * (yc.T @ yc).square().sum()).sqrt()


def typical_rows(states, ratio: float) -> torch.Tensor:
    """Rows whose norm stays within `ratio` x that layer's median row norm at every layer, bool (n,).

    `states`: an (L, n, d) tensor, or any iterable of L (n, d) tensors (the same n rows at each
    layer; a generator keeps one layer's copy alive at a time). The rows "massive activations" take
    (attention sinks: norms hundreds of times the median) come out False. Norms in float32; the
    median is torch's (the lower of the two middle values for even n).
    """
    if not ratio > 1:
        raise ValueError(f"massive-activation ratio must be > 1, got {ratio}")
    keep = None
    for h in states:
        norms = h.float().norm(dim=-1)
        typical = norms <= ratio * norms.median()
        keep = typical if keep is None else keep & typical
    if keep is None:
        raise ValueError("typical_rows needs at least one layer")
    return keep


def _hsic(n, m, su, sv, ku, kv, ku_v, kv_u, kuv) -> torch.Tensor:
    """Song et al. (2012) unbiased HSIC from feature-space moments of samples u_i, v_i.

    With K~, L~ the linear Grams with zeroed diagonal:
        HSIC_1 = [tr(K~L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)),
        tr(K~L~) = ||V^T U||_F^2 - sum k_i l_i,     1'K~1 = |s_u|^2 - sum k_i,
        1'K~L~1 = s_v^T (V^T U) s_u - s_u . sum_i l_i u_i - s_v . sum_i k_i v_i + sum k_i l_i.
    m = V^T U, su/sv = column sums, ku/kv = sum of squared norms, ku_v = sum_i k_i v_i,
    kv_u = sum_i l_i u_i, kuv = sum_i k_i l_i.
    """
    t = m.square().sum() - kuv
    a = su @ su - ku
    b = sv @ sv - kv
    c = sv @ m @ su - su @ kv_u - sv @ ku_v + kuv
    return (t + a * b / ((n - 1) * (n - 2)) - 2.0 * c / (n - 2)) / (n * (n - 3))


def _stats(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float64 moment sums of (x, y) rows: everything the linear and unbiased estimators need."""
    kx, ky = x.square().sum(1), y.square().sum(1)
    return dict(sx=x.sum(0), sy=y.sum(0), xx=x.T @ x, yy=y.T @ y, yx=y.T @ x,
                kx=kx.sum(), ky=ky.sum(), kxx=kx @ kx, kyy=ky @ ky, kxy=kx @ ky,
                kx_x=kx @ x, ky_y=ky @ y, kx_y=kx @ y, ky_x=ky @ x)


def _debiased(s: dict[str, torch.Tensor], n: int) -> float:
    hxy = _hsic(n, s["yx"], s["sx"], s["sy"], s["kx"], s["ky"], s["kx_y"], s["ky_x"], s["kxy"])
    hxx = _hsic(n, s["xx"], s["sx"], s["sx"], s["kx"], s["kx"], s["kx_x"], s["kx_x"], s["kxx"])
    hyy = _hsic(n, s["yy"], s["sy"], s["sy"], s["ky"], s["ky"], s["ky_y"], s["ky_y"], s["kyy"])
    return _ratio(hxy, hxx, hyy)


def unbiased_hsic(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased linear-kernel HSIC_1 (Song et al. 2012), in feature space, O(n d1 d2); n >= 4.

    The estimator is a U-statistic, hence exactly translation-invariant, so the inputs are centred
    in float64 first: this keeps the correction terms (which would otherwise be huge and cancel) ~0.
    """
    _check(x, y, 4)
    xc, yc = _centre(x), _centre(y)
    kx, ky = xc.square().sum(1), yc.square().sum(1)
    return float(_hsic(xc.shape[0], yc.T @ xc, xc.sum(0), yc.sum(0), kx.sum(), ky.sum(), kx @ yc, ky @ xc, kx @ ky))


def debiased_linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Debiased CKA (Kornblith et al. 2019) = HSIC_1(X,Y) / sqrt(HSIC_1(X,X) HSIC_1(Y,Y)); n >= 4.

    HSIC_1 is the unbiased estimator of Song et al. (2012), evaluated from feature-space moments
    (no n x n Gram) of float64 centred data. Can be slightly negative for independent inputs.
    """
    _check(x, y, 4)
    return _debiased(_stats(_centre(x), _centre(y)), x.shape[0])


def minibatch_cka(x_batches: Sequence[torch.Tensor], y_batches: Sequence[torch.Tensor]) -> float:
    """Minibatch CKA (Nguyen et al. 2021) = sum_b HSIC_1(X_b,Y_b) / sqrt(sum_b HSIC_1(X_b,X_b) sum_b HSIC_1(Y_b,Y_b)).

    Unbiased HSIC per batch makes the batch average consistent regardless of batch size; each batch
    needs >= 4 rows.
    """
    if len(x_batches) != len(y_batches) or not x_batches:
        raise ValueError(f"need equally many, non-zero, x and y batches; got {len(x_batches)} and {len(y_batches)}")
    hxy = hxx = hyy = 0.0
    for xb, yb in zip(x_batches, y_batches):
        hxy += unbiased_hsic(xb, yb)
        hxx += unbiased_hsic(xb, xb)
        hyy += unbiased_hsic(yb, yb)
    return _ratio(hxy, hxx, hyy)


def _centred_gram_cka(kc: torch.Tensor, lc: torch.Tensor) -> float:
    return _ratio((kc * lc).sum(), kc.square().sum(), lc.square().sum())


def _rbf_gram(x: torch.Tensor, scale: float) -> torch.Tensor:
    x = _centre(x)  # distances are translation-invariant; centring makes |a|^2+|b|^2-2ab accurate
    k = x.square().sum(1)
    d2 = (k[:, None] + k[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    i, j = torch.triu_indices(x.shape[0], x.shape[0], 1)
    sigma = scale * d2[i, j].sqrt().median()
    if not sigma > 0:
        raise ValueError("rbf_cka: median pairwise distance is zero")
    return torch.exp(-d2 / (2.0 * sigma**2))


def rbf_cka(x: torch.Tensor, y: torch.Tensor, sigma_scale: float = 1.0) -> float:
    """RBF CKA = <HKH, HLH>_F / (||HKH||_F ||HLH||_F), K_ij = exp(-|x_i-x_j|^2 / (2 sigma^2)).

    sigma = sigma_scale * median pairwise distance, chosen per input. Builds n x n matrices, so it
    is meant for small n (a few thousand tokens at most). float64 throughout.
    """
    _check(x, y, 2)
    gk, gl = _rbf_gram(x, sigma_scale), _rbf_gram(y, sigma_scale)
    centre2 = lambda g: g - g.mean(0) - g.mean(1, keepdim=True) + g.mean()  # noqa: E731  (= HGH)
    return _centred_gram_cka(centre2(gk), centre2(gl))


def gram_linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Naive reference: <HKH, HLH>_F / (||HKH||_F ||HLH||_F) with K = XX^T, H = I - 11^T/n, float64.

    Forms n x n matrices (O(n^2 d) time, O(n^2) memory); only for tests and benchmarks.
    """
    _check(x, y, 2)
    x, y = x.detach().to(torch.float64), y.detach().to(torch.float64)
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64, device=x.device) - 1.0 / n
    return _centred_gram_cka(h @ (x @ x.T) @ h, h @ (y @ y.T) @ h)


def cka_matrix(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cross-layer linear CKA matrix M[i, j] = linear_cka(xs[i], ys[j]), float64 (len(xs), len(ys)).

    Each layer is cast to float64 and centred once and its ||X^T X||_F^2 computed once, so the
    pairwise work is only the ||Y^T X||_F^2 products.
    """
    if not xs or not ys:
        raise ValueError("cka_matrix needs at least one layer on each side")
    for t in (*xs, *ys):
        _check(xs[0], t, 2)
    xcs, ycs = [_centre(x) for x in xs], [_centre(y) for y in ys]
    nx = [(x.T @ x).square().sum() for x in xcs]
    ny = [(y.T @ y).square().sum() for y in ycs]
    out = torch.empty(len(xs), len(ys), dtype=torch.float64)
    for i, x in enumerate(xcs):
        for j, y in enumerate(ycs):
            out[i, j] = _ratio((y.T @ x).square().sum(), nx[i], ny[j])
    return out


def _shift_pair(n, m, su, sv, ku, kv, ku_v, kv_u, kuv, a, b):
    """Moments of the pair (u, v) re-expressed for shifted samples (u + a, v + b).

    Uses k'_i = k_i + 2 a.u_i + |a|^2 (same for v, b); m = sum_i v_i u_i^T.
    Returns (m', sum_i k'_i v'_i, sum_i l'_i u'_i, sum_i k'_i l'_i).
    """
    aa, bb, asu, bsv = a @ a, b @ b, a @ su, b @ sv
    ma, mtb = m @ a, m.T @ b  # sum_i v_i (a.u_i), sum_i u_i (b.v_i)
    kuv2 = (kuv + 2 * (b @ ku_v) + bb * ku + 2 * (a @ kv_u) + 4 * (b @ ma)
            + 2 * bb * asu + aa * kv + 2 * aa * bsv + n * aa * bb)
    ku_v2 = ku_v + ku * b + 2 * ma + 2 * asu * b + aa * sv + n * aa * b
    kv_u2 = kv_u + kv * a + 2 * mtb + 2 * bsv * a + bb * su + n * bb * a
    m2 = m + torch.outer(sv, a) + torch.outer(b, su) + n * torch.outer(b, a)
    return m2, ku_v2, kv_u2, kuv2


def _shift(s: dict[str, torch.Tensor], n: int, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """All accumulator moments re-expressed for samples (x + a, y + b)."""
    xx, kx_x, _, kxx = _shift_pair(n, s["xx"], s["sx"], s["sx"], s["kx"], s["kx"], s["kx_x"], s["kx_x"], s["kxx"], a, a)
    yy, ky_y, _, kyy = _shift_pair(n, s["yy"], s["sy"], s["sy"], s["ky"], s["ky"], s["ky_y"], s["ky_y"], s["kyy"], b, b)
    yx, kx_y, ky_x, kxy = _shift_pair(n, s["yx"], s["sx"], s["sy"], s["kx"], s["ky"],
                                      s["kx_y"], s["ky_x"], s["kxy"], a, b)
    return dict(sx=s["sx"] + n * a, sy=s["sy"] + n * b, xx=xx, yy=yy, yx=yx,
                kx=s["kx"] + 2 * (a @ s["sx"]) + n * (a @ a), ky=s["ky"] + 2 * (b @ s["sy"]) + n * (b @ b),
                kxx=kxx, kyy=kyy, kxy=kxy, kx_x=kx_x, ky_y=ky_y, kx_y=kx_y, ky_x=ky_x)


class LinearCKAAccumulator:
    """Exact streaming linear and debiased CKA over token chunks; memory O(d^2), independent of n.

    Accumulates float64 sums of (x - c_x, y - c_y), with the fixed shift c = mean of the first chunk:
    CKA and unbiased HSIC are translation-invariant, and the shift removes huge common offsets
    (outlier dimensions) so the float64 sums keep their precision. Besides n, sums and the products
    X^T X, Y^T Y, Y^T X it keeps the 4th-order per-sample sums the unbiased HSIC needs
    (sum k_i, sum k_i^2, sum k_i l_i, sum k_i x_i, sum k_i y_i, ..., with k_i = |x_i|^2, l_i = |y_i|^2).
    At evaluation the moments are shifted exactly to the sample mean before use.
    """

    def __init__(self, dim_x: int, dim_y: int):
        self.dim_x, self.dim_y = dim_x, dim_y
        self.n = 0
        self._cx: torch.Tensor | None = None
        self._cy: torch.Tensor | None = None
        self._s: dict[str, torch.Tensor] | None = None

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add a chunk x (n_i, dim_x), y (n_i, dim_y) of the same tokens, any float dtype."""
        _check(x, y, 1)
        if x.shape[1] != self.dim_x or y.shape[1] != self.dim_y:
            raise ValueError(f"expected widths ({self.dim_x}, {self.dim_y}), got ({x.shape[1]}, {y.shape[1]})")
        x, y = x.detach().to(torch.float64), y.detach().to(torch.float64)
        if self._s is None:
            self._cx, self._cy = x.mean(0), y.mean(0)
        s = _stats(x - self._cx, y - self._cy)
        self._s = s if self._s is None else {k: self._s[k] + v for k, v in s.items()}
        self.n += x.shape[0]

    def merge(self, other: LinearCKAAccumulator) -> None:
        """Add another accumulator's state (e.g. from another data-parallel rank) into this one."""
        if (other.dim_x, other.dim_y) != (self.dim_x, self.dim_y):
            raise ValueError("cannot merge accumulators of different widths")
        if other._s is None:
            return
        if self._s is None:
            self._cx, self._cy, self._s, self.n = other._cx, other._cy, dict(other._s), other.n
            return
        # other's samples relative to our shift: (x - c_other) + (c_other - c_self)
        dx = (other._cx - self._cx).to(self._cx.device)
        dy = (other._cy - self._cy).to(self._cy.device)
        moved = _shift({k: v.to(self._cx.device) for k, v in other._s.items()}, other.n, dx, dy)
        self._s = {k: self._s[k] + v for k, v in moved.items()}
        self.n += other.n

    def _centred(self, min_n: int) -> dict[str, torch.Tensor]:
        if self.n < min_n:
            raise ValueError(f"need at least {min_n} samples, have {self.n}")
        return _shift(self._s, self.n, -self._s["sx"] / self.n, -self._s["sy"] / self.n)

    def value(self) -> float:
        """Linear CKA ||C_yx||_F^2 / (||C_xx||_F ||C_yy||_F) from the exactly centred moments."""
        s = self._centred(2)
        return _ratio(s["yx"].square().sum(), s["xx"].square().sum(), s["yy"].square().sum())

    def debiased_value(self) -> float:
        """Debiased CKA (unbiased HSIC, Song et al. 2012) from the accumulated moments; n >= 4."""
        return _debiased(self._centred(4), self.n)
