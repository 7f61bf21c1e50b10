"""degrade() and apply_method across the methods on tiny models: constraints that survive training,
broken grids, bad inputs, the record."""

import json

import pytest
import torch
from helpers.constrained import optimizer_steps
from helpers.methods import CAL, run_method as _run

from recoverlm.constraints import SparsityConstraint
from recoverlm.degrade import degrade
from recoverlm.errors import RecoverLMError
from recoverlm.lm.blocks import linear_weights
from recoverlm.models import load_model


def _train_under(model, constraint, steps=3, lr=5e-2):
    """attach -> AdamW steps (each followed by enforce) -> finalize, as recovery does."""
    constraint.attach(model)
    model.train()
    optimizer_steps(model, constraint, steps, lr, weight_decay=0.1)
    constraint.finalize(model)
    model.eval()


# ---- constraints survive training ----------------------------------------------------------------


@pytest.mark.parametrize("method,params", [
    ("prune.magnitude", {"sparsity": 0.5}),
    ("prune.wanda", {"sparsity": 0.5, **CAL}),
    ("prune.nm", {"n": 2, "m": 4}),
    ("quant.rtn", {"bits": 3, "group_size": 0}),
    ("quant.gptq", {"bits": 3, "group_size": 32, **CAL}),
    ("quant.nf4", {"blocksize": 64}),
])
def test_constraint_survives_training(tiny_model, tok, method, params):
    model, constraint, _ = _run(tiny_model, tok, method, **params)
    before_summary = constraint.verify(model)
    before = {k: v.detach().clone() for k, v in linear_weights(model).items()}
    _train_under(model, constraint)
    after_summary = constraint.verify(model)  # raises if a weight left its mask or grid
    after = linear_weights(model)
    assert sum(int((before[k] != v).sum()) for k, v in after.items()) > 0, "training should move weights"
    if isinstance(constraint, SparsityConstraint):
        assert after_summary["sparsity"] == pytest.approx(before_summary["sparsity"])
        for name, mask in constraint.masks.items():
            assert torch.equal(after[name] != 0, mask), name


def test_broken_grids_are_detected(tiny_model, tok):
    for method in ("quant.gptq", "quant.nf4"):
        model, constraint, _ = _run(tiny_model, tok, method, **(CAL if method == "quant.gptq" else {}))
        with torch.no_grad():
            next(iter(linear_weights(model).values()))[0, 0] += 1e-3
        with pytest.raises(RecoverLMError, match="grid broken"):
            constraint.verify(model)


# ---- bad inputs: one-line errors naming the field, no output folder -------------------------------


def _bad_files(tmp_path):
    tmp_path.mkdir()
    (tmp_path / "empty.txt").write_text("  \n\n")
    (tmp_path / "nokey.jsonl").write_text('{"text": "fine"}\n{"answer": "no text"}\n')
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    return tmp_path


BAD = [
    ("prune.magnitude", {"sparsity": 1.0}, "sparsity"),
    ("prune.wanda", {"sparsity": -0.1}, "sparsity"),
    ("prune.wanda", {"n_calibration": 0}, "n_calibration"),
    ("prune.wanda", {"calibration": "{d}/empty.txt"}, "calibration: .*holds no text"),
    ("prune.wanda", {"calibration": "{d}/missing.jsonl"}, "calibration: file not found"),
    ("prune.wanda", {"calibration": "{d}/nokey.jsonl"}, r"calibration: .*nokey.jsonl:2: needs"),
    ("prune.ffn", {"calibration": "{d}/binary.txt"}, "calibration: cannot read"),
    ("prune.nm", {"n": 4, "m": 4}, "n must be smaller than m"),
    ("prune.nm", {"n": 2, "m": 5}, "m 5 does not divide"),
    ("prune.nm", {"score": "random"}, "score"),
    ("prune.ffn", {"fraction": 1.0}, "fraction"),
    ("prune.depth", {"n_blocks": 2}, "n_blocks must lie in 1..1"),
    ("quant.rtn", {"bits": 9}, "bits"),
    ("quant.rtn", {"bits": 1}, "bits"),
    ("quant.rtn", {"bits": 4.5}, "bits must be an integer"),
    ("quant.rtn", {"group_size": 48}, "group_size 48 does not divide"),
    ("quant.rtn", {"symmetric": "yes"}, "symmetric"),
    ("quant.gptq", {"group_size": 96}, "group_size 96 does not divide"),
    ("quant.gptq", {"percdamp": 0}, "percdamp"),
    ("quant.nf4", {"blocksize": 48}, "blocksize 48 does not divide"),
    ("quant.nf4", {"nonsense": 1}, "does not take nonsense"),
]


@pytest.mark.parametrize("method,params,message", BAD, ids=[f"{m}-{'-'.join(p)}" for m, p, _ in BAD])
def test_bad_input_is_one_line_and_writes_nothing(tiny_model, tmp_path, method, params, message):
    d = _bad_files(tmp_path / "files")
    params = {k: v.format(d=d) if isinstance(v, str) else v for k, v in params.items()}
    out = tmp_path / "runs" / "out"
    with pytest.raises(RecoverLMError, match=message) as info:
        degrade(tiny_model, method, params, out)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_record_has_per_matrix_figures(tiny_model, tmp_path):
    record = degrade(tiny_model, "prune.wanda", {"sparsity": 0.5, **CAL}, tmp_path / "w")
    on_disk = json.loads((tmp_path / "w" / "recoverlm" / "degradation.json").read_text())
    assert on_disk["method"] == "prune.wanda" and on_disk["params"]["sparsity"] == 0.5
    assert on_disk["calibration"]["hash"] == record["calibration"]["hash"]
    assert set(on_disk["matrices"]) == set(linear_weights(load_model(tiny_model)))
    assert all(m["sparsity"] == 0.5 for m in on_disk["matrices"].values())
    rtn = degrade(tiny_model, "quant.rtn", {"bits": 3}, tmp_path / "r")
    assert rtn["calibration"] is None and all(m["bits"] <= 3 for m in rtn["matrices"].values())
