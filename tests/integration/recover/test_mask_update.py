"""recover.mask_update: the mask moves during recovery while the sparsity and its pattern stay
exactly those of the degraded model, in the exported folder and after a resume."""

import pytest
import torch
from helpers.recovery import crash_at, short_config, verified, weights

from recoverlm.config import MaskUpdateConfig
from recoverlm.constraints import load_constraint
from recoverlm.degrade import degrade
from recoverlm.errors import RecoverLMError
from recoverlm.io import read_json
from recoverlm.ops.mask_swap import nm_pattern
from recoverlm.recover.trainer import recover
from recoverlm.runs import RECOVERY_FILE, side_file


@pytest.fixture(scope="module")
def two_four(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("nm") / "m"
    degrade(tiny_model, "prune.nm", {"n": 2, "m": 4, "score": "magnitude"}, out)
    return out


def _cfg(**kw):
    return short_config(offpolicy_steps=4, mask_update=MaskUpdateConfig(every=1, fraction=0.3, stop=1.0), **kw)


@pytest.mark.parametrize("student", ["pruned", "two_four"])
def test_the_mask_changes_and_keeps_its_sparsity_and_pattern(tmp_path, tiny_model, student, data_cfg, request):
    degraded = request.getfixturevalue(student)
    out = recover(tiny_model, degraded, tmp_path / "r", _cfg(select_best=False), data_cfg, progress=False)
    before, after = load_constraint(degraded).masks, load_constraint(tmp_path / "r").masks
    assert set(before) == set(after)
    changed = 0
    for name, old in before.items():
        new = after[name]
        assert torch.equal(new.sum(1), old.sum(1)), name  # every row keeps its count
        assert nm_pattern(new) == nm_pattern(old), name
        changed += int((old & ~new).sum())
    assert changed > 0
    assert verified(tmp_path / "r")["sparsity"] == pytest.approx(verified(degraded)["sparsity"], abs=0)
    record = read_json(side_file(tmp_path / "r", RECOVERY_FILE))["mask_update"]
    assert record["updates"] == 3 and record["changed"] > 0  # steps 1-3 (none at the last step)
    assert record["changed"] == pytest.approx(changed / sum(int(m.sum()) for m in before.values()))
    assert out["mask_update"]["swapped"] >= changed


def test_the_best_checkpoint_is_exported_with_its_own_mask(tmp_path, tiny_model, pruned, data_cfg):
    """select_best may pick an earlier step, taken under an earlier mask: the export pairs them."""
    cfg = _cfg(eval_every=1, select_best=True)
    out = recover(tiny_model, pruned, tmp_path / "r", cfg, data_cfg, progress=False)
    assert out["best_step"] >= 0
    verified(tmp_path / "r")  # raises if a weight outside the saved mask is non-zero


def test_regrown_weights_start_at_the_teachers_value(tmp_path, tiny_model, pruned, data_cfg, monkeypatch):
    seen = {}
    from recoverlm.recover.mask_update import MaskUpdater

    real = MaskUpdater.maybe_update

    def spy(self, step, optimizer):
        old = {n: m.clone() for n, m in self.constraint.masks.items()}
        result = real(self, step, optimizer)
        if result and "grown" not in seen:
            name = next(iter(old))
            grown = self.constraint.masks[name] & ~old[name]
            from recoverlm.constraints.base import find_param

            seen["grown"] = (find_param(self.teacher, name)[grown].clone(), self.params[name][grown].detach().clone())
        return result

    monkeypatch.setattr(MaskUpdater, "maybe_update", spy)
    cfg = short_config(offpolicy_steps=2, select_best=False,
                       mask_update=MaskUpdateConfig(every=1, fraction=0.3, stop=1.0, regrow="teacher"))
    recover(tiny_model, pruned, tmp_path / "r", cfg, data_cfg, progress=False)
    teacher_values, student_values = seen["grown"]
    assert teacher_values.numel() > 0 and torch.equal(teacher_values, student_values)
    assert (teacher_values != 0).any()


def test_resume_continues_exactly_with_the_mask_it_had(tmp_path, tiny_model, pruned, data_cfg, monkeypatch):
    cfg = _cfg(save_every=2, select_best=False)
    recover(tiny_model, pruned, tmp_path / "straight", cfg, data_cfg, progress=False)
    crash_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        recover(tiny_model, pruned, tmp_path / "resumed", cfg, data_cfg, progress=False)
    monkeypatch.undo()
    recover(tiny_model, pruned, tmp_path / "resumed", cfg, data_cfg, progress=False, resume=True)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    ma, mb = load_constraint(tmp_path / "straight").masks, load_constraint(tmp_path / "resumed").masks
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_refused_where_it_cannot_work(tmp_path, tiny_model, quantized, data_cfg):
    with pytest.raises(RecoverLMError, match="mask_update needs a sparse student"):
        recover(tiny_model, quantized, tmp_path / "r", _cfg(), data_cfg, progress=False)
    from recoverlm.config import LoraConfig

    with pytest.raises(RecoverLMError, match="mask_update needs full fine-tuning"):
        _cfg(lora=LoraConfig(r=2))


def test_wanda_norms_count_real_tokens_not_padding(tiny_model, pruned):
    """A sequence alone and the same sequence right-padded in a batch add the same input norms."""
    from recoverlm import models
    from recoverlm.recover.mask_update import MaskUpdater

    model = models.load_model(pruned)
    updater = MaskUpdater(load_constraint(pruned), model, None, MaskUpdateConfig(every=1, fraction=0.1), 10)
    ids = torch.tensor([[5, 9, 13, 17, 21]])
    padded = torch.tensor([[5, 9, 13, 17, 21, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    sums = []
    for batch, attention in ((ids, torch.ones_like(ids)), (padded, mask)):
        for acc in updater.act_sq.values():
            acc.zero_()
        updater.observe_rows(attention)
        model(input_ids=batch, attention_mask=attention)  # grad enabled, as in training
        sums.append({n: a.clone() for n, a in updater.act_sq.items()})
    for name in sums[0]:
        assert torch.allclose(sums[0][name], sums[1][name], rtol=1e-5, atol=1e-8), name


def test_the_activation_sums_of_every_process_are_kept_once(tiny_model, pruned):
    """Each process sums its own inputs: a checkpoint keeps their sum (through `reduce`), and on
    resume one process takes it while the others start from zero, so the next update's sum over
    processes is what a straight run's would be."""
    from recoverlm import models
    from recoverlm.recover.mask_update import MaskUpdater

    def updater(reduce=None):
        return MaskUpdater(load_constraint(pruned), models.load_model(pruned), None,
                           MaskUpdateConfig(every=1, fraction=0.1), 10, reduce)

    ranks = [updater(reduce=lambda t: t * 2) for _ in range(2)]  # two processes that saw the same inputs
    for u in ranks:
        for a in u.act_sq.values():
            a.fill_(3.0)
    saved = ranks[0].state()
    assert all(torch.all(saved[f"act.{n}"] == 6.0) for n in ranks[0].act_sq)
    main, other = updater(), updater()
    main.load_state(saved, main=True)
    other.load_state(saved, main=False)
    assert all(torch.all(a == 6.0) for a in main.act_sq.values()) and all(torch.all(a == 0) for a in other.act_sq.values())
