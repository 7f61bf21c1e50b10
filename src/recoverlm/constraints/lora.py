"""LoRA adapters through PEFT, made to respect the degradation's Constraint.

Sparsity: PEFT adds s*B@A densely, so a plain merge destroys the masks, and re-masking after the
merge throws away part of what was learned. Here each adapted layer computes
x @ ((W + s*B@A) * M)^T during training, so merging and re-masking is lossless.
A constraint that does not merge (a quantization grid) keeps its base frozen as it is, and the
adapter is exported beside it as a PEFT folder.
"""

from __future__ import annotations

import types

import torch.nn.functional as F

from ..config import LoraConfig
from ..errors import RecoverLMError
from ..lm.blocks import decoder_layers



def _masked_forward(mask):
    def forward(self, x, *args, **kwargs):
        if self.disable_adapters:  # the adapter off: the base as it is (recover's one-copy teacher)
            return self.base_layer(x, *args, **kwargs)
        name = self.active_adapters[0]
        delta = (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]
        weight = (self.base_layer.weight + delta) * mask.to(dtype=delta.dtype, device=delta.device)
        return F.linear(x.to(weight.dtype), weight, self.base_layer.bias)

    return forward


def wrap_lora(model, cfg: LoraConfig, constraint, blocks: list[int] | None = None):
    """Freeze the base and add a trainable adapter; the Constraint decides how it is applied.
    `blocks`: adapt only the target modules of those decoder blocks (None: of every block)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    masks = constraint.lora_masks()
    if masks and cfg.dropout:
        raise RecoverLMError("lora.dropout must be 0 under sparsity masks (the masked adapter has no dropout path)")
    where = {}
    if blocks is not None:  # PEFT reads a module's block from the name of the decoder-block list
        where = {"layers_to_transform": list(blocks), "layers_pattern": decoder_layers(model)[0].rsplit(".", 1)[-1]}
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=cfg.target_modules, bias="none", task_type="CAUSAL_LM", **where)
    try:
        peft_model = get_peft_model(model, peft_cfg)
    except ValueError as exc:
        raise RecoverLMError(f"lora.target_modules: {str(exc).splitlines()[0]}") from exc
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            key = name.replace("base_model.model.", "", 1) + ".weight"
            if key in masks:
                module.forward = types.MethodType(_masked_forward(masks[key]), module)
    return peft_model


def merged_for_export(peft_model, constraint):
    """The plain model to save: merged (and the constraint re-applied), or the bare base where the
    constraint keeps its base frozen and the adapter ships beside it."""
    if not constraint.lora_merges:
        return peft_model.unload()
    # A parametrized base (NF4) first becomes plain weights: PEFT's merge adds the adapter to
    # `weight`, which for a parametrized layer is a computed tensor, and the sum would be lost.
    constraint.finalize(peft_model.get_base_model())
    merged = peft_model.merge_and_unload()
    constraint.enforce(merged)
    return merged
