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
                      seed: int = 0, level: float = 0.95) -> dict:
    """Recovery ratio with a paired bootstrap CI: items are resampled jointly for all three models.

    `meaningful` is False when the teacher-degraded gap's own interval contains zero: then any
    ratio is noise divided by noise and should not be read.
    """
    t, d, r = (np.asarray(v, dtype=np.float64) for v in (teacher, degraded, recovered))
    if not (len(t) == len(d) == len(r)) or len(t) < 2:
        return {"ratio": None, "low": None, "high": None, "n": int(len(t)), "meaningful": False}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(t), size=(n_boot, len(t)))
    gaps = t[idx].mean(1) - d[idx].mean(1)
    gains = r[idx].mean(1) - d[idx].mean(1)
    alpha = (1 - level) / 2
    gap_lo, gap_hi = np.quantile(gaps, [alpha, 1 - alpha])
    meaningful = bool(gap_lo > 0 or gap_hi < 0)
    gap = t.mean() - d.mean()
    ratio = float((r.mean() - d.mean()) / gap) if gap != 0 else None
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = gains / gaps
    boot = boot[np.isfinite(boot)]
    low, high = (np.quantile(boot, [alpha, 1 - alpha]).tolist() if meaningful and len(boot) else (None, None))
    return {"ratio": ratio, "low": low, "high": high, "n": int(len(t)), "meaningful": meaningful}
