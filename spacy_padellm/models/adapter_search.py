"""Choosing a sub-adapter of an elastic super-adapter, and slicing it out.

The search starts from the median configuration (every group at the middle
rank) and hill-climbs: a move changes one group's rank by one step of the
choices. It evaluates each configuration once, within a budget of
evaluations, and returns the best configuration it has seen at any point
(SQFT's notebook keeps the last turn's best, which can be worse).

The chosen sub-adapter is written as a plain peft LoRA: each module's A cut
to its first r rows and B to its first r columns, with `rank_pattern` for
the ranks and `alpha_pattern` keeping the super-adapter's scaling
(alpha_r / r = alpha / r_max), so it computes exactly what the super-adapter
did at those ranks.
"""
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

Ranks = Dict[str, int]


@dataclass
class Trial:
    ranks: Ranks
    score: float
    parameters: int


@dataclass
class SearchResult:
    best: Trial
    trials: List[Trial] = field(default_factory=list)


def neighbours(ranks: Ranks, choices: Sequence[int]) -> List[Ranks]:
    """Every configuration one group's rank one step away (choices sorted)."""
    order = sorted(choices)
    out = []
    for group in sorted(ranks):
        i = order.index(ranks[group])
        for j in (i - 1, i + 1):
            if 0 <= j < len(order):
                out.append({**ranks, group: order[j]})
    return out


def hill_climb(
    evaluate: Callable[[Ranks], float],
    start: Ranks,
    choices: Sequence[int],
    budget: int,
    parameters: Callable[[Ranks], int] = lambda ranks: 0,
    seed: int = 0,
    progress: Callable[[Trial, Trial, int], None] = lambda trial, best, used: None,
) -> SearchResult:
    """Evaluate `start`, then move to the best neighbour of the current
    configuration until no neighbour improves on it or the budget (number of
    evaluations) is spent. RETURNS the global best and every trial."""
    if budget < 1:
        raise ValueError(f"--budget must be at least 1, got {budget}")
    rng = random.Random(seed)
    seen: Dict[Tuple[Tuple[str, int], ...], Trial] = {}

    def trial(ranks: Ranks) -> Trial:
        key = tuple(sorted(ranks.items()))
        if key not in seen:
            seen[key] = Trial(dict(ranks), float(evaluate(ranks)), parameters(ranks))
            result.trials.append(seen[key])
            if result.best is None or seen[key].score > result.best.score:
                result.best = seen[key]
            progress(seen[key], result.best, len(result.trials))
        return seen[key]

    result = SearchResult(best=None)  # type: ignore[arg-type]
    current = trial(start)
    while len(result.trials) < budget:
        options = [n for n in neighbours(current.ranks, choices) if tuple(sorted(n.items())) not in seen]
        if not options:
            break
        rng.shuffle(options)
        turn_best: Optional[Trial] = None
        for ranks in options:
            if len(result.trials) >= budget:
                break
            tried = trial(ranks)
            if turn_best is None or tried.score > turn_best.score:
                turn_best = tried
        if turn_best is None:
            break
        current = turn_best  # move on even when it is worse: the global best is kept apart
    return result


def slice_adapter(adapter_dir: Path, ranks_by_module: Dict[str, int], out: Path) -> Path:
    """Write the sub-adapter of the peft adapter in `adapter_dir` with the
    rank of each module (peft module names, without the `base_model.model.`
    prefix) to `out`, in peft's format."""
    from safetensors.torch import load_file, save_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf8"))
    r_max, alpha = int(config["r"]), float(config["lora_alpha"])
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    sliced: Dict[str, Any] = {}
    for name, tensor in tensors.items():
        module = name.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        rank = ranks_by_module.get(module, r_max)
        if ".lora_A." in name:
            sliced[name] = tensor[:rank].contiguous()
        elif ".lora_B." in name:
            sliced[name] = tensor[:, :rank].contiguous()
        else:
            sliced[name] = tensor
    config["rank_pattern"] = {m: r for m, r in ranks_by_module.items() if r != r_max}
    config["alpha_pattern"] = {m: alpha * r / r_max for m, r in ranks_by_module.items() if r != r_max}
    out.mkdir(parents=True, exist_ok=True)
    save_file(sliced, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf8")
    return out
