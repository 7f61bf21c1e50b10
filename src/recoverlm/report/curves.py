"""The recovery curve: teacher KL on the validation prompts, and mean CKA, at every evaluation in training."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_file
from ..runs import read_history


def plot_recovery_curve(metrics_jsonl: Path, path: Path) -> Path | None:
    rows = read_history(metrics_jsonl)
    if len(rows) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot(steps, [r["kl"] for r in rows], "o-", color="tab:red", label="validation teacher KL")
    ax.set_xlabel("step")
    ax.set_ylabel("teacher KL (nats/token)", color="tab:red")
    if all("cka" in r for r in rows):
        ax2 = ax.twinx()
        ax2.plot(steps, [sum(r["cka"]) / len(r["cka"]) for r in rows], "s--", color="tab:blue", label="mean CKA")
        ax2.set_ylabel("mean linear CKA over layers", color="tab:blue")
    ax.set_title("Recovery: fidelity and alignment with the teacher")
    fig.tight_layout()
    try:
        with atomic_file(path, binary=True) as fh:
            fig.savefig(fh, format="png", dpi=120)
    finally:
        plt.close(fig)
    return Path(path)


def plot_cka_scatter(metrics_jsonl: Path, path: Path, min_points: int = 4) -> Path | None:
    """Mean CKA against validation teacher KL over the run's evaluations, when there are enough of them."""
    rows = [r for r in read_history(metrics_jsonl) if r.get("cka")]
    if len(rows) < min_points:
        return None
    from ..analysis.plots import plot_cka_vs_recovery

    return plot_cka_vs_recovery([sum(r["cka"]) / len(r["cka"]) for r in rows], [r["kl"] for r in rows], path,
                                title="Mean CKA vs validation KL across evaluations")
