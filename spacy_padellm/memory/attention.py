"""The attention that reads a doc's memory (and writes it, when streaming).

Registered with transformers as the attention implementation
"padellm_memory". A forward call without a memory cache (training, decoding
without memory) goes to transformers' own SDPA attention unchanged.

Positions follow InfLLM: queries and window keys are rotated at
window-relative positions, so their distances are the true ones; every key
older than the window (the initial tokens, the retrieved blocks and the
remainder not yet in a block) is read at one fixed distance, `n_local`
(queries rotated at `n_local`, those keys at 0). Both parts share one
softmax, so the result is the attention over their union.

Grouped-query heads are handled by viewing the queries of a key/value head's
group as one longer query matrix, so keys are never repeated per head.
"""
import math
from typing import Any, Optional, Tuple

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.models.llama.modeling_llama import rotate_half

from .caches import MEMORY_KWARG, ContextLayer, SegmentContext, StreamLayer
from .store import LayerStore

IMPLEMENTATION = "padellm_memory"
NEG_INF = float("-inf")
# Streamed queries per score matrix: 128 queries of SmolLM2's 9 heads
# against a chunk's 3,712 keys take 17 MB in float32, under glibc's 32 MB
# mmap ceiling (see `stream_attention`).
QUERY_PIECE = 128


def register() -> None:
    """Make "padellm_memory" a transformers attention implementation (masks
    as for SDPA)."""
    AttentionInterface.register(IMPLEMENTATION, memory_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


def rope(x: torch.Tensor, positions: torch.Tensor, rotary: Any) -> torch.Tensor:
    """`x` ([..., tokens, head_dim]) rotated at `positions` ([tokens], or
    [batch, tokens] for a [batch, heads, tokens, head_dim] `x`) by the
    model's rotary embedding."""
    batched = positions.dim() == 2
    pos = positions if batched else positions[None]
    cos, sin = rotary(x, pos.to(x.device))
    cos, sin = (cos[:, None], sin[:, None]) if batched else (cos[0], sin[0])
    return x * cos + rotate_half(x) * sin


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """q [..., heads, n, d] against k [..., kv_heads, m, d]: [..., heads, n, m].
    A k without q's leading dims (a context shared by rows) is not expanded
    per row: the rows' queries are stacked into one matrix per key head."""
    *lead, heads, n, d = q.shape
    kv_heads, m = k.shape[-3], k.shape[-2]
    group = (heads // kv_heads) * n
    if lead and k.dim() == 3:
        r = math.prod(lead)
        rows = q.reshape(r, kv_heads, group, d).transpose(0, 1).reshape(kv_heads, r * group, d)
        out = (rows @ k.transpose(-1, -2)).reshape(kv_heads, r, group, m).transpose(0, 1)
        return out.reshape(*lead, heads, n, m) * scale
    grouped = q.reshape(*lead, kv_heads, group, d)
    return (grouped @ k.transpose(-1, -2)).reshape(*lead, heads, n, m) * scale


def _weighted(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """p [..., heads, n, m] times v [..., kv_heads, m, d]: [..., heads, n, d]
    (a shared v, without p's leading dims, is not expanded per row)."""
    *lead, heads, n, m = p.shape
    kv_heads, d = v.shape[-3], v.shape[-1]
    group = (heads // kv_heads) * n
    if lead and v.dim() == 3:
        r = math.prod(lead)
        rows = p.reshape(r, kv_heads, group, m).transpose(0, 1).reshape(kv_heads, r * group, m)
        out = (rows @ v).reshape(kv_heads, r, group, d).transpose(0, 1)
        return out.reshape(*lead, heads, n, d)
    grouped = p.reshape(*lead, kv_heads, group, m)
    return (grouped @ v).reshape(*lead, heads, n, d)


def _softmax(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1).nan_to_num(0.0).to(dtype)


def memory_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> Tuple[torch.Tensor, None]:
    layer = kwargs.pop(MEMORY_KWARG, None)
    if layer is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if isinstance(layer, StreamLayer):
        out = stream_attention(query, key, value, layer.store, scale, layer.rotary)
    else:
        out = context_attention(query, key, value, attention_mask, kwargs.get("position_ids"), layer, scale)
    return out.transpose(1, 2).contiguous(), None


def stream_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, store: LayerStore, scale: float, rotary: Any
) -> torch.Tensor:
    """One execution chunk of a streamed text (batch 1; `q` and `k` not
    rotated yet): its attention over the sinks, the blocks its mean query
    retrieves, the remainder and the window, and then its tokens join the
    memory with the window attention each buffered token received.

    The chunk's queries are taken `QUERY_PIECE` at a time: one chunk's
    score matrices, all at once, are tens of MB per layer, which glibc
    serves by mmap and returns at every free, so nearly half of the time
    went to page faults; pieces stay below its mmap ceiling and reuse the
    heap. Every query still sees the same keys: the blocks are retrieved
    once, by the whole chunk's mean query."""
    n_local = store.settings.n_local
    q0, k0, v0 = q[0], k[0], v[0]  # [heads, L, d], [kv_heads, L, d]
    buf_k, buf_v = store.buffer(k0)
    keys, values = torch.cat([buf_k, k0], dim=-2), torch.cat([buf_v, v0], dim=-2)
    total, length = keys.shape[-2], q0.shape[-2]
    device = q0.device
    pos_k = torch.arange(total, device=device)
    q_far = rope(q0, torch.full((length,), n_local, device=device), rotary)
    q_near = rope(q0, pos_k[total - length :], rotary)
    k_near = rope(keys, pos_k, rotary)
    blocks = store.retrieve(q_far.mean(dim=-2)) if store.blocks else []
    far_k, far_v = store.far_kv(blocks, k0)
    out = torch.empty_like(q0)
    received = torch.zeros(q0.shape[0], total, dtype=torch.float32, device=device)  # summed over pieces
    for begin in range(0, length, QUERY_PIECE):
        end = min(length, begin + QUERY_PIECE)
        dist = pos_k[total - length + begin : total - length + end, None] - pos_k[None, :]
        near = (dist >= 0) & (dist < n_local)
        far = dist >= n_local
        s_near = _scores(q_near[:, begin:end], k_near, scale)
        s_buf = torch.where(near, s_near, _scores(q_far[:, begin:end], keys, scale).masked_fill(~far, NEG_INF))
        p = _softmax(torch.cat([s_buf, _scores(q_far[:, begin:end], far_k, scale)], dim=-1), q0.dtype)
        out[:, begin:end] = _weighted(p[..., :total], values) + _weighted(p[..., total:], far_v)
        received += (p[..., :total] * near).sum(dim=-2, dtype=torch.float32)
    store.append(k0, v0, received)
    return out[None]


def _allowed(mask: Optional[torch.Tensor], batch: int, n_q: int, n_k: int, device: torch.device) -> torch.Tensor:
    """[batch, n_q, n_k]: which tail keys each query may read."""
    if mask is None:  # causal, no padding
        i = torch.arange(n_q, device=device)[:, None] + (n_k - n_q)
        return (torch.arange(n_k, device=device)[None, :] <= i).expand(batch, n_q, n_k)
    allowed = mask if mask.dtype == torch.bool else mask > NEG_INF
    return allowed[:, 0].expand(batch, n_q, n_k)


def _build(context: SegmentContext, index: int, q_far: torch.Tensor, real: torch.Tensor, like: torch.Tensor) -> dict:
    """Layer `index` of a segment's context: the window rotated to end just
    before the segment's first token, and the sinks, the blocks the
    segment's mean query retrieves and the remainder, read at the fixed
    distance. Built by the segment's first call (its prefix), then shared."""
    store = context.memory.layers[index]
    (rest_k, rest_v), (win_k, win_v) = store.window(like)
    width = win_k.shape[-2]
    win_k = rope(win_k, torch.arange(-width, 0, device=like.device), context.memory.rotary)
    weights = real.to(q_far.dtype)[:, None, :, None]  # padded queries do not vote
    mean = (q_far * weights).sum(dim=(0, 2)) / weights.sum().clamp(min=1)
    far_k, far_v = store.far_kv(store.retrieve(mean), like)
    far_k, far_v = torch.cat([far_k, rest_k], dim=-2), torch.cat([far_v, rest_v], dim=-2)
    return {"win_k": win_k, "win_v": win_v, "far_k": far_k, "far_v": far_v}


def context_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    position_ids: Optional[torch.Tensor],
    layer: ContextLayer,
    scale: float,
) -> torch.Tensor:
    """Prefixes and branches behind memories: each row attends to its own
    tail (`k`, `v`: the engine's cache, rotated as usual) and to its
    segment's context, which the rows of a segment share and do not copy."""
    batch, _, n_q, _ = q.shape
    n_k = k.shape[-2]
    allowed = _allowed(mask, batch, n_q, n_k, q.device)
    s_tail = _scores(q, k, scale)
    if mask is not None and mask.dtype != torch.bool:
        s_tail = s_tail + mask
    s_tail = s_tail.masked_fill(~allowed[:, None], NEG_INF)
    if position_ids is None:
        position_ids = torch.arange(n_k - n_q, n_k, device=q.device).expand(batch, n_q)
    real = allowed.gather(2, (torch.arange(n_q, device=q.device) + (n_k - n_q)).expand(batch, n_q)[:, :, None])[..., 0]
    rows = layer.rows.to(q.device)
    out = torch.empty_like(q)
    for c in rows.unique().tolist():
        idx = (rows == c).nonzero()[:, 0]
        context = layer.contexts[c]
        n_local = context.memory.settings.n_local
        qc = q[idx]
        q_far = rope(qc, n_local - position_ids[idx], context.memory.rotary)
        built = context.layers[layer.index]
        if built is None:
            built = context.layers[layer.index] = _build(context, layer.index, q_far, real[idx], k[0])
        width, n_far = built["win_k"].shape[-2], built["far_k"].shape[-2]
        logits = torch.cat(
            [_scores(qc, built["win_k"], scale), _scores(q_far, built["far_k"], scale), s_tail[idx]], dim=-1
        )
        p = _softmax(logits, q.dtype)
        out[idx] = (
            _weighted(p[..., :width], built["win_v"])
            + _weighted(p[..., width : width + n_far], built["far_v"])
            + _weighted(p[..., width + n_far :], v[idx])
        )
    return out
