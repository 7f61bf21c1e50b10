"""CKA trajectories and cross-layer matrices between tiny models: the teacher against itself, a
depth-pruned student, left-out tokens, and padding."""

import numpy as np
import pytest
import torch

from recoverlm.analysis.layer_cka import layer_cka, trajectory
from recoverlm.models import load_model


PAD = 2


def _depth_pruned(path, keep=2):
    model = load_model(path)
    model.model.layers = torch.nn.ModuleList(list(model.model.layers)[:keep])
    model.config.num_hidden_layers = keep
    return model


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


def test_layer_cka_leaves_out_the_same_tokens_for_every_model(three_layer, eval_set):
    teacher = load_model(three_layer)
    full = layer_cka(teacher, {"self": teacher}, eval_set, PAD, batch_size=4, progress=False)["self"]
    loose = layer_cka(teacher, {"self": teacher}, eval_set, PAD, batch_size=4, progress=False, massive_ratio=1e9)["self"]
    assert loose["excluded_tokens"] == 0 and loose["linear"] == pytest.approx(full["linear"], abs=1e-12)
    tight = layer_cka(teacher, {"self": teacher}, eval_set, PAD, batch_size=4, progress=False, massive_ratio=1.05)["self"]
    assert 0 < tight["excluded_tokens"] < tight["tokens"]
    assert tight["samples"] == tight["tokens"] - tight["excluded_tokens"]
    assert tight["linear"] == pytest.approx([1.0] * 4, abs=1e-9)  # the teacher against itself, on the kept rows


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
