"""A recovered (or degraded) model in the format a serving engine loads: compressed-tensors
pack-quantized for integer grids (W4A16, W8A16: vLLM, transformers with compressed-tensors), or
bitsandbytes NF4 as transformers saves it. recoverlm's own folders are dense float weights that lie
on the grid; this writes the grid itself, so the memory and speed gain reaches the user.

Every export is checked when written: read back, its logits on a few prompts are compared with
the source model's, and the size on disk is reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import formats, models
from .constraints import (
    NF4Constraint,
    QuantGridConstraint,
    SparsityConstraint,
    load_constraint,
)
from .errors import RecoverLMError
from .io import atomic_dir, check_output_dir, write_json_atomic
from .runs import ADAPTER_DIR, own_files, side_dir

EXPORT_FILE = "export.json"
FORMATS = ("compressed-tensors", "bitsandbytes-nf4")
SERVED_BITS = (4, 8)  # the integer weight widths vLLM's WNA16 kernels take
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHECK_PROMPTS = ["The capital of France is", "Write a haiku about the sea.", "def fibonacci(n):",
                 "Photosynthesis is the process by which"]


def check_export_fits(fmt: str, constraint) -> None:
    """One line when a format cannot hold the model's Constraint, before anything is written."""
    if fmt not in FORMATS:
        raise RecoverLMError(f"export format {fmt!r} is unknown; choose from {', '.join(FORMATS)}")
    want = {"compressed-tensors": QuantGridConstraint, "bitsandbytes-nf4": NF4Constraint}[fmt]
    if isinstance(constraint, want):
        return
    if isinstance(constraint, SparsityConstraint):
        raise RecoverLMError(f"{fmt} export holds quantized weights; a sparse model without a grid is served as "
                             "its float folder (compressed-tensors 0.20 has no sparse compressor)")
    kind = {"compressed-tensors": "an integer grid (quant.rtn, quant.gptq)", "bitsandbytes-nf4": "the NF4 grid (quant.nf4)"}
    raise RecoverLMError(f"{fmt} export needs weights on {kind[fmt]}; this model's constraint is {constraint.kind}")


def check_export_target(out: Path, inputs: list[Path]) -> None:
    """One line, before any work, when `out` cannot take an export: it holds files that are not an
    earlier export's, or it is one of the inputs. Exports were always written with their record in
    the side folder, so a top-level export.json is another tool's file, not our mark."""
    check_output_dir(Path(out), inputs, own_files(EXPORT_FILE, legacy=False))


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def _packed_state(model, constraint, fmt: str, dtype: torch.dtype) -> tuple[dict, dict]:
    state = {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    if fmt == "bitsandbytes-nf4":
        from .constraints.nf4 import nf4_codes
        from .formats.bnb_nf4 import compress_nf4, nf4_config

        named = dict(model.named_parameters())
        codes = {n: nf4_codes(named[n].detach().float(), a) for n, a in constraint.absmax.items()}
        packed = compress_nf4(state, codes, constraint.absmax, constraint.blocksize)
        return packed, nf4_config(_float_linears(model, constraint.absmax))
    from .formats.compressed_tensors import compress_grid, grid_config

    linears = {f"{n}.weight": m.in_features for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    state.update({n: model.get_parameter(n).detach().float() for n in constraint.scales})  # grids in float32
    ignore = _float_linears(model, constraint.scales)
    packed = compress_grid(state, constraint.scales, constraint.zeros, constraint.bits, constraint.symmetric, dtype)
    return packed, grid_config(constraint.scales, linears, constraint.bits, constraint.symmetric, ignore)


def _float_linears(model, gridded) -> list[str]:
    """The Linear modules left off the grid (the head, projections outside the blocks): named in
    the config so that the loader keeps them in float instead of quantizing them itself."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and f"{n}.weight" not in gridded]


@torch.no_grad()
def _logits(model, tokenizer) -> torch.Tensor:
    """Logits at the prompts' real tokens only (padding positions would agree trivially)."""
    batch = tokenizer(CHECK_PROMPTS, return_tensors="pt", padding=True)
    return model(**batch).logits.float()[batch["attention_mask"].bool()]


def _agreement(reference: torch.Tensor, other: torch.Tensor) -> dict:
    return {"max_abs_logit_diff": float((reference - other).abs().max()),
            "top1_agreement": float((reference.argmax(-1) == other.argmax(-1)).float().mean())}


def _exact_kernels(model) -> None:
    """bitsandbytes runs 4-bit layers on CPUs with AVX512-BF16 through a packed bf16 kernel whose
    rounding grows with the model; the check asks whether the export holds the model's weights,
    so it uses the kernel that dequantizes exactly."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _native_check(out: Path, reference: torch.Tensor, tokenizer, fmt: str) -> dict | None:
    """The export loaded by transformers itself, through the format's own library, where installed."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    if importlib.util.find_spec({"compressed-tensors": "compressed_tensors", "bitsandbytes-nf4": "bitsandbytes"}[fmt]) is None:
        return None
    models.quiet_transformers()
    try:
        native = AutoModelForCausalLM.from_pretrained(out, device_map="cpu").eval()
        _exact_kernels(native)
        logits = _logits(native, tokenizer)
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal: recoverlm's own reader is the check
        return {"loaded": False, "error": (str(exc).splitlines() or [type(exc).__name__])[0][:200]}
    return {"loaded": True, "class": type(native).__name__, **_agreement(reference, logits)}


def export_model(model_ref, fmt: str, out: Path, dtype: str = "float32", log=print) -> dict:
    """Write `model_ref` as `fmt` into `out` and check it; returns the record written beside it."""
    source = models.resolve_model(model_ref)
    out = Path(out)
    if dtype not in DTYPES:
        raise RecoverLMError(f"export dtype {dtype!r} is unknown; choose from {', '.join(DTYPES)}")
    check_export_target(out, [source])
    constraint = load_constraint(source)
    check_export_fits(fmt, constraint)
    if (source / ADAPTER_DIR).is_dir() and not constraint.lora_merges:
        raise RecoverLMError(f"{source} keeps its recovery in a LoRA adapter ({ADAPTER_DIR}/) beside a frozen grid, which "
                             f"{fmt} cannot hold; recover with full fine-tuning to export the recovered grid")
    model = models.load_model(source)
    tokenizer = models.load_tokenizer(source)
    constraint.verify(model)  # exactly on the grid, or the packed levels would not be the model
    packed, quant_config = _packed_state(model, constraint, fmt, DTYPES[dtype])
    config = model.config.to_dict()
    config.update(quantization_config=quant_config, dtype=dtype)
    from huggingface_hub import save_torch_state_dict

    with atomic_dir(out) as tmp:
        save_torch_state_dict({k: v.contiguous() for k, v in packed.items()}, tmp, max_shard_size="4GB")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # Checked before it replaces anything at `out`: a failed export leaves no servable folder.
        reference = _logits(model, tokenizer)
        reread = _agreement(reference, _logits(models.load_model(tmp), tokenizer))
        native = _native_check(tmp, reference, tokenizer, fmt)
        record = {"format": fmt, "source": str(source), "dtype": dtype, "scheme": formats.scheme_of(tmp),
                  "bytes": _size(tmp), "source_bytes": _size(source), "reread": reread, "transformers": native}
        # float32 read back by recoverlm is exact; a library's own kernels (bitsandbytes dequantizes
        # and multiplies its own way) differ by a few 1e-3 in the logits
        loaded = native if native and native.get("loaded") else None
        for who, check, tolerance in (("read back", reread, 1e-3), ("loaded by transformers", loaded, 2e-2)):
            if check and ((dtype == "float32" and check["max_abs_logit_diff"] > tolerance)
                          or check["top1_agreement"] < 0.9):
                raise RecoverLMError(f"export check failed: {who}, the {fmt} export differs from {source} (max |logit "
                                     f"diff| {check['max_abs_logit_diff']:.3g}, top-1 agreement "
                                     f"{check['top1_agreement']:.3f}); nothing was written to {out}")
        if fmt == "compressed-tensors" and constraint.bits not in SERVED_BITS:
            record["note"] = (f"vLLM serves {' and '.join(map(str, SERVED_BITS))}-bit weight grids only; this "
                              f"{constraint.bits}-bit export loads in transformers with compressed-tensors")
        write_json_atomic(side_dir(tmp, create=True) / EXPORT_FILE, record)
    log(export_text(record, out))
    return record


def export_text(record: dict, out: Path) -> str:
    r, native = record["reread"], record.get("transformers")
    lines = [f"exported {record['source']} as {record['format']} ({record['dtype']}) to {out}: "
             f"{record['bytes'] / 2**20:.1f} MiB of weights against {record['source_bytes'] / 2**20:.1f} MiB "
             f"({record['bytes'] / max(record['source_bytes'], 1):.2f}x)",
             f"  read back: max |logit diff| {r['max_abs_logit_diff']:.2e}, top-1 agreement {r['top1_agreement']:.3f}"]
    if native and native.get("loaded"):
        lines.append(f"  transformers ({native['class']}): max |logit diff| {native['max_abs_logit_diff']:.2e}, "
                     f"top-1 agreement {native['top1_agreement']:.3f}")
    elif native:
        lines.append(f"  transformers could not load it here: {native['error']}")
    if record.get("note"):
        lines.append(f"  note: {record['note']}")
    return "\n".join(lines)
