"""Recovery ratios and their uncertainty: a paired bootstrap over evaluation items."""

from __future__ import annotations

import numpy as np


def recovery_ratio(teacher: float, degraded: float, recovered: float, min_gap: float = 1e-6) -> float | None:
    """(m_recovered - m_degraded) / (m_teacher - m_degraded); None when the gap is too small to mean anything."""
    gap = teacher - degraded
    if abs(gap) < min_gap:
        return None
    return (recovered - degraded) / gap


def recovery_ratio_ci(teacher: list[float], degraded: list[float], recovered: list[float], n_boot: int = 2000,
                      seed: int = 0, level: float = 0.95, weights: list[float] | None = None,
                      min_gap: float = 1e-6) -> dict:
    """Recovery ratio with a paired bootstrap CI: items are resampled jointly for all three models.

    With `weights` (an item's token count, for per-token metrics given as per-item means) every
    mean is weighted, in the point estimate and in each resample alike: the interval is then about
    the token-weighted ratio that the point value reports, not a per-item one beside it.
    `meaningful` is False when the teacher-degraded gap's own interval contains zero: then any
    ratio is noise divided by noise and should not be read. The point ratio is None below
    `min_gap`, as `recovery_ratio`'s, so the two never disagree on one set of scores.
    """
    t, d, r = (np.asarray(v, dtype=np.float64) for v in (teacher, degraded, recovered))
    if not (len(t) == len(d) == len(r)) or len(t) < 2:
        return {"ratio": None, "low": None, "high": None, "n": int(len(t)), "meaningful": False}
    w = np.ones_like(t) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != t.shape:
        raise ValueError(f"weights need one value per item, got {w.size} for {t.size}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(t), size=(n_boot, len(t)))
    wi = w[idx]
    totals = wi.sum(1)

    def means(v):
        return (v[idx] * wi).sum(1) / totals

    gaps = means(t) - means(d)
    gains = means(r) - means(d)
    alpha = (1 - level) / 2
    gap_lo, gap_hi = np.quantile(gaps, [alpha, 1 - alpha])
    meaningful = bool(gap_lo > 0 or gap_hi < 0)
    mean = {name: float((v * w).sum() / w.sum()) for name, v in (("t", t), ("d", d), ("r", r))}
    ratio = recovery_ratio(mean["t"], mean["d"], mean["r"], min_gap)  # None where recovery_ratio says so
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = gains / gaps
    boot = boot[np.isfinite(boot)]
    low, high = (np.quantile(boot, [alpha, 1 - alpha]).tolist() if meaningful and len(boot) else (None, None))
    return {"ratio": ratio, "low": low, "high": high, "n": int(len(t)), "meaningful": meaningful}
