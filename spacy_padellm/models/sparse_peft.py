"""SparsePEFT (SQFT): a LoRA adapter on a sparse base that keeps its zeros.

A plain LoRA update B·A is dense, so merging it into a pruned base fills
every pruned weight again and the sparsity is lost. SparsePEFT multiplies
the update by the base's mask, M = (W0 != 0), in training and at merge:

    W = W0 + (B·A · scaling) ⊙ M

so the merged weight is zero exactly where W0 is. The mask is read from the
base weights each time an adapter is put on them (training or loading), so
nothing extra is saved and a pipeline on a sparse base needs no setting.

A base counts as sparse for a layer when at least MIN_ZERO_FRACTION of its
weights are exactly zero: a dense float model has next to none, while a
dense model de-quantized from Q8_0 has a few percent (its rounding to 0),
which is not pruning and is left alone.
"""
import types
from typing import Any

import torch
import torch.nn.functional as F

MIN_ZERO_FRACTION = 0.1
MASK = "sparse_peft_mask"


def _masked_delta(self: Any, adapter: str) -> torch.Tensor:
    from .elastic_lora import lora_delta  # within the elastic rank, if any

    delta = lora_delta(self, adapter)
    return delta * getattr(self, MASK).to(delta.dtype)


def _masked_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft's LoRA forward with the update materialized and masked: the
    update is added as a weight (out x in), not as B(A(x)), since the mask
    applies to the product."""
    if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    for name in self.active_adapters:
        if name not in self.lora_A.keys():
            continue
        weight_dtype = self.lora_A[name].weight.dtype
        result = result + F.linear(self.lora_dropout[name](x.to(weight_dtype)), self.get_delta_weight(name)).to(result.dtype)
    return result


def apply_sparse_masks(model: Any, min_zero_fraction: float = MIN_ZERO_FRACTION) -> int:
    """Mask the LoRA update of every adapted linear layer of `model` (a peft
    model) whose base weight is sparse. Idempotent.
    RETURNS (int): how many layers are masked."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    masked = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        weight = module.get_base_layer().weight
        zeros = weight == 0
        if float(zeros.float().mean()) < min_zero_fraction:
            continue
        if getattr(module, MASK, None) is None:
            module.register_buffer(MASK, ~zeros, persistent=False)
            module.get_delta_weight = types.MethodType(_masked_delta, module)
            module.forward = types.MethodType(_masked_forward, module)
        masked += 1
    return masked


def zero_counts(model: Any) -> dict:
    """Exact zeros of every 2D weight, by parameter name (tests and reports)."""
    return {name: int((param == 0).sum()) for name, param in model.named_parameters() if param.dim() == 2}
