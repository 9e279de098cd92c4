"""QA-SparsePEFT (SQFT): training through the base's quantizer, so that the
merged model lands on the base's quantization grid.

The grid is GGUF's Q8_0: blocks of 32 consecutive inputs of a row, one
float16 scale d per block, weights d·q with integer q in [-127, 127]. It is
symmetric, so it holds an exact zero: a pruned weight stays pruned. (GGUF
Q4_1, the shipped file's format, has an offset per block and no exact zero;
the sparse 4-bit path would need a symmetric grid such as Q4_0, which is not
built yet.)

A base on the grid (`sparsify --quantize q8_0`) keeps its scales in its
weights: the largest magnitude of a block is 127·d exactly, so d is read
back from the weights and never stored. An adapted projection then computes

    W = fake_quant(W0 + (B·A·scaling) ⊙ M, d)

with the straight-through estimator (the rounding's gradient taken as 1),
and the merge writes fake_quant(W0 + ΔW ⊙ M, d): integer multiples of the
base's scales, exactly the weights training evaluated. `export_gguf` with
these scales writes them as Q8_0 blocks unchanged, so llama.cpp runs the
trained model with no post-training quantization loss.
"""
import types
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

BLOCK = 32
QMAX = 127
SCALES = "qa_scales"
GRID_FILE = "quantization.json"


def q8_scales(weight: torch.Tensor) -> torch.Tensor:
    """The Q8_0 scales of a weight ([out, in] -> [out, in / 32]), float16
    values held in float32. On a weight already on the grid these are the
    grid's own scales."""
    rows, cols = weight.shape
    if cols % BLOCK:
        raise ValueError(f"Q8_0 needs inputs in blocks of {BLOCK}; this weight has {cols}")
    amax = weight.detach().float().abs().reshape(rows, cols // BLOCK, BLOCK).amax(dim=-1)
    return (amax / QMAX).to(torch.float16).to(torch.float32)


def quantize(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Integer levels q of `weight` on the grid `scales` (0 in a block whose scale is 0)."""
    rows, cols = weight.shape
    blocks = weight.float().reshape(rows, cols // BLOCK, BLOCK)
    d = scales[..., None]
    q = torch.where(d > 0, torch.round(blocks / torch.where(d > 0, d, torch.ones_like(d))), torch.zeros_like(blocks))
    return q.clamp_(-QMAX, QMAX).reshape(rows, cols)


def fake_quant(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """`weight` snapped to the grid, d·q, in its dtype."""
    rows, cols = weight.shape
    q = quantize(weight, scales).reshape(rows, cols // BLOCK, BLOCK)
    return (q * scales[..., None]).reshape(rows, cols).to(weight.dtype)


def snap(weight: torch.Tensor) -> torch.Tensor:
    """A weight put on its own Q8_0 grid (what `sparsify --quantize` writes)."""
    return fake_quant(weight, q8_scales(weight))


def _straight_through(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return weight + (fake_quant(weight, scales) - weight).detach()


def _qa_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
        return type(self).forward(self, x, *args, **kwargs)
    base = self.get_base_layer()
    weight = base.weight
    for name in self.active_adapters:
        if name in self.lora_A.keys():
            weight = weight + self._qa_update(name).to(weight.dtype)
    return F.linear(x, _straight_through(weight, getattr(self, SCALES)), base.bias)


def _qa_update(self: Any, adapter: str) -> torch.Tensor:
    """The masked (and rank-limited) LoRA update, before the grid."""
    from .elastic_lora import lora_delta

    delta = lora_delta(self, adapter)
    mask = getattr(self, "sparse_peft_mask", None)
    return delta * mask.to(delta.dtype) if mask is not None else delta


def _qa_delta(self: Any, adapter: str) -> torch.Tensor:
    """What a merge adds: fake_quant(W0 + update) - W0, so the merged weight
    is on the grid (the `merge` command snaps it once more against the
    rounding of that sum)."""
    weight = self.get_base_layer().weight
    merged = fake_quant(weight.float() + self._qa_update(adapter).float(), getattr(self, SCALES))
    return (merged - weight.float()).to(weight.dtype)


def apply_quantization_aware(model: Any) -> int:
    """Train and merge every adapted projection of `model` (a peft model on
    a Q8_0-grid base) through the base's grid. Idempotent.
    RETURNS (int): how many layers."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        if getattr(module, SCALES, None) is None:
            module.register_buffer(SCALES, q8_scales(module.get_base_layer().weight), persistent=False)
            module._qa_update = types.MethodType(_qa_update, module)
            module.get_delta_weight = types.MethodType(_qa_delta, module)
            module.forward = types.MethodType(_qa_forward, module)
        count += 1
    return count


def grid_scales(model: Any) -> Dict[str, torch.Tensor]:
    """The Q8_0 scales of every quantization-aware projection of a peft
    model, by the merged model's parameter name (for `export_gguf`), read
    before the merge."""
    out = {}
    for name, module in model.named_modules():
        scales = getattr(module, SCALES, None)
        if scales is not None:
            out[name.removeprefix("base_model.model.") + ".weight"] = scales.clone()
    return out


def base_on_grid(location: Optional[str]) -> bool:
    """Whether the base directory was written on the Q8_0 grid (`sparsify
    --quantize q8_0` leaves GRID_FILE beside the weights)."""
    return bool(location) and (Path(str(location)) / GRID_FILE).is_file()
