"""Pruning a base model for SQFT: Wanda (or magnitude), unstructured or n:m.

Wanda (Sun et al., 2023) scores each weight by its magnitude times the norm
of the input feature it multiplies, |W_ij| · ||X_j||, over calibration
tokens, and removes the lowest-scoring weights within each output row: a
small weight on a feature that is always large matters more than its size
says. Layers are pruned in order, each calibrated on the outputs of the
layers already pruned before it (as the paper's reference code does), so a
layer adapts to what the pruned layers below it actually produce.

The PyPI package named `wanda` is unrelated; this is our own code.
"""
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

logger = logging.getLogger("spacy_padellm")

PRUNED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METHODS = ("wanda", "magnitude")
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Pattern:
    """n:m semi-structured sparsity: n of every m consecutive inputs pruned."""

    n: int
    m: int

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        try:
            n, m = (int(x) for x in text.split(":"))
        except ValueError:
            raise ValueError(f"--pattern takes N:M (e.g. 2:4), got {text!r}") from None
        if not 0 < n < m:
            raise ValueError(f"--pattern N:M needs 0 < N < M, got {text!r}")
        return cls(n, m)


def linear_layers(model: Any) -> Dict[int, List[Tuple[str, torch.nn.Linear]]]:
    """The prunable projections of each decoder layer, by layer index."""
    layers: Dict[int, List[Tuple[str, torch.nn.Linear]]] = {}
    for name, module in model.named_modules():
        match = _LAYER.search(name + ".")
        if match and isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in PRUNED:
            layers.setdefault(int(match.group(1)), []).append((name, module))
    return dict(sorted(layers.items()))


def keep_mask(scores: torch.Tensor, sparsity: float, pattern: Optional[Pattern] = None) -> torch.Tensor:
    """True for the weights kept: in each output row, all but the lowest
    `sparsity` share of scores; or, with an n:m pattern, all but the n lowest
    of every m consecutive inputs (then `sparsity` is n/m)."""
    rows, cols = scores.shape
    if pattern is not None:
        if cols % pattern.m:
            raise ValueError(f"{cols} inputs are not a multiple of the pattern's {pattern.m}")
        groups = scores.reshape(rows, cols // pattern.m, pattern.m)
        low = groups.topk(pattern.n, dim=-1, largest=False).indices
        keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, low, False)
        return keep.reshape(rows, cols)
    k = int(cols * sparsity)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        keep.scatter_(1, scores.topk(k, dim=1, largest=False).indices, False)
    return keep


class _Stop(Exception):
    """Ends a calibration forward pass once the layer being pruned has run."""


def _input_norms(model: Any, modules: Sequence[Tuple[str, torch.nn.Linear]], batches: Sequence[torch.Tensor],
                 stop_after: Optional[torch.nn.Module]) -> Dict[str, torch.Tensor]:
    """||X_j||_2 of every input feature of `modules` over the calibration tokens."""
    sums = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in modules}
    handles = []
    for name, module in modules:
        def hook(_: Any, inputs: Tuple[torch.Tensor, ...], name: str = name) -> None:
            x = inputs[0].detach().to(torch.float64).reshape(-1, inputs[0].shape[-1])
            sums[name] += x.pow(2).sum(dim=0).cpu()
        handles.append(module.register_forward_pre_hook(hook))
    if stop_after is not None:
        handles.append(stop_after.register_forward_hook(lambda *_: (_ for _ in ()).throw(_Stop())))
    try:
        with torch.no_grad():
            for ids in batches:
                try:
                    model(input_ids=ids.to(model.device))
                except _Stop:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return {name: s.sqrt().to(torch.float32) for name, s in sums.items()}


def _decoder_layer(model: Any, index: int) -> Optional[torch.nn.Module]:
    for name, module in model.named_modules():
        if re.fullmatch(rf".*\.layers\.{index}", name):
            return module
    return None


def sparsify(
    model: Any,
    batches: Sequence[torch.Tensor],
    sparsity: float = 0.5,
    pattern: Optional[Pattern] = None,
    method: str = "wanda",
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Dict[str, float]:
    """Prune `model` (a Hugging Face causal LM) in place.

    batches: calibration token ids ([1, length] tensors), for Wanda.
    sparsity: 0 prunes nothing (a dense base, e.g. to be put on a grid by
        `sparsify --quantize`).
    RETURNS: the share of zeros of each pruned weight, by module name.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be at least 0 and below 1, got {sparsity!r}")
    prune = sparsity > 0 or pattern is not None
    if prune and method == "wanda" and not batches:
        raise ValueError("Wanda needs calibration texts (--calibration).")
    layers = linear_layers(model)
    if not layers:
        raise ValueError("No decoder-layer projections (q_proj ... down_proj) to prune in this model.")
    model.eval()
    report = {}
    for done, (index, modules) in enumerate(layers.items(), 1):
        wanda = prune and method == "wanda"
        norms = _input_norms(model, modules, batches, _decoder_layer(model, index)) if wanda else {}
        with torch.no_grad():
            for name, module in modules:
                weight = module.weight
                if prune:
                    scores = weight.detach().abs().float()
                    if wanda:
                        scores = scores * norms[name].to(scores.device)[None, :]
                    weight.masked_fill_(~keep_mask(scores, sparsity, pattern), 0.0)
                report[name] = float((weight == 0).float().mean())
        progress(done, len(layers))
    return report
