"""bitsandbytes NF4 as transformers saves a 4-bit model: each Linear's `weight` holds two 4-bit
codes per byte (the first in the high nibble), with `weight.absmax` per block of `blocksize`
consecutive weights (itself 8-bit quantized under double quantization), `weight.quant_map` (the 16
levels) and a JSON quant state. Read and written here with plain torch, so neither needs
bitsandbytes or a GPU; the float weights are code[q] * absmax, exactly the NF4 grid recovery keeps.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import RecoverLMError
from . import read_tensors

STATE_KEY = "quant_state.bitsandbytes__nf4"
# bitsandbytes' NF4 code (functional.get_4bit_type("nf4")): exact zero, asymmetric around it.
NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])


def _quant_state(raw: dict, module: str) -> dict:
    return json.loads(bytes(raw[f"{module}.weight.{STATE_KEY}"].tolist()).decode("utf-8"))


def _absmax(raw: dict, module: str, state: dict) -> torch.Tensor:
    absmax = raw[f"{module}.weight.absmax"]
    if absmax.dtype != torch.uint8:
        return absmax.float()
    # double quantization: absmax in 8 bits, blockwise over `nested_blocksize` with their own absmax
    code, nested = raw[f"{module}.weight.nested_quant_map"].float(), raw[f"{module}.weight.nested_absmax"].float()
    block = int(state["nested_blocksize"])
    values = code[absmax.long()]
    pad = (-values.numel()) % block
    values = torch.nn.functional.pad(values, (0, pad)).reshape(-1, block) * nested.reshape(-1, 1)
    return values.reshape(-1)[: absmax.numel()] + float(state.get("nested_offset", 0.0))


def read_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    raw = read_tensors(folder)
    modules = sorted(k[: -len(f".weight.{STATE_KEY}")] for k in raw if k.endswith(f".weight.{STATE_KEY}"))
    extra = (".weight.absmax", ".weight.quant_map", ".weight.nested_absmax", ".weight.nested_quant_map", f".weight.{STATE_KEY}")
    state = {k: v for k, v in raw.items() if not k.endswith(extra)}
    absmaxes, blocksizes = {}, set()
    for module in modules:
        qs = _quant_state(raw, module)
        if qs.get("quant_type") != "nf4":
            raise RecoverLMError(f"{folder}: {module} is bitsandbytes {qs.get('quant_type')}; recoverlm reads NF4 only")
        code = raw[f"{module}.weight.quant_map"].float()
        if not torch.allclose(code, NF4_CODE, atol=1e-6):
            raise RecoverLMError(f"{folder}: {module} has a quant_map that is not the NF4 code")
        rows, cols = (int(x) for x in qs["shape"])
        blocksize = int(qs["blocksize"])
        if cols % blocksize:
            raise RecoverLMError(f"{folder}: {module} has {cols} inputs, not a multiple of its NF4 block of {blocksize}; "
                                 "recoverlm keeps blocks within rows")
        packed = raw[f"{module}.weight"].reshape(-1).view(torch.uint8)  # the same bytes whatever the storage dtype
        codes = torch.stack([packed >> 4, packed & 15], dim=1).reshape(-1)[: rows * cols].long()
        absmax = _absmax(raw, module, qs).reshape(rows, cols // blocksize)
        weight = NF4_CODE[codes].reshape(rows, cols // blocksize, blocksize) * absmax.unsqueeze(-1)
        state[f"{module}.weight"] = weight.reshape(rows, cols)
        absmaxes[f"{module}.weight"] = absmax.contiguous()
        blocksizes.add(blocksize)
    if len(blocksizes) != 1:
        raise RecoverLMError(f"{folder}: layers use different NF4 block sizes {sorted(blocksizes)}")
    blocksize = blocksizes.pop()
    return state, {"kind": "nf4", "absmax": absmaxes, "blocksize": blocksize,
                   "description": f"bitsandbytes NF4, block {blocksize}, {len(absmaxes)} matrices"}


def compress_nf4(state: dict[str, torch.Tensor], codes: dict[str, torch.Tensor], absmax: dict[str, torch.Tensor],
                 blocksize: int) -> dict[str, torch.Tensor]:
    """The state dict with every NF4 weight in transformers' bitsandbytes layout: its absmax kept
    as recovery left it (re-quantizing with bitsandbytes would recompute it from the weights)."""
    out = {k: v for k, v in state.items() if k not in codes}
    for name, q in codes.items():
        rows, cols = state[name].shape
        flat = q.reshape(-1).to(torch.uint8)
        if flat.numel() % 2:
            flat = torch.cat([flat, flat.new_zeros(1)])
        out[name] = ((flat[0::2] << 4) | flat[1::2]).reshape(-1, 1)
        out[f"{name}.absmax"] = absmax[name].float().reshape(-1).contiguous()
        out[f"{name}.quant_map"] = NF4_CODE.clone()
        qs = {"quant_type": "nf4", "blocksize": blocksize, "dtype": "float32", "shape": [rows, cols]}
        out[f"{name}.{STATE_KEY}"] = torch.tensor(list(json.dumps(qs).encode("utf-8")), dtype=torch.uint8)
    return out


def nf4_config(float_modules: list[str] | None = None) -> dict:
    """transformers' quantization config; `float_modules` are the Linear layers kept in float."""
    return {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
            "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False, "bnb_4bit_compute_dtype": "float32",
            "bnb_4bit_quant_storage": "uint8", "llm_int8_skip_modules": float_modules or None, "llm_int8_threshold": 6.0,
            "llm_int8_has_fp16_weight": False, "llm_int8_enable_fp32_cpu_offload": False}
