"""Greedy decoding of many short branches behind shared per-text prefixes.

This is the torch core that both decoding strategies use. Every text's prefix
is run through the model once (`encode_prefixes`); `decode` then gives every
branch a view of its text's key/value cache, so no text is encoded again per
label or per mention.

Layout of one batch row, in cache slots:

    [prefix, right-padded to P][branch suffix, left-padded to S][generated ...]

Padding slots are masked out. No row has a query that sees only padding (each
one sees at least its own real prefix), so no softmax is taken over an empty
set. Position ids count real tokens only, which makes every row compute what
the unpadded sequence would: the equivalence test compares against
`model.generate()` on each full prompt.
"""
import copy
from dataclasses import dataclass
from typing import Any, Collection, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .backend import Generation
from .compat import cache_argument, output_cache


@dataclass
class PrefixCache:
    """Key/value cache of a batch of text prefixes."""

    cache: Any
    mask: torch.Tensor  # [n_texts, P], 1 for real tokens
    lengths: torch.Tensor  # [n_texts], real prefix lengths


def _select_rows(cache: Any, rows: torch.Tensor) -> Any:
    """A cache holding `rows` of `cache` (repeats allowed), leaving `cache`
    untouched: the layers are copied shallowly and their tensors re-indexed."""
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    selected.batch_select_indices(rows)
    return selected


class BranchDecoder:
    """Greedy, batched decoding of branches that share per-text prefixes:
    the torch implementation of `backend.Backend`.

    model: a Hugging Face causal LM (optionally wrapped by peft).
    stop_ids (Collection[int]): tokens that end a branch (newline tokens, EOS).
    pad_id (int): any valid token id; padded slots are masked out.
    """

    def __init__(self, model: Any, stop_ids: Collection[int], pad_id: int) -> None:
        self.model = model
        self.stop_ids = sorted(set(stop_ids))
        self.pad_id = pad_id
        self._cache_arg = cache_argument(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def release(self, prefixes: PrefixCache) -> None:
        """Nothing to do: the cache's tensors go with the last reference."""

    @torch.inference_mode()
    def encode_prefixes(self, prefixes: Sequence[Sequence[int]]) -> PrefixCache:
        """Run every prefix through the model once, right-padded."""
        if any(len(p) == 0 for p in prefixes):
            raise ValueError("Every prefix needs at least one token.")
        device = self.device
        self.model.eval()  # training may have left dropout on
        width = max(len(p) for p in prefixes)
        ids = torch.full((len(prefixes), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prefixes), width), dtype=torch.long)
        for row, prefix in enumerate(prefixes):
            ids[row, : len(prefix)] = torch.tensor(list(prefix), dtype=torch.long)
            mask[row, : len(prefix)] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = torch.arange(width, device=device).expand(len(prefixes), width)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        lengths = mask.sum(dim=1)
        return PrefixCache(cache=output_cache(out), mask=mask, lengths=lengths)

    @torch.inference_mode()
    def encode_with_branches(
        self,
        prefixes: Sequence[Sequence[int]],
        suffixes: Sequence[Sequence[int]],
        max_new_tokens: int,
        first_token_bias: Optional[Dict[int, float]] = None,
    ) -> Tuple[PrefixCache, List[Generation]]:
        """Prefill and the first step of decoding in one forward call: every
        text's prefix, then `suffixes` (the same for every text, e.g. one label
        branch each) behind it, with a 4D mask under which each suffix sees its
        text's prefix and itself only, as in packed training. Saves one
        sequential forward call per batch, which is most of a step's cost on
        CPU at small batches.

        first_token_bias: see `decode`.
        RETURNS: the prefix cache for later `decode` calls (it sees the prefix
        only), and one generation per (text, suffix), text-major.
        """
        if any(len(p) == 0 for p in prefixes) or any(len(s) == 0 for s in suffixes):
            raise ValueError("Every prefix and every branch suffix needs at least one token.")
        device = self.device
        dtype = next(self.model.parameters()).dtype
        self.model.eval()
        n, width = len(prefixes), max(len(p) for p in prefixes)
        total = width + sum(len(s) for s in suffixes)
        ids = torch.full((n, total), self.pad_id, dtype=torch.long)
        positions = torch.zeros((n, total), dtype=torch.long)
        allowed = torch.zeros((n, total, total), dtype=torch.bool)
        prefix_mask = torch.zeros((n, total), dtype=torch.long)
        allowed[:, :, 0] = True  # padding queries see something: no empty softmax
        branch_masks, ends, lengths = [], [], []
        for row, prefix in enumerate(prefixes):
            p = len(prefix)
            ids[row, :p] = torch.tensor(list(prefix), dtype=torch.long)
            positions[row, :p] = torch.arange(p)
            allowed[row, :p, :p] = torch.ones((p, p), dtype=torch.bool).tril()
            prefix_mask[row, :p] = 1
            start = width
            for suffix in suffixes:
                end = start + len(suffix)
                ids[row, start:end] = torch.tensor(list(suffix), dtype=torch.long)
                positions[row, start:end] = torch.arange(p, p + len(suffix))
                allowed[row, start:end, :p] = True
                allowed[row, start:end, start:end] = torch.ones((end - start, end - start), dtype=torch.bool).tril()
                own = prefix_mask[row].clone()
                own[start:end] = 1
                branch_masks.append(own)
                ends.append(end - 1)
                lengths.append(p + len(suffix))
                start = end
        mask = torch.zeros((n, 1, total, total), dtype=dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        keep = torch.tensor(sorted(set(ends)), dtype=torch.long)
        out = self.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
            logits_to_keep=keep.to(device),
        )
        cache = output_cache(out)
        prefix_cache = PrefixCache(cache=cache, mask=prefix_mask.to(device), lengths=prefix_mask.sum(dim=1).to(device))
        rows = torch.arange(n).repeat_interleave(len(suffixes))
        column = {int(c): i for i, c in enumerate(keep)}
        logits = out.logits[rows.to(device), torch.tensor([column[e] for e in ends], device=device)]
        generations = self._greedy(
            logits,
            _select_rows(cache, rows.to(device)),
            torch.stack(branch_masks).to(device),
            torch.tensor(lengths, dtype=torch.long, device=device),
            max_new_tokens,
            first_token_bias,
        )
        return prefix_cache, generations

    @torch.inference_mode()
    def decode(
        self,
        prefixes: PrefixCache,
        text_index: Sequence[int],
        suffixes: Sequence[Sequence[int]],
        max_new_tokens: Union[int, Sequence[int]],
        first_token_bias: Optional[Dict[int, float]] = None,
    ) -> List[Generation]:
        """Greedy-decode one branch per suffix, behind prefix `text_index[i]`.

        max_new_tokens: one bound for all branches, or one per branch (branches
            of different kinds can then share the forward calls).
        first_token_bias: token id -> value added to its log-probability when
            the first token is chosen; the recorded log-probabilities stay the
            model's. The count step uses it against count 0.
        RETURNS (List[Generation]): one per suffix, in order.
        """
        n = len(suffixes)
        if n == 0:
            return []
        if any(len(s) == 0 for s in suffixes):
            raise ValueError("Every branch suffix needs at least one token.")
        device = self.device
        rows = torch.tensor(list(text_index), dtype=torch.long, device=device)
        cache = _select_rows(prefixes.cache, rows)
        width = max(len(s) for s in suffixes)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        suffix_mask = torch.zeros((n, width), dtype=torch.long)
        for row, suffix in enumerate(suffixes):
            ids[row, width - len(suffix) :] = torch.tensor(list(suffix), dtype=torch.long)
            suffix_mask[row, width - len(suffix) :] = 1
        ids, suffix_mask = ids.to(device), suffix_mask.to(device)
        mask = torch.cat([prefixes.mask[rows], suffix_mask], dim=1)
        lengths = prefixes.lengths[rows] + suffix_mask.sum(dim=1)
        # Left-padded suffix: its real tokens continue the real prefix.
        positions = (lengths[:, None] - width + torch.arange(width, device=device)).clamp(min=0)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        return self._greedy(out.logits[:, -1, :], output_cache(out), mask, lengths, max_new_tokens, first_token_bias)

    def _greedy(
        self,
        logits: torch.Tensor,
        cache: Any,
        mask: torch.Tensor,
        lengths: torch.Tensor,
        max_new_tokens: Union[int, Sequence[int]],
        first_token_bias: Optional[Dict[int, float]] = None,
    ) -> List[Generation]:
        """Greedy steps for rows whose first next-token logits are known; a row
        leaves the batch (and its cache rows are dropped) once it stops or
        reaches its bound."""
        device = logits.device
        n = logits.shape[0]
        if isinstance(max_new_tokens, int):
            max_new_tokens = [max_new_tokens] * n
        limits = torch.tensor(list(max_new_tokens), dtype=torch.long, device=device)
        if len(limits) != n or bool((limits < 1).any()):
            raise ValueError("max_new_tokens needs one positive bound per branch.")
        stop = torch.tensor(self.stop_ids, dtype=torch.long, device=device)
        tokens: List[List[int]] = [[] for _ in range(n)]
        logprobs: List[List[float]] = [[] for _ in range(n)]
        stopped = [False] * n
        active = torch.arange(n, device=device)  # original index of each row
        for step in range(int(limits.max())):
            log_p = torch.log_softmax(logits.float(), dim=-1)
            if step == 0 and first_token_bias:
                biased = log_p.clone()
                ids = torch.tensor(list(first_token_bias), dtype=torch.long, device=device)
                biased[:, ids] += torch.tensor(list(first_token_bias.values()), device=device)
                next_ids = biased.argmax(dim=-1)
            else:
                next_ids = log_p.argmax(dim=-1)
            next_lp = log_p.gather(1, next_ids[:, None])[:, 0]
            is_stop = torch.isin(next_ids, stop)
            for row, (index, token, lp, done) in enumerate(
                zip(active.tolist(), next_ids.tolist(), next_lp.tolist(), is_stop.tolist())
            ):
                tokens[index].append(token)
                logprobs[index].append(lp)
                stopped[index] = done
            keep = ~is_stop & (limits > step + 1)
            if not bool(keep.any()):
                break
            if not bool(keep.all()):
                kept = keep.nonzero()[:, 0]
                active, next_ids, mask, lengths = active[kept], next_ids[kept], mask[kept], lengths[kept]
                limits = limits[kept]
                cache.batch_select_indices(kept)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self.model(
                input_ids=next_ids[:, None],
                attention_mask=mask,
                position_ids=lengths[:, None],
                use_cache=True,
                **{self._cache_arg: cache},
            )
            lengths = lengths + 1
            logits = out.logits[:, -1, :]
            cache = output_cache(out)
        return [Generation(t, lp, s) for t, lp, s in zip(tokens, logprobs, stopped)]
