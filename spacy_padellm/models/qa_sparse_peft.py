"""QA-SparsePEFT (SQFT): training through the base's quantizer, so that the
merged model lands on the base's quantization grid.

Two grids of GGUF, both on blocks of 32 consecutive inputs of a row with
one float16 scale d per block and weights d·q for integer q:

- Q8_0: q in [-127, 127], d = max|w| / 127;
- Q4_0 (4 bits): q in [-8, 7], d = w* / -8, where w* is the block's weight
  of largest magnitude, sign included (so d may be negative).

Those are the peak's scales (ggml's reference quantizer). `sparsify
--quantize` writes by default `fitted_scales`, the smaller scale of least
squared error that clips the peak onto the same end level.

Both hold an exact zero (q = 0), so a pruned weight stays pruned. GGUF
Q4_1, the shipped file's format, stores weights as d·q + m with an offset m
per block: zero is on its grid only by accident, so the sparse 4-bit path
uses Q4_0, llama.cpp's own symmetric 4-bit type.

A base on a grid (`sparsify --quantize q8_0|q4_0`) keeps its scales in its
weights: the weight of largest magnitude of a block is 127·|d| (Q8_0) or
-8·d (Q4_0) exactly, so d is read back from the weights and never stored.
An adapted projection then computes

    W = fake_quant(W0 + (B·A·scaling) ⊙ M, d)

with the straight-through estimator (the rounding's gradient taken as 1),
and the merge writes fake_quant(W0 + ΔW ⊙ M, d): integer multiples of the
base's scales, exactly the weights training evaluated. `export_gguf` with
these scales writes them as Q8_0 or Q4_0 blocks unchanged, so llama.cpp
runs the trained model with no post-training quantization loss.
"""
import json
import types
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

BLOCK = 32
QMAX = 127
LEVELS = {"q8_0": (-127, 127), "q4_0": (-8, 7)}  # integer q of each grid
SCALES = "qa_scales"
FIT_STEPS = 16  # candidate scales per block for `fitted_scales`
FIT_FLOOR = 0.6  # the smallest candidate, as a share of the peak's scale
KIND = "qa_grid"
GRID_FILE = "quantization.json"


def _check_kind(kind: str) -> None:
    if kind not in LEVELS:
        raise ValueError(f"Unknown quantization grid {kind!r}; choose one of {', '.join(LEVELS)}")


def block_scales(weight: torch.Tensor, kind: str = "q8_0") -> torch.Tensor:
    """The scales of a weight on grid `kind` ([out, in] -> [out, in / 32]),
    float16 values held in float32, as GGUF's quantizer computes them. On a
    weight already on the grid these are the grid's own scales."""
    _check_kind(kind)
    rows, cols = weight.shape
    if cols % BLOCK:
        raise ValueError(f"{kind.upper()} needs inputs in blocks of {BLOCK}; this weight has {cols}")
    blocks = weight.detach().float().reshape(rows, cols // BLOCK, BLOCK)
    if kind == "q8_0":
        scales = blocks.abs().amax(dim=-1) / QMAX
    else:
        peak = blocks.gather(-1, blocks.abs().argmax(dim=-1, keepdim=True))[..., 0]
        scales = peak / -8.0
    return scales.to(torch.float16).to(torch.float32)


def quantize(weight: torch.Tensor, scales: torch.Tensor, kind: str = "q8_0") -> torch.Tensor:
    """Integer levels q of `weight` on the grid `scales` (0 in a block whose scale is 0)."""
    low, high = LEVELS[kind]
    rows, cols = weight.shape
    blocks = weight.float().reshape(rows, cols // BLOCK, BLOCK)
    d = scales[..., None]
    live = d != 0
    q = torch.where(live, torch.round(blocks / torch.where(live, d, torch.ones_like(d))), torch.zeros_like(blocks))
    return q.clamp_(low, high).reshape(rows, cols)


def fake_quant(weight: torch.Tensor, scales: torch.Tensor, kind: str = "q8_0") -> torch.Tensor:
    """`weight` snapped to the grid, d·q, in its dtype."""
    rows, cols = weight.shape
    q = quantize(weight, scales, kind).reshape(rows, cols // BLOCK, BLOCK)
    return (q * scales[..., None]).reshape(rows, cols).to(weight.dtype)


def fitted_scales(weight: torch.Tensor, kind: str = "q8_0", steps: int = FIT_STEPS) -> torch.Tensor:
    """Per block, the scale of least squared rounding error among `steps`
    candidates from the peak's scale (`block_scales`) down to FIT_FLOOR of
    it. On 4 bits the peak's scale spends the range on one outlier and rounds
    many small weights to 0; a smaller scale clips the peak instead. Every
    candidate still puts the peak on the grid's end level (127 or -8 after
    clipping), so `block_scales` reads the fitted scale back from the
    snapped weights, as for the peak's own."""
    rows, cols = weight.shape
    weight = weight.detach().float()
    peak = block_scales(weight, kind)

    def error(scales: torch.Tensor) -> torch.Tensor:
        return ((fake_quant(weight, scales, kind) - weight) ** 2).reshape(rows, cols // BLOCK, BLOCK).sum(dim=-1)

    best, best_error = peak, error(peak)
    for ratio in torch.linspace(1.0, FIT_FLOOR, steps)[1:].tolist():
        scales = (peak * ratio).to(torch.float16).to(torch.float32)
        candidate = error(scales)
        better = candidate < best_error
        best, best_error = torch.where(better, scales, best), torch.where(better, candidate, best_error)
    return best


def snap(weight: torch.Tensor, kind: str = "q8_0", fitted: bool = False) -> torch.Tensor:
    """A weight put on its own grid (what `sparsify --quantize` writes), its
    scales the peak's or, with `fitted`, those of least error."""
    scales = fitted_scales(weight, kind) if fitted else block_scales(weight, kind)
    return fake_quant(weight, scales, kind)


def _straight_through(weight: torch.Tensor, scales: torch.Tensor, kind: str) -> torch.Tensor:
    return weight + (fake_quant(weight, scales, kind) - weight).detach()


def _qa_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
        return type(self).forward(self, x, *args, **kwargs)
    base = self.get_base_layer()
    weight = base.weight
    for name in self.active_adapters:
        if name in self.lora_A.keys():
            weight = weight + self._qa_update(name).to(weight.dtype)
    return F.linear(x, _straight_through(weight, getattr(self, SCALES), getattr(self, KIND)), base.bias)


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
    merged = fake_quant(weight.float() + self._qa_update(adapter).float(), getattr(self, SCALES), getattr(self, KIND))
    return (merged - weight.float()).to(weight.dtype)


def apply_quantization_aware(model: Any, kind: str = "q8_0") -> int:
    """Train and merge every adapted projection of `model` (a peft model on
    a base on grid `kind`) through the base's grid. Idempotent.
    RETURNS (int): how many layers."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    _check_kind(kind)
    count = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        if getattr(module, SCALES, None) is None:
            module.register_buffer(SCALES, block_scales(module.get_base_layer().weight, kind), persistent=False)
            setattr(module, KIND, kind)
            module._qa_update = types.MethodType(_qa_update, module)
            module.get_delta_weight = types.MethodType(_qa_delta, module)
            module.forward = types.MethodType(_qa_forward, module)
        count += 1
    return count


def grid_kind(model: Any) -> Optional[str]:
    """The grid of a quantization-aware peft model ("q8_0", "q4_0"), or None."""
    return next((getattr(m, KIND) for m in model.modules() if getattr(m, KIND, None)), None)


def grid_scales(model: Any) -> Dict[str, torch.Tensor]:
    """The grid scales of every quantization-aware projection of a peft
    model, by the merged model's parameter name (for `export_gguf`), read
    before the merge."""
    out = {}
    for name, module in model.named_modules():
        scales = getattr(module, SCALES, None)
        if scales is not None:
            out[name.removeprefix("base_model.model.") + ".weight"] = scales.clone()
    return out


def merge_onto_grid(model: Any) -> Tuple[Any, Dict[str, torch.Tensor], str]:
    """Merge a peft model's adapter; on a quantization-aware model, snap the
    merged projections once more onto the base's grid (against the rounding
    of the sum). RETURNS (merged model, the grid's scales by parameter name
    (empty for a plain adapter), the grid's kind), for `export_gguf`."""
    grid = grid_scales(model)  # read before the merge removes the adapter layers
    kind = grid_kind(model) or "q8_0"
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    params = dict(merged.named_parameters())
    with torch.no_grad():
        for param, scales in grid.items():
            params[param].copy_(fake_quant(params[param], scales, kind))
    return merged, grid, kind


def base_grid(location: Optional[str]) -> Optional[str]:
    """The grid a base directory was written on (`sparsify --quantize`
    leaves GRID_FILE beside the weights), or None."""
    path = Path(str(location)) / GRID_FILE if location else None
    if path is None or not path.is_file():
        return None
    kind = json.loads(path.read_text(encoding="utf8")).get("grid", "q8_0")
    _check_kind(kind)
    return kind
