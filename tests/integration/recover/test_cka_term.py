"""The CKA training term on tiny models: cka_weight * (1 - linear CKA) per micro-batch, weighted by
its tokens, on the kept response positions the teacher carries at typical norms."""

import math
from types import SimpleNamespace

import pytest
import torch
from helpers.recovery import short_config as _cfg
from helpers.tiny_model import build_tiny_model

from recoverlm.analysis.layer_cka import DEFAULT_MASSIVE_RATIO, typical_token_mask
from recoverlm.errors import RecoverLMError
from recoverlm.lm.forward import completion_outputs
from recoverlm.ops.cka import linear_cka
from recoverlm.recover import trainer as trainer_mod
from recoverlm.recover.objective import loss_sum
from recoverlm.recover.student import check_hidden_targets


def _expected_cka(run, mb, layers):
    """Mean linear CKA over `layers`, from the models' states, with the analysis' massive-token mask."""
    with torch.no_grad():
        _, s_states = completion_outputs(run.student, mb.batch, logits=False, hidden=True)
        _, t_states = completion_outputs(run.teacher, mb.batch, logits=False, hidden=True)
    s_rows, t_rows = s_states[:, mb.keep], t_states[:, mb.keep]
    n = t_rows.shape[1]
    typical = typical_token_mask(tuple(t[None] for t in t_rows), torch.ones(1, n, dtype=torch.long),
                                 DEFAULT_MASSIVE_RATIO)[0]
    layers = range(t_states.shape[0]) if layers is None else layers
    return sum(linear_cka(s_rows[i][typical], t_rows[i][typical]) for i in layers) / len(layers)


@pytest.mark.parametrize("layers", [None, [1]])
def test_cka_term_adds_weight_times_one_minus_cka_times_tokens(tmp_path, tiny_model, pruned, data_cfg, layers):
    run = trainer_mod.Recovery(tiny_model, pruned, tmp_path / "r",
                               _cfg(cka_weight=3.0, cka_layers=layers, onpolicy_steps=1), data_cfg, progress=False)
    plain = run.cfg.model_copy(update={"cka_weight": 0.0})
    for on_policy in (True, False):
        mb = run.micro_batches(1, [0, 1, 2, 3], on_policy=on_policy)[0]
        total, parts = loss_sum(run.student, mb, run.cfg, run.teachers, run.train_set, run.pad_id)
        base, base_parts = loss_sum(run.student, mb, plain, run.teachers, run.train_set, run.pad_id)
        expected = _expected_cka(run, mb, layers)
        assert "cka" not in base_parts and 0 < expected < 1
        assert parts["cka"] == pytest.approx(expected, abs=1e-6)
        assert float(total.detach() - base.detach()) == pytest.approx(3.0 * (1 - expected) * mb.n_tokens, rel=1e-5)
    total.backward()  # the term trains the student
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in run.student.parameters())


def test_short_recovery_with_cka_weight_logs_finite_cka(tmp_path, tiny_model, pruned, data_cfg):
    res = trainer_mod.Recovery(tiny_model, pruned, tmp_path / "r", _cfg(cka_weight=1.0), data_cfg,
                               progress=False).run()
    last = res["history"][-1]
    assert math.isfinite(last["train_loss"]) and 0 < last["train_cka"] <= 1


def test_cka_options_are_checked(tmp_path, tiny_model, pruned, data_cfg):
    with pytest.raises(RecoverLMError, match=r"recover.cka_layers \[2\] out of range: the models have 2 blocks"):
        trainer_mod.Recovery(tiny_model, pruned, tmp_path / "r", _cfg(cka_weight=1.0, cka_layers=[0, 2]), data_cfg,
                             progress=False)
    with pytest.raises(RecoverLMError, match="cka_weight needs method 'distill'"):
        _cfg(method="sft-replay", cka_weight=1.0)
    with pytest.raises(RecoverLMError, match="cka_layers must be a non-empty list"):
        _cfg(cka_weight=1.0, cka_layers=[-1])


def test_cka_needs_the_teachers_depth_but_not_its_width():
    shape = lambda layers, width: SimpleNamespace(num_hidden_layers=layers, hidden_size=width)  # noqa: E731
    check_hidden_targets(_cfg(cka_weight=1.0), shape(2, 64), shape(2, 32))
    with pytest.raises(RecoverLMError, match="hidden_weight needs the teacher's layer shapes"):
        check_hidden_targets(_cfg(cka_weight=1.0, hidden_weight=1.0), shape(2, 64), shape(2, 32))
    with pytest.raises(RecoverLMError, match="the teacher has 2, the student 1"):
        check_hidden_targets(_cfg(cka_weight=1.0), shape(2, 64), shape(1, 64))


def test_cka_term_across_widths(tmp_path, tiny_model, data_cfg):
    """CKA compares any widths: a narrower student trains with the term as it is."""
    narrow = build_tiny_model(tmp_path / "narrow", hidden=32)
    run = trainer_mod.Recovery(tiny_model, narrow, tmp_path / "r", _cfg(cka_weight=1.0), data_cfg, progress=False)
    mb = run.micro_batches(1, [0, 1, 2, 3], on_policy=False)[0]
    _, parts = loss_sum(run.student, mb, run.cfg, run.teachers, run.train_set, run.pad_id)
    assert parts["cka"] == pytest.approx(_expected_cka(run, mb, None), abs=1e-6)


def test_cka_term_leaves_out_massive_tokens_and_too_few_rows():
    from recoverlm.recover.objective import cka_term

    g = torch.Generator().manual_seed(0)
    t_states, s_states = torch.randn(2, 50, 8, generator=g), torch.randn(2, 50, 6, generator=g)  # unrelated
    t_states[:, 3], s_states[:, 3] = 400.0, 400.0  # a sink, huge in both: it would make them look aligned
    keep = torch.ones(50, dtype=torch.bool)
    keep[40:] = False
    got = cka_term(s_states.requires_grad_(), t_states, keep, None)
    rows = keep.clone()
    rows[3] = False
    expected = sum(linear_cka(s_states[i][rows], t_states[i][rows]) for i in range(2)) / 2
    assert float(got.detach()) == pytest.approx(expected, abs=1e-10) and expected < 0.5
    assert linear_cka(s_states[0][keep], t_states[0][keep]) > 0.9
    one = torch.zeros(50, dtype=torch.bool)
    one[0] = True
    assert cka_term(s_states, t_states, one, None) is None
    with pytest.raises(RecoverLMError, match="recover.cka_layers"):
        cka_term(s_states, t_states, keep, [5])
