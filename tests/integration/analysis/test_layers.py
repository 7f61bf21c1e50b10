"""The CKA command's measurement: per-layer CKA, cross-layer matrices and their plots."""

import numpy as np
import pytest
from helpers.files import is_png as _is_png

from recoverlm.config import DataConfig


def test_cka_models_adds_cross_layer_and_plots(tmp_path, tiny_model, prompt_file):
    from recoverlm.analysis.layers import cka_models

    cfg = DataConfig(prompts=prompt_file, n_heldout=3, max_new_tokens=4, teacher_generation_dtype="float32")
    out = cka_models(tiny_model, {"same": tiny_model}, cfg, progress=False, log=lambda *_: None, plots_dir=tmp_path)
    assert {"teacher", "students", "pooling", "estimator", "cka", "cross_layer", "plots"} <= set(out)
    assert out["cka"]["same"]["linear"] == pytest.approx([1.0] * 3, abs=1e-9)
    assert "cross_layer" not in out["cka"]["same"]
    assert np.array(out["cross_layer"]["same"]["matrix"]).shape == (3, 3)
    assert _is_png(tmp_path / "cka_layers.png") and _is_png(tmp_path / "cka_cross_same.png")
    assert out["plots"]["cross_layer"]["same"] == str(tmp_path / "cka_cross_same.png")
