"""The plots write PNG files, from small arrays."""

import numpy as np
from helpers.files import is_png as _is_png

from recoverlm.analysis.plots import plot_cka_vs_recovery, plot_cross_layer, plot_trajectories


def test_plots_write_png_files(tmp_path):
    result = {"degraded": {"layers": [0, 1, 2, 3], "linear": [1.0, 0.7, 0.5, 0.4]},
              "recovered": {"layers": [0, 1, 2, 3], "linear": [1.0, 0.95, 0.9, 0.85]}}
    assert _is_png(plot_trajectories(result, tmp_path / "t.png"))
    assert _is_png(plot_cross_layer(np.eye(4)[:, :3], tmp_path / "sub" / "h.png", "pruned"))
    x = np.linspace(0.5, 1.0, 12)
    assert _is_png(plot_cka_vs_recovery(x, 2 - x, tmp_path / "s.png", "KL vs CKA", groups=["a", "b"] * 6))
    assert _is_png(plot_cka_vs_recovery([1, 1, 1], [1, 2, 3], tmp_path / "d.png"))  # undefined r still plots
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["d.png", "h.png", "s.png", "t.png"]
