"""PNG figures for CKA results: per-layer trajectories, cross-layer heatmaps, CKA vs recovery.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot global state, no
display needed, safe beside other threads) and written atomically: to a temporary file in the
target folder, then renamed into place, so a crash never leaves a truncated PNG behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io import atomic_file
from ..ops.correlate import pearson


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_file(path, binary=True) as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")
    return path


def _layer_ticks(ax, n: int, axis: str = "x") -> None:
    """Label layer 0 "emb" and thin the ticks so 31 layers stay readable."""
    step = max(1, int(np.ceil(n / 16)))
    ticks = list(range(0, n, step))
    labels = ["emb" if t == 0 else str(t) for t in ticks]
    (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks, labels)


def plot_trajectories(cka_result: dict, path: Path, title: str = "Linear CKA with the teacher, layer by layer") -> Path:
    """One line per student: x = layer (0 = embeddings), y = linear CKA against the teacher.

    Takes cka_models' output (with "cka") or layer_cka's {student: {"layers", "linear", ...}}.
    """
    per_student = cka_result.get("cka", cka_result)
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    depth, low = 1, 1.0
    for name, r in per_student.items():
        ax.plot(r["layers"], r["linear"], marker="o", markersize=3.5, linewidth=1.6, label=name)
        depth, low = max(depth, len(r["layers"])), min([low, *r["linear"]])
    _layer_ticks(ax, depth)
    ax.set_ylim(min(0.0, low - 0.05) if low < 0.5 else low - 0.05, 1.01)
    ax.set_xlabel("layer (emb = embeddings, l = output of block l - 1, blocks from 0)")
    ax.set_ylabel("linear CKA")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", frameon=False)
    return _save(fig, path)


def plot_cross_layer(matrix, path: Path, title: str = "Cross-layer linear CKA") -> Path:
    """Heatmap of M[teacher layer, student layer] on a fixed 0..1 colour scale; values printed when small."""
    m = np.asarray(matrix, dtype=float)
    fig = Figure(figsize=(6.4, 5.4))
    ax = fig.add_subplot()
    im = ax.imshow(m, origin="lower", cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="linear CKA")
    if m.size <= 144:
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    _layer_ticks(ax, m.shape[1], "x")
    _layer_ticks(ax, m.shape[0], "y")
    ax.set_xlabel("student layer")
    ax.set_ylabel("teacher layer")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_cka_vs_recovery(x, y, path: Path, title: str = "CKA vs recovery", xlabel: str = "mean linear CKA",
                         ylabel: str = "held-out KL to the teacher", groups: Sequence[str] | None = None) -> Path:
    """Scatter of CKA (x) against a recovery metric (y) with the least-squares line; Pearson r and
    n are appended to the title. `groups` (e.g. the run of each point) colours the points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.add_subplot()
    labels = list(groups) if groups is not None else [""] * len(x)
    for g in dict.fromkeys(labels):
        sel = np.array([lab == g for lab in labels], dtype=bool)
        ax.scatter(x[sel], y[sel], s=28, alpha=0.85, label=g or None)
    r = pearson(x, y, n_boot=0, n_perm=0)
    if r["r"] is not None:
        slope, icept = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, slope * xs + icept, color="black", linewidth=1.2, linestyle="--", label="least squares")
        title = f"{title} (Pearson r = {r['r']:.3f}, n = {r['n']})"
    else:
        title = f"{title} (r undefined: {r['reason']})"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if groups is not None or r["r"] is not None:
        ax.legend(frameon=False, fontsize=8)
    return _save(fig, path)


def plot_curves(series: dict[str, tuple[list[float], list[float]]], path: Path, title: str,
                xlabel: str = "training step", ylabel: str = "validation teacher KL") -> Path:
    """One line per named series of (x, y) points: e.g. each recovery method's curve."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", markersize=3.5, linewidth=1.6, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return _save(fig, path)
