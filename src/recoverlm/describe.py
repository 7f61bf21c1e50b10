"""What a model folder is, and what `recover` will keep of it: read from its files alone (config,
safetensors headers and tensors, recoverlm's constraint files), without building the model."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

from . import formats, models
from .constraints import (
    CONSTRAINT_FILE,
    NF4Constraint,
    QuantGridConstraint,
    SparsityConstraint,
    checkpoint_grid,
    load_constraint,
)
from .constraints.infer import (
    DEFAULT_THRESHOLD,
    describe_inferred,
    infer_sparsity,
    nm_pattern,
)
from .errors import RecoverLMError
from .runs import side_file


def _parameters(folder: Path) -> tuple[int, list[str]]:
    count, dtypes = 0, set()
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():
                piece = fh.get_slice(name)
                shape = piece.get_shape()
                n = 1
                for d in shape:
                    n *= d
                count += n
                dtypes.add(str(piece.get_dtype()))
    return count, sorted(dtypes)


def _described(constraint, folder: Path, source: str) -> dict:
    """A Constraint in figures (and the one line `recover` logs for it)."""
    info: dict = {"kind": constraint.kind, "source": source}
    if isinstance(constraint, SparsityConstraint):
        masks = constraint.masks
        kept = sum(int(m.sum()) for m in masks.values())
        patterns = {nm_pattern(m) for m in masks.values()}
        pattern = patterns.pop() if len(patterns) == 1 else None
        info.update(matrices=len(masks), sparsity=1 - kept / max(sum(m.numel() for m in masks.values()), 1),
                    pattern=f"{pattern[0]}:{pattern[1]}" if pattern else None)
        info["keeps"] = (f"the zeros of {len(masks)} matrices ({info['sparsity']:.1%} sparse"
                         + (f", {info['pattern']}" if pattern else "") + ")")
    elif isinstance(constraint, QuantGridConstraint):
        name, scale = next(iter(constraint.scales.items()))
        group = _in_features(folder, name) // scale.shape[1]
        info.update(matrices=len(constraint.scales), bits=constraint.bits, symmetric=constraint.symmetric,
                    group_size=group)
        info["keeps"] = (f"{len(constraint.scales)} matrices on a {constraint.bits}-bit "
                         f"{'symmetric' if constraint.symmetric else 'asymmetric'} grid, groups of {group}")
    elif isinstance(constraint, NF4Constraint):
        info.update(matrices=len(constraint.absmax), blocksize=constraint.blocksize)
        info["keeps"] = f"{len(constraint.absmax)} matrices on the NF4 grid, blocks of {constraint.blocksize}"
    else:
        info["keeps"] = "nothing: every weight trains freely"
    return info


def _in_features(folder: Path, weight_name: str) -> int:
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            if weight_name in fh.keys():
                return fh.get_slice(weight_name).get_shape()[1]
            packed_shape = weight_name.removesuffix(".weight") + ".weight_shape"  # compressed-tensors
            if packed_shape in fh.keys():
                return int(fh.get_tensor(packed_shape)[1])
    return 0


def inspect_model(ref, threshold: float = DEFAULT_THRESHOLD) -> dict:
    folder = models.resolve_model(ref)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("config.json is not a JSON object")
        parameters, dtypes = _parameters(folder)
    except (ValueError, SafetensorError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RecoverLMError(f"cannot read {folder}: {exc}".splitlines()[0]) from exc
    info = {"path": str(folder), "architecture": ", ".join(config.get("architectures") or [config.get("model_type", "?")]),
            "layers": config.get("num_hidden_layers"), "hidden_size": config.get("hidden_size"),
            "intermediate_size": config.get("intermediate_size"), "vocab_size": config.get("vocab_size"),
            "parameters": parameters, "dtypes": dtypes, "chat_template": models.has_chat_template(folder)}
    quantized = formats.read_quantized(folder)  # an unsupported scheme is one line naming it
    if quantized is not None:
        info["parameters"] = sum(t.numel() for t in quantized[0].values())
        info["quantization"] = {"scheme": formats.scheme_of(folder), "note": quantized[1]["description"]
                                + ", read as float weights on that grid"}
    saved = side_file(folder, CONSTRAINT_FILE)
    if saved.exists():
        info["constraint"] = _described(load_constraint(folder), folder, str(saved.relative_to(folder)))
    elif quantized is not None:
        info["constraint"] = _described(checkpoint_grid(folder), folder, "the checkpoint's own grid")
    else:
        constraint, summary = infer_sparsity(folder, threshold)
        info["constraint"] = {"kind": constraint.kind, "source": "inferred from exact zeros", **summary,
                              "keeps": describe_inferred(summary)}
    return info


def inspect_text(info: dict) -> str:
    lines = [f"{info['path']}",
             f"  architecture  {info['architecture']}: {info['layers']} layers, width {info['hidden_size']}, "
             f"MLP {info['intermediate_size']}, vocabulary {info['vocab_size']}",
             f"  parameters    {info['parameters']:,} ({', '.join(info['dtypes'])})",
             f"  chat template {'yes' if info['chat_template'] else 'no (plain prompts are used)'}"]
    if "quantization" in info:
        lines.append(f"  quantization  {info['quantization']['note']}")
    c = info["constraint"]
    lines.append(f"  constraint    {c['kind']} ({c['source']})")
    lines.append(f"  recover keeps {c['keeps']}")
    return "\n".join(lines)
