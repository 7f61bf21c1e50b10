"""Degradation methods. Each takes a model and returns (model, Constraint).

Every method has the signature fn(model, **params, tokenizer=None, record=None): `params` are the
user's (defaults below); calibrated methods need the tokenizer to render their calibration texts;
`record`, when given, is a dict the method fills with what degradation.json should say beyond the
parameters (calibration hash, new shapes, dropped blocks).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

import torch

from ..errors import RecoverLMError
from ..lm.blocks import linear_weights
from ..runs import DEGRADATION_FILE, own_files, side_dir, side_file
from .calibration import CALIBRATION_DEFAULTS, check_calibration_args
from .checks import check_choice, check_fraction, check_int, check_number
from .gptq import quantize_gptq
from .nf4 import quantize_nf4
from .prune import check_nm_args, check_sparsity, prune_magnitude, prune_nm, prune_wanda
from .quantize import check_quant_args, quantize_rtn
from .sft import check_sft_args, finetune_sft
from .structured import prune_depth, prune_ffn

_CAL = CALIBRATION_DEFAULTS

# method name -> (function, the parameters it accepts with their defaults)
METHODS: dict[str, tuple[Callable, dict[str, Any]]] = {
    "prune.magnitude": (prune_magnitude, {"sparsity": 0.5, "scope": "row"}),
    "prune.wanda": (prune_wanda, {"sparsity": 0.5, **_CAL}),
    "prune.nm": (prune_nm, {"n": 2, "m": 4, "score": "magnitude", **_CAL}),
    "prune.ffn": (prune_ffn, {"fraction": 0.10, **_CAL}),
    "prune.depth": (prune_depth, {"n_blocks": 3, **_CAL}),
    "quant.rtn": (quantize_rtn, {"bits": 4, "group_size": 32, "symmetric": False}),
    "quant.gptq": (quantize_gptq, {"bits": 4, "group_size": 32, "symmetric": False, "percdamp": 0.01,
                                   "blocksize": 128, **_CAL}),
    "quant.nf4": (quantize_nf4, {"blocksize": 64}),
    # lr 5e-4 for 150 steps: narrow SFT that costs general ability; gentler settings teach the task
    # without forgetting, which leaves recovery nothing to do (docs/evaluation.md).
    "sft": (finetune_sft, {"task": "extraction", "n_train": 512, "steps": 150, "batch_size": 8, "lr": 5e-4,
                           "lora": False, "lora_r": 16, "seed": 0}),
}


def method_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The full parameter set of a method: its defaults overridden by `params`; unknown keys are errors."""
    if method not in METHODS:
        raise RecoverLMError(f"unknown degradation method {method!r}; available: {', '.join(sorted(METHODS))}")
    defaults = METHODS[method][1]
    unknown = set(params) - set(defaults)
    if unknown:
        raise RecoverLMError(f"method {method} does not take {', '.join(sorted(unknown))}; it takes {', '.join(defaults)}")
    return {**defaults, **params}


def _calibration(calibration, n_calibration, max_length) -> None:
    check_calibration_args(calibration, n_calibration, max_length)
    if calibration is not None and not Path(calibration).expanduser().is_file():
        raise RecoverLMError(f"calibration: file not found: {calibration}")


# The checks of each method that need no model (its shapes are checked when it runs).
_MODEL_FREE_CHECKS: dict[str, Callable[..., None]] = {
    "prune.magnitude": lambda sparsity, scope: (check_sparsity(sparsity), check_choice("scope", scope, ("row", "tensor"))),
    "prune.wanda": lambda sparsity, **cal: (check_sparsity(sparsity), _calibration(**cal)),
    "prune.nm": lambda n, m, score, **cal: (check_nm_args(n, m, score), _calibration(**cal)),
    "prune.ffn": lambda fraction, **cal: (check_fraction("fraction", fraction), _calibration(**cal)),
    "prune.depth": lambda n_blocks, **cal: (check_int("n_blocks", n_blocks, 1), _calibration(**cal)),
    "quant.rtn": lambda bits, group_size, symmetric: check_quant_args(bits, group_size, symmetric),
    "quant.gptq": lambda bits, group_size, symmetric, percdamp, blocksize, **cal: (
        check_quant_args(bits, group_size, symmetric), check_number("percdamp", percdamp, 0.0),
        check_int("blocksize", blocksize, 1), _calibration(**cal)),
    "quant.nf4": lambda blocksize: check_int("blocksize", blocksize, 2),
    "sft": check_sft_args,
}


def check_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """method_params, with every check that needs no model done now: a run or a study refuses a
    bad value before it loads a model, degrades anything or claims a folder."""
    full = method_params(method, params)
    _MODEL_FREE_CHECKS[method](**full)
    return full


def apply_method(model, method: str, params: dict[str, Any], tokenizer=None, record: dict | None = None,
                 held_out: Sequence[str] = ()):
    """`held_out`: prompts a calibrated method's built-in calibration must leave out."""
    fn, defaults = METHODS[method]
    extra = {"held_out": held_out} if "calibration" in defaults else {}
    return fn(model, **method_params(method, params), tokenizer=tokenizer, record=record, **extra)


def is_calibrated_on_builtin(method: str, params: dict[str, Any]) -> bool:
    """Whether the method fits the model to the built-in prompts (the default calibration)."""
    full = method_params(method, params)
    return "calibration" in METHODS[method][1] and full["calibration"] is None and not (
        method == "prune.nm" and full["score"] == "magnitude")


def calibration_split(method: str, params: dict[str, Any], data_cfg) -> str | None:
    """What a built-in calibration depends on beyond the method: the prompts the run scores (left
    out) and whether texts take the chat template. None for a method not calibrated on them."""
    from .. import data

    if not is_calibrated_on_builtin(method, params):
        return None
    scored = data.scored_prompts(data.load_prompts(data_cfg.prompts), data_cfg.n_heldout, data_cfg.n_validation,
                                 data_cfg.split_seed)
    return data.texts_hash([*scored, f"chat_template={data_cfg.use_chat_template}"])


def check_calibration_kept_apart(record: dict, where: Path, data_cfg=None) -> None:
    """A damaged model calibrated on the built-in prompts is reused only by runs whose scored
    prompts its calibration left out: one made before calibration left them out, or for another
    split (`data_cfg`'s, when given), was fitted to prompts its damage is measured on. One line."""
    if not is_calibrated_on_builtin(record.get("method", ""), record.get("params", {})):
        return
    if "held-out" not in str((record.get("calibration") or {}).get("source", "")):
        raise RecoverLMError(f"{where} was calibrated on prompts that include the held-out and validation ones "
                             "(made by an earlier recoverlm); remove it so that it is made again")
    if data_cfg is not None and record.get("calibration_split") != calibration_split(
            record["method"], record["params"], data_cfg):
        raise RecoverLMError(f"{where} was calibrated around another prompt split than this run's (its scored "
                             "prompts could be among the calibration texts); remove it so that it is made again")


def check_folder_split(folder: Path, data_cfg) -> None:
    """check_calibration_kept_apart for the damaged model in `folder`, from its record (a folder
    without one, not degraded by recoverlm, has nothing to check)."""
    from ..io import read_json

    record = side_file(Path(folder), DEGRADATION_FILE)
    if record.is_file():
        try:
            made = read_json(record)
        except (ValueError, OSError) as exc:
            raise RecoverLMError(f"{record} cannot be read ({exc})") from exc
        check_calibration_kept_apart(made, Path(folder), data_cfg)


@torch.no_grad()
def matrix_figures(model, constraint) -> dict[str, dict]:
    """Measured, per decoder matrix: shape, fraction of exact zeros and, on a grid, the bit-width
    that the levels actually used need (ceil(log2(distinct levels)))."""
    out = {}
    for name, weight in linear_weights(model).items():
        w = weight.detach().float()
        fig = {"shape": list(w.shape), "sparsity": round((w == 0).float().mean().item(), 6)}
        codes = constraint.codes(name, w)
        if codes is not None:
            fig["bits"] = max(1, math.ceil(math.log2(torch.unique(codes).numel())))
        out[name] = fig
    return out


def _shape(model) -> dict:
    cfg = model.config
    return {
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "intermediate_size": getattr(cfg, "intermediate_size", None),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def degrade(model_ref: str | Path, method: str, params: dict[str, Any], out: Path, data_cfg=None) -> dict:
    """Load a model, damage it, and save the damaged model with its Constraint and a record. A
    calibrated method's built-in calibration leaves out the prompts that `data_cfg` (a DataConfig;
    default: the defaults) holds out for validation and evaluation."""
    from .. import data, models
    from ..config import DataConfig
    from ..io import atomic_dir, check_output_dir, write_json_atomic

    full = check_params(method, params)
    split = data_cfg or DataConfig()
    held_out = data.scored_prompts(data.load_prompts(split.prompts), split.n_heldout, split.n_validation,
                                   split.split_seed) if is_calibrated_on_builtin(method, full) else []
    source = models.resolve_model(model_ref)
    check_output_dir(out, [source], own_files(DEGRADATION_FILE))
    model = models.load_model(source)
    tokenizer = models.load_tokenizer(source)
    before = _shape(model)
    start = time.perf_counter()
    details: dict[str, Any] = {}
    # Calibration text formatted as the run's prompts are: plain where the run turns the template off.
    calibrating = tokenizer
    if not split.use_chat_template and getattr(tokenizer, "chat_template", None):
        calibrating = copy.copy(tokenizer)
        calibrating.chat_template = None
    model, constraint = apply_method(model, method, full, tokenizer=calibrating, record=details, held_out=held_out)
    seconds = time.perf_counter() - start
    check = constraint.verify(model)
    if isinstance(check, dict):
        check.pop("per_matrix", None)  # the same figures are in "matrices", with shapes and bits
    record = {
        "method": method,
        "params": full,
        "source_model": str(source),
        "source_hash": models.model_hash(source),
        "calibration": details.pop("calibration", None),
        "calibration_split": calibration_split(method, full, split),
        "constraint": check,
        "model": {"before": before, "after": _shape(model)},
        **details,
        "seconds": round(seconds, 2),
        "matrices": matrix_figures(model, constraint),
    }
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        constraint.save(tmp)
        write_json_atomic(side_dir(tmp, create=True) / DEGRADATION_FILE, record)
    return record



from ..stage_package import callable_as  # noqa: E402 - the stage's functions above come first

callable_as(__name__, __name__, "degrade")
