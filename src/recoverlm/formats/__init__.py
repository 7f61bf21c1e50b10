"""Checkpoint formats of the compression ecosystem, read into recoverlm's dense float folders and
written back out: compressed-tensors (llm-compressor's format, which vLLM and transformers serve)
and bitsandbytes NF4 as transformers saves it.

A quantized folder is read as float weights that lie exactly on its grid, plus the grid itself
(scales, zero points, absmax), so recovery keeps the very grid the model was served on. The
grid's maths stays in `constraints`; this layer only moves tensors between layouts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import RecoverLMError

# What to tell a user whose checkpoint uses a scheme recoverlm does not read.
UNSUPPORTED = {
    "gptq": "a GPTQ checkpoint (its library is not installed here): convert it to compressed-tensors with "
            "llm-compressor, or dequantize it to a float folder",
    "awq": "an AWQ checkpoint: convert it to compressed-tensors with llm-compressor, or dequantize it to a float folder",
    "fp8": "an FP8 checkpoint: dequantize it to a float folder first",
    "hqq": "an HQQ checkpoint: dequantize it to a float folder first",
    "torchao": "a torchao checkpoint: dequantize it to a float folder first",
}


def quantization_config(folder: Path) -> dict | None:
    """The `quantization_config` of a folder's config.json, if it has one."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    qc = config.get("quantization_config")
    return qc if isinstance(qc, dict) else None


def scheme_of(folder: Path) -> str | None:
    """"compressed-tensors", "bitsandbytes-nf4", or None for a float folder; anything else
    quantized is one clear error naming the scheme and what to do."""
    qc = quantization_config(folder)
    if qc is None:
        return None
    method = str(qc.get("quant_method", "")).lower()
    if method == "compressed-tensors":
        return "compressed-tensors"
    if method == "bitsandbytes":
        if qc.get("load_in_4bit") and qc.get("bnb_4bit_quant_type", "fp4") == "nf4":
            return "bitsandbytes-nf4"
        kind = "8-bit (LLM.int8)" if qc.get("load_in_8bit") else f"4-bit {qc.get('bnb_4bit_quant_type', 'fp4')}"
        raise RecoverLMError(f"{folder}: a bitsandbytes {kind} checkpoint; recoverlm reads bitsandbytes NF4 only. "
                             "Dequantize it to a float folder first")
    note = UNSUPPORTED.get(method, f"a {method or 'unknown'}-quantized checkpoint, which recoverlm does not read: "
                                   "dequantize it to a float folder first")
    raise RecoverLMError(f"{folder}: {note}")


def iter_tensors(folder: Path):
    """(name, tensor) of a folder's top-level safetensors shards, one tensor in memory at a time."""
    from safetensors import safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                yield key, fh.get_tensor(key)


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's top-level safetensors shards."""
    return dict(iter_tensors(folder))


def read_quantized(folder: Path):
    """(float state dict, grid) of a quantized folder, or None for a float one. The grid is a dict:
    {"kind": "quant_grid", "scales", "zeros", "bits", "symmetric", "description"} or
    {"kind": "nf4", "absmax", "blocksize", "description"}, by weight name."""
    scheme = scheme_of(folder)
    if scheme == "compressed-tensors":
        from .compressed_tensors import read_folder
    elif scheme == "bitsandbytes-nf4":
        from .bnb_nf4 import read_folder
    else:
        return None
    return read_folder(Path(folder))
