"""The branch layout: a text's prefix and its branches in one sequence.

Training packs every branch of a text behind one copy of its prefix
(`training.pack`), and the torch engine's fused prefill puts the first
step's branches behind it the same way (`engine.BranchDecoder.
encode_with_branches`). Both must give each token the same view as the
sequence `prefix + branch` would: the prefix attends causally to itself, a
branch to the whole prefix and causally to itself (never to another
branch), and a branch's positions continue the prefix's. One function
writes that layout for both, so the model is trained on what it decodes.
"""
from typing import List, Sequence, Tuple

import torch


def lay_out_row(
    prefix: Sequence[int],
    branches: Sequence[Sequence[int]],
    ids: torch.Tensor,
    positions: torch.Tensor,
    allowed: torch.Tensor,
    start: int = 0,
    branches_start: int = -1,
) -> List[Tuple[int, int]]:
    """Write one prefix and its branches into a row, in place.

    ids, positions: the row's token ids and position ids ([width]).
    allowed: the row's attention pattern ([width, width], query x key,
        True where a query may attend).
    start: where the prefix begins.
    branches_start: where the first branch begins (default: right behind
        the prefix; the engine pads its prefixes to one width instead).
    RETURNS: the (begin, end) slots of each branch; the last end is where
        the next text of a packed row may start.
    """
    p = len(prefix)
    ids[start : start + p] = torch.tensor(list(prefix), dtype=ids.dtype)
    positions[start : start + p] = torch.arange(p)
    allowed[start : start + p, start : start + p] = torch.ones((p, p), dtype=torch.bool).tril()
    begin = start + p if branches_start < 0 else branches_start
    slots: List[Tuple[int, int]] = []
    for branch in branches:
        end = begin + len(branch)
        ids[begin:end] = torch.tensor(list(branch), dtype=ids.dtype)
        positions[begin:end] = torch.arange(p, p + len(branch))
        allowed[begin:end, start : start + p] = True
        allowed[begin:end, begin:end] = torch.ones((end - begin, end - begin), dtype=torch.bool).tril()
        slots.append((begin, end))
        begin = end
    return slots


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[n, width, width] booleans -> the [n, 1, width, width] additive mask
    a Hugging Face model takes: 0 where allowed, the dtype's minimum elsewhere."""
    mask = torch.zeros((allowed.shape[0], 1, *allowed.shape[1:]), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return mask
