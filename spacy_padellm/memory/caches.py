"""How the memory attention finds the memory inside a transformers forward call.

transformers' attention modules pass their key/value cache to `cache.update`
together with the keyword arguments they then hand to the attention
function (the same dict). The two caches here put the memory of the layer
being run into that dict, so `attention.memory_attention` receives it and
the model's code is not touched:

- `StreamCache` writes: the text streamed into a doc's memory is appended to
  its `LayerStore`s; the cache itself keeps nothing.
- `ContextCache` reads: it is the key/value cache of a batch of prefixes and
  branches behind memories (the "tail"). Each row points at one
  `SegmentContext`, the memory of the text before that row's segment, which
  the rows of a segment share and never write: the window and the retrieved
  blocks are not copied per branch. Selecting rows (the engine drops
  finished branches and forks kept ones) selects their context pointers too.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .store import DocMemory, LayerStore

MEMORY_KWARG = "padellm_memory"


def _hand_over(kwargs: Dict[str, Any], layer: Any) -> None:
    """Put `layer` in the keyword arguments the attention function gets."""
    forwarded = kwargs.get("kwargs")
    if not isinstance(forwarded, dict):
        raise RuntimeError(
            "This transformers version does not pass the attention keyword arguments "
            "to cache.update; the long-document memory is tested with transformers 5.24."
        )
    forwarded[MEMORY_KWARG] = layer


@dataclass
class StreamLayer:
    """What the attention of layer `index` writes the streamed tokens into."""

    store: LayerStore
    index: int
    rotary: Any  # the model's rotary embedding


class _NoLayer(DynamicLayer):
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        return key_states, value_states


class StreamCache(DynamicCache):
    """The cache of a forward call that streams a chunk of text into `memory`."""

    def __init__(self, memory: DocMemory) -> None:
        super().__init__()
        self.memory = memory
        self.layers = [_NoLayer() for _ in memory.layers]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        _hand_over(kwargs, StreamLayer(self.memory.layers[layer_idx], layer_idx, self.memory.rotary))
        return key_states, value_states


@dataclass
class SegmentContext:
    """The memory of the text before one segment, as that segment's prefix and
    branches read it. The blocks are retrieved once per layer, by the
    prefix's queries (the segment is one execution chunk), and kept for its
    branches; `layers[i]` is None until then."""

    memory: DocMemory
    layers: List[Optional[Dict[str, torch.Tensor]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.layers = [None] * len(self.memory.layers)


class ContextLayer(DynamicLayer):
    """A tail layer whose rows each read one of `contexts`."""

    def __init__(self, index: int, contexts: List[SegmentContext], rows: torch.Tensor) -> None:
        super().__init__()
        self.index = index
        self.contexts = contexts
        self.rows = rows  # [batch]: the context of each row

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self.rows = self.rows[indices.to(self.rows.device)]

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.rows = self.rows.repeat_interleave(repeats)


class ContextCache(DynamicCache):
    """The tail cache of prefixes behind memories: row i reads `contexts[rows[i]]`."""

    def __init__(self, contexts: Sequence[SegmentContext], rows: Sequence[int], n_layers: int) -> None:
        super().__init__()
        shared = list(contexts)
        index = torch.tensor(list(rows), dtype=torch.long)
        self.layers = [ContextLayer(i, shared, index) for i in range(n_layers)]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        layer = self.layers[layer_idx]
        keys, values = layer.update(key_states, value_states)
        _hand_over(kwargs, layer)
        return keys, values
