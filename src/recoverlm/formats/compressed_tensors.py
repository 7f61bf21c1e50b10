"""compressed-tensors integer weight grids (W4A16, W8A16: llm-compressor's `pack-quantized` and
`naive-quantized` formats, group or channel scales, symmetric or with zero points).

compressed-tensors stores signed levels q' in [-2^(b-1), 2^(b-1)) and w = (q' - zp') * scale;
recoverlm's asymmetric grids use q in [0, 2^b) with w = (q - zero) * scale, so the two differ by
a shift of 2^(b-1) in both the level and the zero point, and describe the same weights exactly.
Dequantized weights are computed in float32, where (level x scale) is exact for any scale stored
in bf16, fp16 or fp32; that is the float model recovery trains, on the checkpoint's own grid.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import RecoverLMError
from . import quantization_config, read_tensors

SUPPORTED_FORMATS = ("pack-quantized", "naive-quantized", "int-quantized")
SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")


def _library():
    try:
        from compressed_tensors.compressors.pack_quantized.helpers import (
            pack_to_int32,
            unpack_from_int32,
        )
    except ImportError as exc:
        raise RecoverLMError("reading or writing compressed-tensors checkpoints needs the compressed-tensors "
                             "package: pip install 'recoverlm[compressed]'") from exc
    return pack_to_int32, unpack_from_int32


def _groups(qc: dict, folder: Path) -> list[dict]:
    sparsity = qc.get("sparsity_config")
    if sparsity:  # read as a grid alone, recovery would move pruned weights and the export drop the pattern
        structure = sparsity.get("sparsity_structure") or "unstructured"
        raise RecoverLMError(f"{folder}: its compressed-tensors config also declares {structure} sparsity "
                             f"(format {sparsity.get('format', '?')}), which recoverlm does not read from this "
                             "format: decompress it to a float folder, whose sparsity recoverlm infers from its exact zeros")
    fmt = qc.get("format", "dense")
    if fmt not in SUPPORTED_FORMATS:
        raise RecoverLMError(f"{folder}: compressed-tensors format {fmt!r} is not supported; recoverlm reads the "
                             f"integer weight formats {', '.join(SUPPORTED_FORMATS)}")
    groups = []
    for name, scheme in (qc.get("config_groups") or {}).items():
        w = scheme.get("weights") or {}
        if scheme.get("input_activations") or scheme.get("output_activations"):
            raise RecoverLMError(f"{folder}: config group {name} quantizes activations too; recoverlm keeps weight "
                                 "grids only (W4A16, W8A16)")
        if w.get("type", "int") != "int" or w.get("strategy") not in ("group", "channel", "tensor"):
            raise RecoverLMError(f"{folder}: config group {name} has {w.get('type')} weights with strategy "
                                 f"{w.get('strategy')!r}; recoverlm reads int weights with group, channel or tensor scales")
        if w.get("actorder") not in (None, False, "static", "weight"):
            raise RecoverLMError(f"{folder}: config group {name} uses activation-ordered groups "
                                 f"(actorder={w.get('actorder')}), which recoverlm's grids do not express")
        groups.append({"name": name, "targets": scheme.get("targets", []), "bits": int(w.get("num_bits", 8)),
                       "symmetric": bool(w.get("symmetric", True)), "strategy": w["strategy"]})
    if not groups:
        raise RecoverLMError(f"{folder}: compressed-tensors config has no quantization config groups")
    return groups


def _scheme_for(module: str, groups: list[dict]) -> dict:
    """The config group quantizing `module`: by exact name or `re:` pattern, else the one group
    that targets a layer class (the reader has names only, and only Linear layers are packed)."""
    by_class = []
    for g in groups:
        for t in g["targets"]:
            if t == module or (t.startswith("re:") and re.match(t[3:], module)):
                return g
            if not t.startswith("re:") and "." not in t:
                by_class.append(g)
    if len({g["name"] for g in by_class}) == 1:
        return by_class[0]
    raise RecoverLMError(f"cannot tell which compressed-tensors config group quantizes {module}")


def read_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The float state dict of a compressed-tensors checkpoint and its grid, by weight name."""
    _, unpack = _library()
    qc = quantization_config(folder)
    groups = _groups(qc, folder)
    raw = read_tensors(folder)
    modules = sorted({k[: -len(".weight_scale")] for k in raw if k.endswith(".weight_scale")})
    state = {k: v for k, v in raw.items() if not k.rsplit(".", 1)[-1] in SUFFIXES}
    scales, zeros, kinds = {}, {}, set()
    for module in modules:
        g = _scheme_for(module, groups)
        kinds.add((g["bits"], g["symmetric"]))
        scale = raw[f"{module}.weight_scale"].float()
        if f"{module}.weight_g_idx" in raw:
            raise RecoverLMError(f"{folder}: {module} has a group index (activation ordering), which recoverlm's "
                                 "grids do not express")
        if f"{module}.weight_packed" in raw:
            shape = tuple(int(x) for x in raw[f"{module}.weight_shape"].tolist())
            levels = unpack(raw[f"{module}.weight_packed"], g["bits"], torch.Size(shape)).long()
        else:  # naive: int8 levels stored as the weight; frozen: float weights already on the grid
            weight = raw[f"{module}.weight"]
            shape = tuple(weight.shape)
            levels = weight.long() if not weight.is_floating_point() else None
        if scale.dim() < 2 or scale.shape[0] != shape[0]:  # a tensor scale, one for the whole matrix
            scale = scale.reshape(-1)[:1].expand(shape[0], 1).clone()
        zero = torch.zeros_like(scale)
        if not g["symmetric"]:
            zp = raw.get(f"{module}.weight_zero_point")
            if zp is None:
                raise RecoverLMError(f"{folder}: asymmetric {module} has no weight_zero_point")
            if zp.dtype == torch.int32 and g["strategy"] in ("group", "channel"):  # packed along rows, any width
                zp = unpack(zp, g["bits"], torch.Size(scale.shape), packed_dim=0)
            # signed -> recoverlm's 0..2^b-1; a tensor strategy's single zero point spread like its scale
            zero = (zp.float().reshape(-1, 1) if zp.numel() == 1 else zp.float().reshape(scale.shape)).expand(
                scale.shape).contiguous() + 2 ** (g["bits"] - 1)
        if levels is not None:
            if not g["symmetric"]:
                levels = levels + 2 ** (g["bits"] - 1)
            grouped = levels.float().reshape(shape[0], scale.shape[1], -1)
            weight = ((grouped - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(shape)
        state[f"{module}.weight"] = weight.float()
        scales[f"{module}.weight"], zeros[f"{module}.weight"] = scale.contiguous(), zero.contiguous()
    if len(kinds) != 1:
        raise RecoverLMError(f"{folder}: layers use different bit widths or symmetries ({sorted(kinds)}); "
                             "recoverlm keeps one grid kind per model")
    bits, symmetric = kinds.pop()
    group = {scales[n].shape[1] for n in scales}
    desc = (f"compressed-tensors {qc.get('format')} W{bits}A16 "
            f"({'symmetric' if symmetric else 'with zero points'}, {len(scales)} matrices)")
    return state, {"kind": "quant_grid", "scales": scales, "zeros": zeros, "bits": bits, "symmetric": symmetric,
                   "groups_per_row": sorted(group), "description": desc}


def compress_grid(state: dict[str, torch.Tensor], scales: dict[str, torch.Tensor], zeros: dict[str, torch.Tensor],
                  bits: int, symmetric: bool, scale_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict with every gridded weight packed as compressed-tensors `pack-quantized`:
    weight_packed (int32), weight_scale, weight_shape and, asymmetric, the packed zero point."""
    pack, _ = _library()
    out = {k: v for k, v in state.items() if k not in scales}
    offset = 0 if symmetric else 2 ** (bits - 1)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    for name, scale in scales.items():
        module, weight = name[: -len(".weight")], state[name].float()
        rows, cols = weight.shape
        s, z = scale.float(), zeros[name].float()
        levels = torch.round(weight.reshape(rows, s.shape[1], -1) / s.unsqueeze(-1)) + z.unsqueeze(-1) - offset
        if levels.min() < lo or levels.max() > hi:
            raise RecoverLMError(f"{name} is not on its {bits}-bit grid; export the model recovery wrote")
        out[f"{module}.weight_packed"] = pack(levels.reshape(rows, cols).to(torch.int8), bits)
        out[f"{module}.weight_scale"] = s.to(scale_dtype).contiguous()
        out[f"{module}.weight_shape"] = torch.tensor([rows, cols], dtype=torch.int64)
        if not symmetric:
            out[f"{module}.weight_zero_point"] = pack((z - offset).to(torch.int8), bits, packed_dim=0).contiguous()
    return out


def grid_config(scales: dict[str, torch.Tensor], in_features: dict[str, int], bits: int, symmetric: bool,
                ignore: list[str]) -> dict:
    """config.json's quantization_config for `compress_grid`'s output: one config group per group
    size, Linear layers not on a grid ignored."""
    by_size: dict[int | None, list[str]] = {}
    for name, scale in scales.items():
        groups = scale.shape[1]
        size = None if groups == 1 else in_features[name] // groups
        by_size.setdefault(size, []).append(name[: -len(".weight")])
    config_groups = {}
    for i, (size, names) in enumerate(sorted(by_size.items(), key=lambda kv: kv[0] or 0)):
        weights = {"num_bits": bits, "type": "int", "symmetric": symmetric, "dynamic": False,
                   "strategy": "channel" if size is None else "group", "group_size": size}
        config_groups[f"group_{i}"] = {"targets": ["Linear"] if len(by_size) == 1 else sorted(names),
                                       "weights": weights, "input_activations": None, "output_activations": None}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": config_groups, "ignore": sorted(ignore), "kv_cache_scheme": None}
