"""Degradation methods on tiny models: exact constraints, survival under training, bad inputs."""

import copy
import json

import pytest
import torch
from helpers.constrained import optimizer_steps

from recoverlm.constraints import SparsityConstraint, load_constraint
from recoverlm.constraints.grid_math import fake_quantize
from recoverlm.lm.blocks import linear_weights
from recoverlm.degrade import METHODS, apply_method, degrade
from recoverlm.degrade.calibration import load_calibration
from recoverlm.lm.blocks import decoder_layers
from recoverlm.constraints.nf4 import NF4_CODE, NF4Constraint
from recoverlm.errors import RecoverLMError
from helpers.tiny_model import build_tiny_model
from recoverlm.models import load_model, load_tokenizer

CAL = {"n_calibration": 8, "max_length": 32}  # enough tokens for a tiny model, and fast


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_tokenizer(tiny_model)


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("deep") / "teacher", layers=4)


def _run(path, tok, method, **params):
    record = {}
    model, constraint = apply_method(load_model(path), method, params, tokenizer=tok, record=record)
    return model, constraint, record


def _train_under(model, constraint, steps=3, lr=5e-2):
    """attach -> AdamW steps (each followed by enforce) -> finalize, as recovery does."""
    constraint.attach(model)
    model.train()
    optimizer_steps(model, constraint, steps, lr, weight_decay=0.1)
    constraint.finalize(model)
    model.eval()


# ---- unstructured and N:M pruning ----------------------------------------------------------------

@pytest.mark.parametrize("method", ["prune.magnitude", "prune.wanda"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_row_sparsity_is_exact(tiny_model, tok, method, sparsity):
    params = {"sparsity": sparsity, **(CAL if method == "prune.wanda" else {})}
    model, constraint, record = _run(tiny_model, tok, method, **params)
    assert constraint.verify(model)["sparsity"] == pytest.approx(round(sparsity * 64) / 64, abs=0.02)
    for name, w in linear_weights(model).items():
        per_row = (w == 0).sum(1)
        assert (per_row == round(sparsity * w.shape[1])).all(), name
        assert (constraint.masks[name].sum(1) == w.shape[1] - per_row).all()
    if method == "prune.wanda":
        assert len(record["calibration"]["hash"]) == 16 and record["calibration"]["samples"] == 8


def test_wanda_weighs_weights_by_input_norm(tiny_model, tok):
    """Wanda keeps small weights that read large inputs, which magnitude pruning would drop."""
    _, magnitude, _ = _run(tiny_model, tok, "prune.magnitude", sparsity=0.5)
    _, wanda, _ = _run(tiny_model, tok, "prune.wanda", sparsity=0.5, **CAL)
    differ = sum(int((magnitude.masks[k] != wanda.masks[k]).sum()) for k in wanda.masks)
    assert differ > 0


@pytest.mark.parametrize("score", ["magnitude", "wanda"])
def test_nm_pattern_holds(tiny_model, tok, score):
    model, constraint, _ = _run(tiny_model, tok, "prune.nm", n=2, m=4, score=score, **CAL)
    for name, w in linear_weights(model).items():
        groups = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert (groups <= 2).all(), name
        assert (constraint.masks[name].reshape(w.shape[0], -1, 4).sum(-1) == 2).all()
    assert constraint.verify(model)["sparsity"] == pytest.approx(0.5)


# ---- quantization --------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,group_size,symmetric", [(2, 32, False), (3, 0, True), (8, 16, True), (4, 64, False)])
def test_rtn_variants_lie_on_grid(tiny_model, tok, bits, group_size, symmetric):
    model, constraint, _ = _run(tiny_model, tok, "quant.rtn", bits=bits, group_size=group_size, symmetric=symmetric)
    constraint.verify(model)
    qmin, qmax = constraint.qrange
    for name, w in linear_weights(model).items():
        scale, zero = constraint.scales[name], constraint.zeros[name]
        assert scale.shape[1] == (w.shape[1] // group_size if group_size else 1)
        codes = torch.round(w.reshape(w.shape[0], scale.shape[1], -1) / scale[..., None]) + zero[..., None]
        assert codes.min() >= qmin and codes.max() <= qmax


def test_gptq_lies_on_grid_and_roundtrips(tiny_model, tmp_path):
    record = degrade(tiny_model, "quant.gptq", {"bits": 3, **CAL}, tmp_path / "gptq")
    assert record["calibration"]["hash"] and record["source_hash"]
    assert all(m["bits"] <= 3 for m in record["matrices"].values())
    reloaded = load_model(tmp_path / "gptq")
    load_constraint(tmp_path / "gptq").verify(reloaded)


@pytest.mark.parametrize("bits,group_size,symmetric", [(3, 0, True), (2, 16, False)])
def test_gptq_variants_lie_on_grid(tiny_model, tok, bits, group_size, symmetric):
    model, constraint, _ = _run(tiny_model, tok, "quant.gptq", bits=bits, group_size=group_size, symmetric=symmetric,
                                blocksize=48, **CAL)  # 48: lazy blocks that groups of 16 must be aligned to
    constraint.verify(model)
    for name, w in linear_weights(model).items():
        scale, zero = constraint.scales[name], constraint.zeros[name]
        assert torch.equal(fake_quantize(w, scale, zero, *constraint.qrange), w)


def test_gptq_matrix_maths():
    """With an isotropic Hessian there is no error to spread, so GPTQ is RTN; lazy batching is an
    exact reordering of the updates, so the block size does not change the result."""
    from recoverlm.degrade.gptq import gptq_matrix
    from recoverlm.degrade.quantize import rtn_grid

    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 64, generator=g)
    q, scale, zero = gptq_matrix(w, torch.eye(64, dtype=torch.float64), 3, 16, False)
    rtn_scale, rtn_zero = rtn_grid(w, 3, 16, False)
    assert torch.equal(q, fake_quantize(w, rtn_scale, rtn_zero, 0, 7))
    x = torch.randn(256, 64, generator=g) @ torch.randn(64, 64, generator=g)
    h = 2 * x.double().T @ x.double() / 256
    one_block, _, _ = gptq_matrix(w, h, 3, 16, False, blocksize=64)
    lazy, _, _ = gptq_matrix(w, h, 3, 16, False, blocksize=16)
    # Equal up to float rounding (the scales may differ in the last bit; a rare tie may flip).
    assert ((one_block - lazy).abs() > 1e-4).float().mean() < 0.01
    assert (x @ (w - lazy).T).pow(2).mean() < (x @ (w - fake_quantize(w, rtn_scale, rtn_zero, 0, 7)).T).pow(2).mean()


def _output_error(reference, model, calib) -> float:
    ids = torch.cat(calib.ids)[: 8 * 64].view(-1, 64)  # the calibration tokens, packed into one batch
    with torch.no_grad():
        return (reference(input_ids=ids).logits - model(input_ids=ids).logits).pow(2).mean().item()


def test_gptq_beats_rtn_at_3_bits(tiny_model, tok):
    calib = load_calibration(tok, None, 16, 64)
    reference = load_model(tiny_model)
    rtn, _, _ = _run(tiny_model, tok, "quant.rtn", bits=3, group_size=32)
    gptq, _, _ = _run(tiny_model, tok, "quant.gptq", bits=3, group_size=32, n_calibration=16, max_length=64)
    assert _output_error(reference, gptq, calib) < _output_error(reference, rtn, calib)


def test_nf4_lies_on_codebook_grid(tiny_model, tmp_path):
    record = degrade(tiny_model, "quant.nf4", {"blocksize": 32}, tmp_path / "nf4")
    assert record["constraint"]["kind"] == "nf4"
    model = load_model(tmp_path / "nf4")
    constraint = load_constraint(tmp_path / "nf4")
    assert isinstance(constraint, NF4Constraint)
    constraint.verify(model)
    for name, w in linear_weights(model).items():
        absmax = constraint.absmax[name]
        levels = w.reshape(w.shape[0], absmax.shape[1], -1) / absmax[..., None]
        nearest = (levels[..., None] - NF4_CODE).abs().amin(-1)
        assert nearest.max() < 1e-6, name
        assert torch.equal(levels.abs().amax(-1), torch.ones_like(absmax))  # absmax is a block's own max


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


# ---- structured pruning --------------------------------------------------------------------------

def test_ffn_pruning_shrinks_and_reloads(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    record = degrade(tiny_model, "prune.ffn", {"fraction": 0.25, **CAL}, tmp_path / "ffn")
    assert record["shape"] == {"intermediate_size": [128, 96]}
    assert record["model"]["after"]["intermediate_size"] == 96
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ffn")
    assert model.config.intermediate_size == 96
    for layer in model.model.layers:
        assert layer.mlp.gate_proj.weight.shape == (96, 64)
        assert layer.mlp.up_proj.weight.shape == (96, 64)
        assert layer.mlp.down_proj.weight.shape == (64, 96)
    logits = model(input_ids=torch.tensor([[1, 5, 9, 12]])).logits
    assert torch.isfinite(logits).all()


def test_ffn_score_keeps_a_massive_activation_neuron(tiny_model, tok):
    """A neuron with huge activations and a small down_proj column dominates the block's output;
    a weight-norm score would drop it, the activation-aware score must keep it."""
    model = load_model(tiny_model)
    mlp = decoder_layers(model)[1][0].mlp
    with torch.no_grad():
        mlp.up_proj.weight[7] *= 1000.0
        mlp.gate_proj.weight[7] *= 30.0
        mlp.down_proj.weight[:, 7] *= 0.01
    kept_before = mlp.up_proj.weight[7].clone()
    model, _ = apply_method(model, "prune.ffn", {"fraction": 0.5, **CAL}, tokenizer=tok)
    mlp = decoder_layers(model)[1][0].mlp
    assert any(torch.equal(row, kept_before) for row in mlp.up_proj.weight)


def test_depth_pruning_drops_blocks_and_generates(deep_model, tmp_path):
    from transformers import AutoModelForCausalLM

    record = degrade(deep_model, "prune.depth", {"n_blocks": 2, **CAL}, tmp_path / "depth")
    assert record["shape"] == {"num_hidden_layers": [4, 2]}
    assert len(record["dropped_blocks"]) == 2 and len(record["angular_distance"]) == 4
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "depth")
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    out = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
    assert out.shape[1] == 9
    # The in-memory result matches what was saved: same blocks kept, same weights.
    reference = load_model(deep_model)
    kept = [i for i in range(4) if i not in record["dropped_blocks"]]
    for new, old in enumerate(kept):
        assert torch.equal(model.model.layers[new].mlp.up_proj.weight, reference.model.layers[old].mlp.up_proj.weight)


def test_padded_calibration_batches_equal_single_samples(deep_model, tok, monkeypatch):
    """Right padding without a mask is exact under causal attention once padded tokens are skipped."""
    import recoverlm.degrade.calibration as calibration

    cal = {"n_calibration": 8, "max_length": 128}  # mostly uncut samples, of different lengths
    assert len({len(ids) for ids in load_calibration(tok, None, **cal).ids}) > 1
    _, _, batched = _run(deep_model, tok, "prune.depth", n_blocks=1, **cal)
    monkeypatch.setattr(calibration, "BATCH_SIZE", 1)
    _, _, single = _run(deep_model, tok, "prune.depth", n_blocks=1, **cal)
    assert batched["angular_distance"] == pytest.approx(single["angular_distance"], rel=1e-4)


# ---- calibration data ----------------------------------------------------------------------------

def test_calibration_from_user_files(tok, tmp_path):
    jsonl = tmp_path / "cal.jsonl"
    jsonl.write_text(
        '{"text": "The quick brown fox."}\n\n{"prompt": "Explain why the sky is blue."}\n'
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n'
    )
    txt = tmp_path / "cal.txt"
    txt.write_text("First paragraph of text.\n\nSecond one, a little longer than the first.\n")
    a, b = load_calibration(tok, jsonl, 8, 32), load_calibration(tok, txt, 8, 32)
    builtin = load_calibration(tok, None, 8, 32)
    assert (a.summary()["samples"], b.summary()["samples"]) == (3, 2)
    assert a.texts[0] == "The quick brown fox."
    assert a.texts[1].startswith("<|im_start|>user\nExplain")  # prompts are rendered with the chat template
    assert a.texts[2].endswith("Hello!<|im_end|>\n")
    assert len({a.hash, b.hash, builtin.hash}) == 3
    assert load_calibration(tok, None, 8, 32).hash == builtin.hash  # deterministic
    assert all(len(ids) <= 32 for ids in builtin.ids)
    base = copy.deepcopy(tok)  # a base model without a chat template gets the prompts as plain text
    base.chat_template = None
    assert "<|im_start|>" not in load_calibration(base, None, 8, 32).texts[0]


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
    on_disk = json.loads((tmp_path / "w" / "degradation.json").read_text())
    assert on_disk["method"] == "prune.wanda" and on_disk["params"]["sparsity"] == 0.5
    assert on_disk["calibration"]["hash"] == record["calibration"]["hash"]
    assert set(on_disk["matrices"]) == set(linear_weights(load_model(tiny_model)))
    assert all(m["sparsity"] == 0.5 for m in on_disk["matrices"].values())
    rtn = degrade(tiny_model, "quant.rtn", {"bits": 3}, tmp_path / "r")
    assert rtn["calibration"] is None and all(m["bits"] <= 3 for m in rtn["matrices"].values())


def test_every_method_is_registered_with_its_defaults():
    assert set(METHODS) >= {"prune.magnitude", "prune.wanda", "prune.nm", "prune.ffn", "prune.depth",
                            "quant.rtn", "quant.gptq", "quant.nf4"}
