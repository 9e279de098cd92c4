"""What one doc's memory holds, per attention layer.

Keys are stored as the layer computed them before any rotary position
embedding: the attention rotates them at read time, at window-relative
positions for the window and at one fixed distance for everything older,
as InfLLM does, so a 128k-token doc never puts a key at a distance the
model was not trained on.

Per layer, in stream order:

    [init: first n_init tokens][blocks ...][buffer: remainder + window]

The buffer's last `n_local` tokens are the window; older buffer tokens
(fewer than a block) wait to form the next block. Each token in the buffer
accumulates, per query head, the attention it receives while in the window;
when a block forms, the `repr_topk` tokens with the most attention are its
representative keys (their mean, per head), which retrieval scores.
"""
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

import torch

from .settings import InfLLMSettings

KV = Tuple[torch.Tensor, torch.Tensor]


def _empty(like: torch.Tensor, length_dim_size: int = 0) -> torch.Tensor:
    shape = list(like.shape)
    shape[-2] = length_dim_size
    return like.new_zeros(shape)


@dataclass
class LayerStore:
    """One layer's memory of one doc. Tensors are [kv_heads, tokens, head_dim]
    (scores [heads, tokens]); blocks live on `store_device` (CPU RAM when
    the model is on a GPU) and the most recently used are cached on the
    model's device."""

    settings: InfLLMSettings
    init_k: Optional[torch.Tensor] = None
    init_v: Optional[torch.Tensor] = None
    buf_k: Optional[torch.Tensor] = None
    buf_v: Optional[torch.Tensor] = None
    buf_score: Optional[torch.Tensor] = None
    blocks: List[KV] = field(default_factory=list)
    reprs: List[torch.Tensor] = field(default_factory=list)  # one [heads, head_dim] per block
    store_device: Optional[torch.device] = None
    _cached: "OrderedDict[int, KV]" = field(default_factory=OrderedDict)
    _repr_matrix: Optional[torch.Tensor] = None

    @property
    def buffered(self) -> int:
        return 0 if self.buf_k is None else int(self.buf_k.shape[-2])

    @property
    def stored(self) -> int:
        """Tokens this layer remembers."""
        init = 0 if self.init_k is None else int(self.init_k.shape[-2])
        return init + self.buffered + len(self.blocks) * self.settings.block_size

    def buffer(self, like: torch.Tensor) -> KV:
        """Keys and values of the buffer (empty ones shaped like `like`, a
        [kv_heads, n, head_dim] tensor, before the first append)."""
        if self.buf_k is None:
            return _empty(like), _empty(like)
        return self.buf_k, self.buf_v

    def window(self, like: torch.Tensor) -> Tuple[KV, KV]:
        """The buffer split into (remainder, window): the window is its last
        `n_local` tokens; the remainder is older and not yet a block."""
        k, v = self.buffer(like)
        cut = max(0, int(k.shape[-2]) - self.settings.n_local)
        return (k[:, :cut], v[:, :cut]), (k[:, cut:], v[:, cut:])

    def append(self, k: torch.Tensor, v: torch.Tensor, scores: torch.Tensor) -> None:
        """Add new tokens behind the buffer. `scores` ([heads, buffered + new])
        is the window attention the buffer and the new tokens just received."""
        if self.buf_k is None:
            self.buf_k, self.buf_v = k, v
            self.buf_score = scores.float()
        else:
            self.buf_k = torch.cat([self.buf_k, k], dim=-2)
            self.buf_v = torch.cat([self.buf_v, v], dim=-2)
            self.buf_score = torch.cat([self.buf_score, scores.new_zeros((scores.shape[0], k.shape[-2]))], dim=-1)
            self.buf_score = self.buf_score + scores.float()
        self._evict()

    def _evict(self) -> None:
        """Tokens that left the window: the first ones become the initial
        tokens, then whole blocks form from the oldest."""
        s = self.settings
        have = 0 if self.init_k is None else int(self.init_k.shape[-2])
        over = self.buffered - s.n_local
        if have < s.n_init and over > 0:
            take = min(s.n_init - have, over)
            k, v = self.buf_k[:, :take], self.buf_v[:, :take]
            self.init_k = k if self.init_k is None else torch.cat([self.init_k, k], dim=-2)
            self.init_v = v if self.init_v is None else torch.cat([self.init_v, v], dim=-2)
            self._drop(take)
        while self.buffered - s.block_size >= s.n_local:
            k, v = self.buf_k[:, : s.block_size], self.buf_v[:, : s.block_size]
            target = self.store_device or k.device
            # The list of representative keys stays with the blocks (CPU RAM
            # beside a GPU); only the matrix that retrieval scores against is
            # on the model's device, grown by the new rows (`retrieve`).
            self.reprs.append(self._representative(k, self.buf_score[:, : s.block_size]).to(target))
            self.blocks.append((k.to(target).clone(), v.to(target).clone()))
            self._drop(s.block_size)

    def _drop(self, n: int) -> None:
        self.buf_k, self.buf_v = self.buf_k[:, n:].clone(), self.buf_v[:, n:].clone()
        self.buf_score = self.buf_score[:, n:].clone()

    def _representative(self, k: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """[heads, head_dim]: per query head, the mean key of the block's
        `repr_topk` tokens with the most window attention."""
        heads, kv_heads = score.shape[0], k.shape[0]
        per_head = k.repeat_interleave(heads // kv_heads, dim=0)  # [heads, block, dim]
        top = score.topk(self.settings.repr_topk, dim=-1).indices  # [heads, repr_topk]
        chosen = per_head.gather(1, top[:, :, None].expand(-1, -1, k.shape[-1]))
        return chosen.float().mean(dim=1)

    def retrieve(self, query: torch.Tensor) -> List[int]:
        """The `topk` blocks whose representative keys score highest against
        `query` ([heads, head_dim], a chunk's mean query at the global
        distance), in stream order; every block while there are no more."""
        n = len(self.blocks)
        if n <= self.settings.topk:
            return list(range(n))
        scores = (self._repr_rows(query.device) * query.float()[None]).sum(dim=(1, 2))
        return sorted(scores.topk(self.settings.topk).indices.tolist())

    def _repr_rows(self, device: torch.device) -> torch.Tensor:
        """[blocks, heads, dim]: every block's representative keys on
        `device`. Blocks formed since the last call are added as new rows,
        so a long doc moves each key to the device once, not at every new
        block."""
        matrix = self._repr_matrix
        have = 0 if matrix is None or matrix.device != device else int(matrix.shape[0])
        if have < len(self.reprs):
            new = torch.stack(self.reprs[have:]).to(device)
            self._repr_matrix = new if have == 0 else torch.cat([matrix, new])
        return self._repr_matrix

    def far_kv(self, block_ids: List[int], like: torch.Tensor) -> KV:
        """Keys and values attended at the fixed distance: the initial tokens
        and the retrieved blocks, in stream order, on `like`'s device."""
        keys, values = [], []
        if self.init_k is not None:
            keys.append(self.init_k)
            values.append(self.init_v)
        for i in block_ids:
            k, v = self._on_device(i, like.device)
            keys.append(k)
            values.append(v)
        if not keys:
            return _empty(like), _empty(like)
        return torch.cat(keys, dim=-2), torch.cat(values, dim=-2)

    def _on_device(self, i: int, device: torch.device) -> KV:
        k, v = self.blocks[i]
        if k.device == device:
            return k, v
        hit = self._cached.get(i)
        if hit is None:
            hit = (k.to(device, non_blocking=True), v.to(device, non_blocking=True))
            self._cached[i] = hit
            while len(self._cached) > self.settings.max_cached_blocks:
                self._cached.popitem(last=False)  # least recently used
        self._cached.move_to_end(i)
        return hit

    def snapshot(self) -> "LayerStore":
        """This layer as it is now, unchanged by later appends: every tensor
        here is replaced, never written in place, and blocks are only
        appended, so the snapshot shares all of them (and the device
        cache, keyed by block index) and copies only the lists."""
        return replace(self, blocks=list(self.blocks), reprs=list(self.reprs))

    def nbytes(self) -> Dict[str, int]:
        """Bytes held: the blocks (CPU RAM when the model is on a GPU), and the
        initial tokens, buffer and representative keys."""
        def size(*ts: Optional[torch.Tensor]) -> int:
            return sum(t.numel() * t.element_size() for t in ts if t is not None)

        blocks = sum(size(k, v) for k, v in self.blocks)
        rest = size(self.init_k, self.init_v, self.buf_k, self.buf_v, self.buf_score) + sum(size(r) for r in self.reprs)
        return {"blocks": blocks, "other": rest}


class DocMemory:
    """Everything one doc has streamed in so far, per layer."""

    def __init__(
        self, settings: InfLLMSettings, n_layers: int, rotary: Any, store_device: Optional[torch.device] = None
    ) -> None:
        self.settings = settings
        self.rotary = rotary  # the model's rotary embedding, which the attention rotates keys with
        self.layers = [LayerStore(settings, store_device=store_device) for _ in range(n_layers)]
        self.tokens = 0  # streamed so far

    @property
    def empty(self) -> bool:
        return self.tokens == 0

    def snapshot(self) -> "DocMemory":
        """The memory as it is now, for a segment decoded later while this
        one streams on. It shares the blocks; what it holds alone is the
        buffer (the window and the remainder) once the live memory has
        moved past it."""
        copy = DocMemory.__new__(DocMemory)
        copy.settings, copy.rotary, copy.tokens = self.settings, self.rotary, self.tokens
        copy.layers = [layer.snapshot() for layer in self.layers]
        return copy

    def nbytes(self) -> Dict[str, int]:
        total = {"blocks": 0, "other": 0}
        for layer in self.layers:
            for key, value in layer.nbytes().items():
                total[key] += value
        return total

    def block_tokens(self) -> int:
        """Tokens held in blocks (per layer; every layer holds the same)."""
        return len(self.layers[0].blocks) * self.settings.block_size if self.layers else 0
