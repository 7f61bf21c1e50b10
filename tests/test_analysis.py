"""Hidden-state capture, CKA trajectories, recovery correlations and plots, on tiny models and small arrays."""

import math

import numpy as np
import pytest
import torch

from recoverlm.analysis.layer_cka import layer_cka, pool, trajectory, typical_token_mask
from recoverlm.lm.capture import hidden_states
from recoverlm.ops.cka import linear_cka
from recoverlm.ops.correlate import correlate_recovery, partial_correlation, pearson, spearman
from recoverlm.analysis.plots import plot_cka_vs_recovery, plot_cross_layer, plot_trajectories
from recoverlm.config import DataConfig
from helpers.tiny_model import build_tiny_model
from recoverlm.models import load_model
from recoverlm.teacher.response_set import ResponseSet

PAD = 2


@pytest.fixture(scope="module")
def three_layer(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny3") / "m", layers=3)


@pytest.fixture(scope="module")
def eval_set():
    """Six sequences of different lengths, so batching them together needs padding."""
    g = torch.Generator().manual_seed(0)
    lens = [(5, 7), (3, 2), (8, 9), (4, 4), (6, 1), (2, 10)]
    prompts = [torch.randint(3, 300, (p,), generator=g).tolist() for p, _ in lens]
    responses = [torch.randint(3, 300, (r,), generator=g).tolist() for _, r in lens]
    return ResponseSet([""] * len(lens), prompts, responses, {})


def _depth_pruned(path, keep=2):
    model = load_model(path)
    model.model.layers = torch.nn.ModuleList(list(model.model.layers)[:keep])
    model.config.num_hidden_layers = keep
    return model


# ---- capture ----------------------------------------------------------------------------------

def test_teacher_vs_itself_is_one_and_modes_are_restored(three_layer, eval_set):
    teacher = load_model(three_layer)
    teacher.train()
    traj = trajectory(teacher, teacher, eval_set, PAD, batch_size=4)
    assert len(traj) == 4  # embeddings + 3 blocks
    assert traj == pytest.approx([1.0] * 4, abs=1e-9)
    assert teacher.training  # a trainer's model keeps its mode
    assert trajectory(teacher, teacher, eval_set, PAD, pooling="mean") == pytest.approx([1.0] * 4, abs=1e-9)


def test_depth_pruned_student(three_layer, eval_set):
    teacher, student = load_model(three_layer), _depth_pruned(three_layer)
    out = layer_cka(teacher, {"pruned": student}, eval_set, PAD, batch_size=4, progress=False, cross_tokens=40)["pruned"]
    assert (out["teacher_layers"], out["student_layers"]) == (4, 3)
    assert len(out["linear"]) == len(out["debiased"]) == 3  # paired by index up to the shallower depth
    assert out["linear"][:2] == pytest.approx([1.0, 1.0], abs=1e-9)  # the kept blocks are the teacher's
    cross = out["cross_layer"]
    m = np.array(cross["matrix"])
    assert m.shape == (4, 3)
    assert cross["samples"] == 40 and cross["of"] == out["tokens"] == sum(map(len, eval_set.prompt_ids + eval_set.response_ids))
    assert m[0, 0] == pytest.approx(1.0) and m[1, 1] == pytest.approx(1.0)
    assert trajectory(teacher, student, eval_set, PAD) == pytest.approx(out["linear"], abs=1e-12)


def test_one_massive_token_dominates_linear_cka_until_left_out():
    """The reason for typical_token_mask: one shared huge row makes unrelated features look aligned."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)  # unrelated
    x[0], y[0] = 500.0, 500.0  # a sink token, huge in both models
    assert linear_cka(x, y) > 0.95
    states = (x[None], x[None] * 2)  # (B=1, T=200, d) at two layers; the teacher's states decide
    keep = typical_token_mask(states, torch.ones(1, 200, dtype=torch.long), ratio=20.0)[0]
    assert not keep[0] and keep[1:].all()
    assert linear_cka(x[keep], y[keep]) < 0.3


def test_typical_token_mask_never_keeps_padding_and_checks_the_ratio():
    h = torch.ones(2, 4, 3)
    h[1, 3] = 1e6  # a padded position with a huge value must not move the median or be kept
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    keep = typical_token_mask((h,), mask, ratio=5.0)
    assert keep.tolist() == [[True] * 4, [True, True, True, False]]
    with pytest.raises(Exception, match="ratio must be > 1"):
        typical_token_mask((h,), mask, ratio=1.0)


def test_layer_cka_leaves_out_the_same_tokens_for_every_model(three_layer, eval_set):
    teacher = load_model(three_layer)
    full = layer_cka(teacher, {"self": teacher}, eval_set, PAD, batch_size=4, progress=False)["self"]
    loose = layer_cka(teacher, {"self": teacher}, eval_set, PAD, batch_size=4, progress=False, massive_ratio=1e9)["self"]
    assert loose["excluded_tokens"] == 0 and loose["linear"] == pytest.approx(full["linear"], abs=1e-12)
    tight = layer_cka(teacher, {"self": teacher}, eval_set, PAD, batch_size=4, progress=False, massive_ratio=1.05)["self"]
    assert 0 < tight["excluded_tokens"] < tight["tokens"]
    assert tight["samples"] == tight["tokens"] - tight["excluded_tokens"]
    assert tight["linear"] == pytest.approx([1.0] * 4, abs=1e-9)  # the teacher against itself, on the kept rows


def test_capture_stops_before_the_lm_head_and_masks_padding(three_layer):
    model = load_model(three_layer)
    ids = torch.randint(3, 300, (1, 6), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([ids, torch.full((1, 4), PAD)], 1)
    mask = torch.cat([torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)], 1)
    plain = pool(hidden_states(model, ids, torch.ones_like(ids)), torch.ones_like(ids))
    masked = pool(hidden_states(model, padded, mask), mask)
    assert [h.shape for h in masked] == [(6, 64)] * 4
    for a, b in zip(plain, masked):
        assert torch.allclose(a, b, atol=1e-5)
    ref = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.allclose(plain[2], ref[2][0], atol=1e-6)  # blocks match HF; HF's last one is after the final norm


@pytest.mark.parametrize("pooling", ["token", "mean"])
def test_padding_invariance(three_layer, eval_set, pooling):
    teacher, student = load_model(three_layer), _depth_pruned(three_layer)
    student.model.layers[1].mlp.down_proj.weight.data.mul_(0.5)  # not identical to the teacher anywhere past block 0
    kw = dict(progress=False, pooling=pooling, cross_tokens=30)
    one = layer_cka(teacher, {"s": student}, eval_set, PAD, batch_size=1, **kw)["s"]  # no padding at all
    six = layer_cka(teacher, {"s": student}, eval_set, PAD, batch_size=6, **kw)["s"]  # up to 14 pads per row
    assert one["samples"] == six["samples"] == (len(eval_set) if pooling == "mean" else one["tokens"])
    for key in ("linear", "debiased"):
        assert one[key] == pytest.approx(six[key], abs=1e-6)
    assert np.allclose(one["cross_layer"]["matrix"], six["cross_layer"]["matrix"], atol=1e-6)


# ---- correlations ---------------------------------------------------------------------------------

def test_pearson_and_spearman_match_hand_computations():
    # x - 3 = [-2,-1,0,1,2], y - 3 = [-1,-2,1,0,2]: sum of products 8, sums of squares 10 and 10.
    assert pearson([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], n_boot=0, n_perm=0)["r"] == pytest.approx(0.8)
    # No ties: 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 4 / 120.
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], n_boot=0, n_perm=0)["r"] == pytest.approx(0.8)
    # Ties take their average rank: x -> [1, 2.5, 2.5, 4]; r = 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4], n_boot=0, n_perm=0)["r"] == pytest.approx(math.sqrt(0.9))
    # Spearman only sees the order: a monotone transform changes Pearson but not Spearman.
    x = np.arange(1.0, 9.0)
    assert spearman(x, np.exp(x), n_boot=0, n_perm=0)["r"] == pytest.approx(1.0)
    assert pearson(x, np.exp(x), n_boot=0, n_perm=0)["r"] < 0.95


def test_permutation_p_and_bootstrap_ci():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    strong = pearson(x, 2 * x + 0.5 * rng.normal(size=30))
    assert strong["p"] < 0.001 and strong["ci"][0] < strong["r"] < strong["ci"][1]
    noise = pearson(x, rng.normal(size=30))
    assert noise["p"] > 0.1 and noise["ci"][0] < 0 < noise["ci"][1]
    assert spearman(x, rng.normal(size=30))["p"] > 0.05
    assert pearson(x, 2 * x)["p"] == pearson(x, 2 * x)["p"]  # seeded


def test_partial_correlation_removes_a_confound():
    rng = np.random.default_rng(1)
    step = np.arange(40.0)
    x, y = step + 3 * rng.normal(size=40), step + 3 * rng.normal(size=40)
    assert pearson(x, y, n_boot=0, n_perm=0)["r"] > 0.9
    part = partial_correlation(x, y, step)
    assert abs(part["r"]) < 0.2 and part["p"] > 0.05 and part["ci"][0] < 0 < part["ci"][1]
    # A real effect on top of the confound survives.
    z = step + 3 * rng.normal(size=40)
    assert partial_correlation(z, z + 0.5 * rng.normal(size=40), step)["r"] > 0.9


@pytest.mark.parametrize("fn", [pearson, spearman])
def test_degenerate_inputs_give_none_with_a_reason(fn):
    for x, y, reason in [([1, 1, 1, 1], [1, 2, 3, 4], "constant"), ([1, 2], [2, 1], "< 3"),
                         ([1, 2, float("nan")], [1, 2, 3], "non-finite")]:
        out = fn(x, y)
        assert out["r"] is None and out["ci"] is None and out["p"] is None and reason in out["reason"]
    assert partial_correlation([1, 2, 3, 4, 5], [2, 1, 3, 5, 4], [1, 2, 3, 4, 5])["reason"].endswith("of the control")
    assert "degrees of freedom" in partial_correlation([1, 2, 3], [3, 1, 2], [1, 2, 3])["reason"]


def test_correlate_recovery_over_runs_and_checkpoints():
    rng = np.random.default_rng(2)
    rows = []
    for run, damage in (("prune", 1.0), ("quant", 0.5)):
        for step in range(0, 100, 10):
            cka = [1.0, 0.9 - 0.3 * damage * np.exp(-step / 40) + 0.01 * rng.normal(), 0.8 - 0.4 * damage * np.exp(-step / 40)]
            rows.append({"run": run, "step": step, "kl": 2 * damage * np.exp(-step / 40) + 0.01 * rng.normal(), "cka": cka})
    rows.append({"run": "prune", "step": 5, "kl": None, "cka": [1.0, 0.5, 0.5]})  # skipped
    out = correlate_recovery(rows, "kl", n_boot=200, n_perm=200)
    assert out["n"] == 20 and out["skipped"] == 1 and out["runs"] == ["prune", "quant"]
    assert set(out["features"]) == {"mean", "last", "layer_0", "layer_1", "layer_2"}
    assert out["features"]["mean"]["pearson"]["r"] < -0.9  # higher CKA, lower KL
    assert out["features"]["last"]["spearman"]["p"] < 0.01
    assert out["features"]["layer_0"]["pearson"]["reason"] == "x is constant"  # embeddings never change
    assert out["features"]["mean"]["partial"]["r"] is not None
    within = correlate_recovery(rows, "kl", ("last",), within_run=True, n_boot=0, n_perm=0)
    assert within["control"] == ["step", "run"] and within["features"]["last"]["partial"]["controls"] == 2
    assert correlate_recovery([{"kl": 1.0}], "kl")["reason"].startswith("no row")


# ---- plots and the CKA command's output ------------------------------------------------------------

def _is_png(path):
    data = path.read_bytes()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2000


def test_plots_write_png_files(tmp_path):
    result = {"degraded": {"layers": [0, 1, 2, 3], "linear": [1.0, 0.7, 0.5, 0.4]},
              "recovered": {"layers": [0, 1, 2, 3], "linear": [1.0, 0.95, 0.9, 0.85]}}
    assert _is_png(plot_trajectories(result, tmp_path / "t.png"))
    assert _is_png(plot_cross_layer(np.eye(4)[:, :3], tmp_path / "sub" / "h.png", "pruned"))
    x = np.linspace(0.5, 1.0, 12)
    assert _is_png(plot_cka_vs_recovery(x, 2 - x, tmp_path / "s.png", "KL vs CKA", groups=["a", "b"] * 6))
    assert _is_png(plot_cka_vs_recovery([1, 1, 1], [1, 2, 3], tmp_path / "d.png"))  # undefined r still plots
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["d.png", "h.png", "s.png", "t.png"]


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


def test_relative_hidden_error_is_zero_for_the_teacher_and_grows_with_damage(tiny_model, eval_set, tmp_path):
    from recoverlm.analysis.hidden_error import relative_hidden_error
    from recoverlm.data import collate
    from recoverlm.degrade import degrade
    from recoverlm.ops.divergences import hidden_relative_mse
    from recoverlm.lm.forward import completion_outputs

    teacher = load_model(tiny_model).eval()
    assert relative_hidden_error(teacher, teacher, eval_set, PAD) == [0.0] * teacher.config.num_hidden_layers
    errors = {}
    for sparsity in (0.2, 0.6):
        degrade(tiny_model, "prune.magnitude", {"sparsity": sparsity}, tmp_path / str(sparsity))
        errors[sparsity] = relative_hidden_error(teacher, load_model(tmp_path / str(sparsity)).eval(), eval_set, PAD,
                                                 batch_size=4)
    assert all(0 < a < b for a, b in zip(errors[0.2], errors[0.6]))
    # batching (and its padding) does not change the value: the trainer's loss averaged over positions
    student = load_model(tmp_path / "0.6").eval()
    batch = collate(eval_set.prompt_ids, eval_set.response_ids, PAD)
    with torch.no_grad():
        s, t = completion_outputs(student, batch, hidden=True)[1], completion_outputs(teacher, batch, hidden=True)[1]
    assert sum(errors[0.6]) / len(errors[0.6]) == pytest.approx(float(hidden_relative_mse(s, t).mean()), rel=1e-5)
