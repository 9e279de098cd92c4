"""Elastic LoRA (SQFT's NLS): one super-adapter trained over several ranks.

The adapter is a LoRA of the largest rank r_max; rank r uses the first r
rows of A and the first r columns of B, and the scaling stays
alpha / r_max. Each decoder layer has two groups, its attention
projections and its MLP projections; before every optimizer step each group
draws one rank uniformly from the choices, and keeps it through the step's
forward, recompute and backward passes (the rank is state on the modules,
not drawn inside the forward). A search then picks one rank per group.

The rank is applied by a mask on A's output (`x -> A x ⊙ m`, m = 1 on the
first r entries): the rows and columns above r get no gradient and add
nothing, which is exactly the sliced adapter; `lora_delta` gives the merged
update B·diag(m)·A, which merges and SparsePEFT use.
"""
import random
import re
from typing import Any, Dict, List, Optional, Sequence

import torch

RANK_MASK = "elastic_rank_mask"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def group_of(name: str) -> Optional[str]:
    """"3.attention" or "3.mlp" for a projection of decoder layer 3."""
    match = _LAYER.search(name + ".")
    if match is None:
        return None
    leaf = name.rsplit(".", 1)[-1]
    kind = "attention" if leaf in ATTENTION else "mlp" if leaf in MLP else None
    return f"{match.group(1)}.{kind}" if kind else None


def lora_delta(module: Any, adapter: str) -> torch.Tensor:
    """B·A·scaling of a peft LoRA layer, within its elastic rank if it has one."""
    mask = getattr(module, RANK_MASK, None)
    if mask is None:
        return type(module).get_delta_weight(module, adapter)
    weight_a = module.lora_A[adapter].weight
    weight_b = module.lora_B[adapter].weight
    delta = (weight_b * mask.to(weight_b.dtype)[None, :]) @ weight_a
    if module.fan_in_fan_out:
        delta = delta.T
    return delta * module.scaling[adapter]


def _rank_hook(layer: Any) -> Any:
    """A forward hook for `layer.lora_A[...]` that masks A's output by the
    layer's rank mask (read at call time: `use` changes it in place)."""

    def hook(_: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return output * getattr(layer, RANK_MASK).to(output.dtype)

    return hook


class ElasticAdapter:
    """The rank space of a super-adapter and the ranks now in use."""

    def __init__(self, model: Any, choices: Sequence[int], adapter: str = "default") -> None:
        from peft.tuners.lora.layer import Linear as LoraLinear

        self.choices = sorted({int(c) for c in choices}, reverse=True)
        if not self.choices or min(self.choices) < 1:
            raise ValueError(f"rank_choices must be positive ranks, got {list(choices)!r}")
        self.r_max = self.choices[0]
        self.groups: Dict[str, List[Any]] = {}
        self.names: Dict[str, List[str]] = {}  # peft module names of each group
        for name, module in model.named_modules():
            group = group_of(name)
            if group is None or not isinstance(module, LoraLinear) or adapter not in module.lora_A:
                continue
            rank = module.lora_A[adapter].weight.shape[0]
            if rank != self.r_max:
                raise ValueError(
                    f"The adapter's rank is {rank} but the largest of rank_choices is {self.r_max}: "
                    "an elastic adapter is trained at its largest rank (set lora_r to it, or train a new adapter)."
                )
            if getattr(module, RANK_MASK, None) is None:
                module.register_buffer(RANK_MASK, torch.ones(self.r_max), persistent=False)
                module.lora_A[adapter].register_forward_hook(_rank_hook(module))
                if "get_delta_weight" not in vars(module):  # SparsePEFT's and QA's own deltas call lora_delta
                    module.get_delta_weight = lora_delta.__get__(module)
            self.groups.setdefault(group, []).append(module)
            self.names.setdefault(group, []).append(name)
        if not self.groups:
            raise ValueError("No LoRA projections (q_proj ... down_proj) to make elastic in this model.")
        self.ranks: Dict[str, int] = {}
        self.use(self.maximal())

    def maximal(self) -> Dict[str, int]:
        return {group: self.r_max for group in self.groups}

    def median(self) -> Dict[str, int]:
        middle = self.choices[len(self.choices) // 2]
        return {group: middle for group in self.groups}

    def use(self, ranks: Dict[str, int]) -> None:
        """Set each group's rank (every group must be given; ranks from the choices)."""
        if set(ranks) != set(self.groups) or any(r not in self.choices for r in ranks.values()):
            raise ValueError(f"ranks must give each of {len(self.groups)} groups one of {self.choices}")
        for group, rank in ranks.items():
            for module in self.groups[group]:
                mask = getattr(module, RANK_MASK)
                mask.zero_()
                mask[:rank] = 1.0
        self.ranks = dict(ranks)

    def draw(self, rng: random.Random) -> Dict[str, int]:
        """A uniform rank for every group (once per optimizer step)."""
        ranks = {group: rng.choice(self.choices) for group in sorted(self.groups)}
        self.use(ranks)
        return ranks

    def ranks_by_module(self, ranks: Dict[str, int]) -> Dict[str, int]:
        """Each module's rank (module names as peft's saved adapters have
        them, without `base_model.model.`)."""
        return {name.removeprefix("base_model.model."): ranks[group] for group, names in self.names.items() for name in names}

    def parameters(self, ranks: Optional[Dict[str, int]] = None) -> int:
        """LoRA parameters of the sub-adapter `ranks` (default: the ranks in use)."""
        ranks = ranks or self.ranks
        total = 0
        for group, modules in self.groups.items():
            for module in modules:
                in_features = module.get_base_layer().in_features
                out_features = module.get_base_layer().out_features
                total += ranks[group] * (in_features + out_features)
        return total
