"""Does CKA explain recovery? Correlations between CKA summaries and a recovery metric, with uncertainty.

There are few points (checkpoints x runs) and no reason to assume normality, so uncertainty comes
from resampling rather than asymptotic formulas: a percentile bootstrap CI over resampled (x, y)
pairs and a two-sided permutation p-value, both seeded. Every function returns a plain dict; a
degenerate input (n < 3, a constant variable, non-finite values) gives None values plus a `reason`
instead of NaN or an exception. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

_CHUNK = 1 << 20  # elements per resampling block: memory stays flat whatever n_boot, n_perm and n


def _result(method: str, n: int, r=None, ci=None, p=None, reason=None, **extra) -> dict:
    return {"method": method, "n": n, "r": r, "ci": ci, "p": p, "reason": reason, **extra}


def _flat(v: np.ndarray) -> np.ndarray:
    """Per row: constant up to rounding (range <= 1e-12 of the magnitude), so r is undefined."""
    return np.ptp(v, axis=-1) <= 1e-12 * np.abs(v).max(axis=-1)


def _rows_r(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of x, y (m, n); NaN where a row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(1) / np.sqrt((xc * xc).sum(1) * (yc * yc).sum(1))
    r[_flat(x) | _flat(y)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _ranks(a: np.ndarray) -> np.ndarray:
    """Row-wise ranks from 1, ties given their average rank (as Spearman's rho needs)."""
    order = np.argsort(a, axis=1, kind="stable")
    s = np.take_along_axis(a, order, axis=1)
    n = a.shape[1]
    pos = np.broadcast_to(np.arange(n), a.shape)
    start = np.ones(a.shape, bool)
    start[:, 1:] = s[:, 1:] != s[:, :-1]
    end = np.ones(a.shape, bool)
    end[:, :-1] = start[:, 1:]
    first = np.maximum.accumulate(np.where(start, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(end, pos, n)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(a.shape)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)
    return ranks


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _prepare(x, y) -> tuple[np.ndarray, np.ndarray, str | None]:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y need the same length, got {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return x, y, "non-finite values"
    if x.size < 3:
        return x, y, f"n = {x.size} < 3"
    for name, v in (("x", x), ("y", y)):
        if _flat(v[None])[0]:
            return x, y, f"{name} is constant"
    return x, y, None


def _blocks(total: int, n: int) -> Iterable[int]:
    step = max(1, _CHUNK // max(n, 1))
    for start in range(0, total, step):
        yield min(step, total - start)


def _correlate(method: str, x, y, transform: Callable, n_boot: int, n_perm: int, seed: int, level: float,
               **extra) -> dict:
    x, y, reason = _prepare(x, y)
    n = x.size
    if reason:
        return _result(method, n, reason=reason, **extra)
    tx, ty = transform(x[None])[0], transform(y[None])[0]
    r = float(_rows_r(tx[None], ty[None])[0])
    rng = np.random.default_rng(seed)
    ci = None
    if n_boot > 0:
        boots = []
        for m in _blocks(n_boot, n):
            idx = rng.integers(0, n, size=(m, n))
            boots.append(_rows_r(transform(x[idx]), transform(y[idx])))
        boots = np.concatenate(boots)
        boots = boots[np.isfinite(boots)]
        if boots.size >= n_boot / 2:  # otherwise most resamples were constant: no honest interval
            alpha = (1.0 - level) / 2.0
            ci = [float(np.quantile(boots, alpha)), float(np.quantile(boots, 1.0 - alpha))]
    p = None
    if n_perm > 0:
        hits = 0
        for m in _blocks(n_perm, n):
            perm = _rows_r(np.broadcast_to(tx, (m, n)), rng.permuted(np.broadcast_to(ty, (m, n)), axis=1))
            hits += int((np.abs(perm) >= abs(r) - 1e-12).sum())
        p = (hits + 1) / (n_perm + 1)  # the observed order counts as one permutation: p is never 0
    return _result(method, n, r=r, ci=ci, p=p, **extra)


def pearson(x, y, n_boot: int = 2000, n_perm: int = 5000, seed: int = 0, level: float = 0.95) -> dict:
    """Pearson r with a percentile bootstrap CI (pairs resampled) and a two-sided permutation p-value.

    Returns {"method", "n", "r", "ci": [lo, hi] | None, "p", "reason"}; n_boot=0 or n_perm=0 skips
    that part (ci or p None).
    """
    return _correlate("pearson", x, y, _identity, n_boot, n_perm, seed, level)


def spearman(x, y, n_boot: int = 2000, n_perm: int = 5000, seed: int = 0, level: float = 0.95) -> dict:
    """Spearman rho (Pearson of average ranks), bootstrap CI re-ranking every resample, permutation p."""
    return _correlate("spearman", x, y, _ranks, n_boot, n_perm, seed, level)


def residualise(v: np.ndarray, design: np.ndarray) -> np.ndarray:
    """v minus its least-squares fit on the design matrix (which includes the intercept)."""
    coef, *_ = np.linalg.lstsq(design, v, rcond=None)
    return v - design @ coef


def partial_correlation(x, y, control, n_boot: int = 2000, n_perm: int = 5000, seed: int = 0,
                        level: float = 0.95) -> dict:
    """Pearson r of x and y after removing from each its linear fit on `control` (n,) or (n, k), plus an intercept.

    E.g. control = training step: if CKA and KL both just drift with the step, the raw r is high but
    the partial r is near 0. The CI bootstraps residual pairs and the p-value permutes residuals
    (the residuals are taken as exchangeable, the usual approximation).
    """
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    c = np.asarray(control, dtype=float)
    c = c.reshape(-1, 1) if c.ndim == 1 else c
    n = x.size
    if c.shape[0] != n or y.size != n:
        raise ValueError(f"x, y and control need the same number of rows, got {n}, {y.size} and {c.shape[0]}")
    if not np.isfinite(c).all():
        return _result("partial pearson", n, reason="non-finite control values", controls=c.shape[1])
    design = np.column_stack([np.ones(n), c])
    dof = n - np.linalg.matrix_rank(design)
    if dof < 2 or n < 3:
        return _result("partial pearson", n, reason=f"n = {n} leaves {dof} residual degrees of freedom (need 2)",
                       controls=c.shape[1])
    _, _, reason = _prepare(x, y)
    if reason:
        return _result("partial pearson", n, reason=reason, controls=c.shape[1])
    rx, ry = residualise(x, design), residualise(y, design)
    for name, v, res in (("x", x, rx), ("y", y, ry)):
        if np.linalg.norm(res) <= 1e-10 * np.linalg.norm(v - v.mean()):
            return _result("partial pearson", n, reason=f"{name} is a linear function of the control",
                           controls=c.shape[1])
    return _correlate("partial pearson", rx, ry, _identity, n_boot, n_perm, seed, level, controls=c.shape[1])


def _finite(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and bool(np.isfinite(v))


def cka_features(rows: list[dict], cka_field: str, cka_keys: Sequence[str]) -> dict[str, list]:
    """Feature name -> one value (or None) per row: "mean", "last", "layers" (every layer_i) or "layer_<i>"."""
    depth = max(len(r[cka_field]) for r in rows)
    out: dict[str, list] = {}
    for key in cka_keys:
        if key == "mean":
            out[key] = [float(np.mean(r[cka_field])) for r in rows]
        elif key == "last":
            out[key] = [float(r[cka_field][-1]) for r in rows]
        elif key == "layers" or key.startswith("layer_"):
            for i in range(depth) if key == "layers" else [int(key.removeprefix("layer_"))]:
                out[f"layer_{i}"] = [float(r[cka_field][i]) if i < len(r[cka_field]) else None for r in rows]
        else:
            raise ValueError(f"unknown CKA key {key!r}: use 'mean', 'last', 'layers' or 'layer_<i>'")
    return out


def usable_rows(rows: Sequence[dict], metric: str = "kl", cka_field: str = "cka") -> list[dict]:
    """The rows `correlate_recovery` correlates: a finite metric and a CKA list finite throughout.
    Intervals computed beside it must start from the same rows, or estimate and interval differ."""
    return [r for r in rows if _finite(r.get(metric)) and isinstance(r.get(cka_field), (list, tuple))
            and r[cka_field] and all(_finite(v) for v in r[cka_field])]


def correlate_recovery(rows: Sequence[dict], metric: str = "kl", cka_keys: Sequence[str] = ("mean", "last", "layers"),
                       *, cka_field: str = "cka", control: Sequence[str] = ("step",), within_run: bool = False,
                       n_boot: int = 2000, n_perm: int = 5000, seed: int = 0) -> dict:
    """How well CKA tracks a recovery metric across checkpoints and/or degradations.

    `rows` are metrics.jsonl-style records: {"step", metric, cka_field: [per-layer CKA], "run"?, ...}.
    For each CKA feature (the layer mean, the last layer, every layer), Pearson and Spearman against
    the metric, each with bootstrap CI and permutation p, plus the partial correlation controlling
    for the `control` keys (training step by default), and with `within_run` also for one indicator
    per run, so that differences between degradations cannot masquerade as a CKA effect. Rows
    without a finite metric or a CKA list are skipped and counted. A lower-is-better metric (KL,
    NLL) is expected to correlate negatively with CKA.
    """
    usable = usable_rows(rows, metric, cka_field)
    runs = sorted({str(r.get("run", "")) for r in usable})
    out = {"metric": metric, "n": len(usable), "skipped": len(rows) - len(usable), "runs": runs,
           "control": list(control) + (["run"] if within_run and len(runs) > 1 else []), "features": {}}
    if not usable:
        return {**out, "reason": f"no row has a finite {metric!r} and a {cka_field!r} list"}
    kw = dict(n_boot=n_boot, n_perm=n_perm, seed=seed)
    for name, values in cka_features(usable, cka_field, cka_keys).items():
        keep = [i for i, v in enumerate(values) if v is not None]
        x = np.array([values[i] for i in keep])
        y = np.array([usable[i][metric] for i in keep], dtype=float)
        entry = {"n": len(keep), "pearson": pearson(x, y, **kw), "spearman": spearman(x, y, **kw)}
        missing = [k for k in control if not all(_finite(usable[i].get(k)) for i in keep)]
        if missing:
            entry["partial"] = _result("partial pearson", len(keep), reason=f"rows lack a finite {', '.join(missing)}")
        else:
            cols = [[float(usable[i][k]) for k in control] for i in keep]
            if within_run and len(runs) > 1:
                cols = [c + [float(str(usable[i].get("run", "")) == run) for run in runs[1:]] for c, i in zip(cols, keep)]
            entry["partial"] = (partial_correlation(x, y, np.array(cols).reshape(len(keep), -1), **kw) if cols and cols[0]
                                else _result("partial pearson", len(keep), reason="no control variable"))
        out["features"][name] = entry
    return out


def cluster_bootstrap_ci(groups, statistic: Callable[[np.ndarray], float | None], n_boot: int = 2000,
                         seed: int = 0, level: float = 0.95) -> list[float] | None:
    """Percentile CI of statistic(row indices) over resamples of whole groups with replacement:
    checkpoints of one run are not independent, so the run is the unit of resampling. None with
    fewer than 3 groups, or when most resamples give no value."""
    labels = np.asarray([str(g) for g in groups])
    names = np.unique(labels)
    if len(names) < 3:
        return None
    members = [np.flatnonzero(labels == g) for g in names]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(names), size=len(names))])
        value = statistic(idx)
        if value is not None and np.isfinite(value):
            values.append(value)
    if len(values) < n_boot / 2:
        return None
    alpha = (1.0 - level) / 2.0
    return [float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))]


def correlation_of(x, y, rank: bool = False) -> Callable[[np.ndarray], float | None]:
    """The statistic `cluster_bootstrap_ci` resamples: Pearson r (Spearman's rho with `rank`) of the rows."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    transform = _ranks if rank else _identity

    def statistic(idx: np.ndarray) -> float | None:
        if np.unique(idx).size < 3:  # a resample repeating two rows would give an exact, meaningless +-1
            return None
        return float(_rows_r(transform(x[idx][None]), transform(y[idx][None]))[0])

    return statistic


def partial_correlation_of(x, y, control, groups) -> Callable[[np.ndarray], float | None]:
    """The partial correlation of x and y with `control` and one indicator per group removed,
    refitted on every resample."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    c = np.asarray(control, dtype=float).reshape(len(x), -1)
    labels = np.asarray([str(g) for g in groups])

    def statistic(idx: np.ndarray) -> float | None:
        design = _group_design(c, labels, idx)
        # Degrees of freedom of the distinct rows: a resample that repeats a run adds rows, not
        # information, and a fit left with none would give an exact, meaningless +-1.
        distinct = np.unique(idx)
        if distinct.size - np.linalg.matrix_rank(_group_design(c, labels, distinct)) < 2:
            return None
        rx, ry = residualise(x[idx], design), residualise(y[idx], design)
        for v, res in ((x[idx], rx), (y[idx], ry)):
            if np.linalg.norm(res) <= 1e-10 * np.linalg.norm(v - v.mean()):
                return None  # x or y is a linear function of the controls on these rows
        r = _rows_r(rx[None], ry[None])[0]
        return None if not np.isfinite(r) else float(r)

    return statistic


def _group_design(control: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Intercept, the controls and one indicator per group (but the first) of the rows `idx`."""
    names = np.unique(labels[idx])
    dummies = [(labels[idx] == g).astype(float) for g in names[1:]]
    return np.column_stack([np.ones(idx.size), control[idx], *dummies])
