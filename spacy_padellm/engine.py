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

from .backend import Generation, HFTokenizerText, branch_bounds
from .branch_layout import additive_mask, lay_out_row
from .compat import cache_argument, output_cache


@dataclass
class PrefixCache:
    """Key/value cache of a batch of text prefixes."""

    cache: Any
    mask: torch.Tensor  # [n_texts, P], 1 for real tokens
    lengths: torch.Tensor  # [n_texts], real prefix lengths


@dataclass
class KeptBranch:
    """A finished branch kept for `fork`: row `row` of `cache`, which holds
    the branch up to but not including its last token `last` (its stop
    token, or the token at its bound). The branches
    that one decode call kept share one cache (`group`); releasing some
    compacts it to the rows still live."""

    cache: PrefixCache
    row: int
    last: int
    group: List["KeptBranch"]
    released: bool = False


def _select_rows(cache: Any, rows: torch.Tensor) -> Any:
    """A cache holding `rows` of `cache` (repeats allowed), leaving `cache`
    untouched: the layers are copied shallowly and their tensors re-indexed."""
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    selected.batch_select_indices(rows)
    return selected


def _compact(group: List[KeptBranch]) -> None:
    """Give the branches of `group` a cache of their own rows only."""
    if not group:
        return
    old = group[0].cache
    rows = torch.tensor([b.row for b in group], dtype=torch.long, device=old.mask.device)
    compact = PrefixCache(cache=_select_rows(old.cache, rows), mask=old.mask[rows], lengths=old.lengths[rows])
    for row, branch in enumerate(group):
        branch.cache, branch.row = compact, row


class BranchDecoder(HFTokenizerText):
    """Greedy, batched decoding of branches that share per-text prefixes:
    the torch implementation of `backend.Backend`.

    model: a Hugging Face causal LM (optionally wrapped by peft).
    stop_ids (Collection[int]): tokens that end a branch (newline tokens, EOS).
    pad_id (int): any valid token id; padded slots are masked out.
    tokenizer: the model's Hugging Face tokenizer (for `tokenize` and
        `detokenize`; decoding itself takes token ids).
    context (Optional[int]): what `context_length` reports (the shim knows
        the model's window).
    """

    def __init__(
        self, model: Any, stop_ids: Collection[int], pad_id: int, tokenizer: Any = None, context: Optional[int] = None
    ) -> None:
        self.model = model
        self.stop_ids = sorted(set(stop_ids))
        self.pad_id = pad_id
        self.tokenizer = tokenizer
        self._context = context
        self._cache_arg = cache_argument(model)
        self.tokens_evaluated = 0  # real (unpadded) tokens the model read; benchmarks report it
        self.texts_per_call: Optional[int] = None  # batched matrix products scale with the texts

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def context_length(self) -> Optional[int]:
        return self._context

    def memory(self, settings: Any) -> Any:
        """The long-document memory on this engine (`memory.engine.TorchMemory`):
        doc memories, text streamed into them, prefixes encoded behind them.
        Raises ValueError (the reason) for a model it does not support."""
        from .memory.engine import TorchMemory

        return TorchMemory(self, settings)

    def release(self, prefixes: PrefixCache) -> None:
        """Nothing to do: the cache's tensors go with the last reference."""

    def release_branches(self, branches: Sequence[Optional[KeptBranch]]) -> None:
        """Drop the released branches' rows from their shared cache (a copy of
        the rows still live), so that the count step's cache does not stay
        whole through the mention step."""
        groups: Dict[int, List[KeptBranch]] = {}
        for branch in branches:
            if branch is not None and not branch.released:
                branch.released = True
                groups[id(branch.group)] = branch.group
        for group in groups.values():
            group[:] = [b for b in group if not b.released]
            _compact(group)

    @torch.inference_mode()
    def encode_prefixes(self, prefixes: Sequence[Sequence[int]], cache: Any = None) -> PrefixCache:
        """Run every prefix through the model once, right-padded.

        cache: an empty cache object to fill instead of a new one (the
            long-document memory's, whose rows read their docs' memories)."""
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
        self.tokens_evaluated += sum(len(p) for p in prefixes)
        positions = torch.arange(width, device=device).expand(len(prefixes), width)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **({} if cache is None else {self._cache_arg: cache}),
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
        keep: bool = False,
    ) -> Tuple[PrefixCache, List[Generation]]:
        """Prefill and the first step of decoding in one forward call: every
        text's prefix, then `suffixes` (the same for every text, e.g. one label
        branch each) behind it, with a 4D mask under which each suffix sees its
        text's prefix and itself only, as in packed training. Saves one
        sequential forward call per batch, which is most of a step's cost on
        CPU at small batches.

        first_token_bias, keep: see `decode`.
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
            slots = lay_out_row(prefix, suffixes, ids[row], positions[row], allowed[row], branches_start=width)
            prefix_mask[row, :p] = 1
            for begin, end in slots:
                own = prefix_mask[row].clone()
                own[begin:end] = 1
                branch_masks.append(own)
                ends.append(end - 1)
                lengths.append(p + end - begin)
        mask = additive_mask(allowed, dtype)
        columns = torch.tensor(sorted(set(ends)), dtype=torch.long)
        self.tokens_evaluated += sum(len(p) for p in prefixes) + n * sum(len(s) for s in suffixes)
        out = self.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
            logits_to_keep=columns.to(device),
        )
        cache = output_cache(out)
        prefix_cache = PrefixCache(cache=cache, mask=prefix_mask.to(device), lengths=prefix_mask.sum(dim=1).to(device))
        rows = torch.arange(n).repeat_interleave(len(suffixes))
        column = {int(c): i for i, c in enumerate(columns)}
        logits = out.logits[rows.to(device), torch.tensor([column[e] for e in ends], device=device)]
        generations = self._greedy(
            logits,
            _select_rows(cache, rows.to(device)),
            torch.stack(branch_masks).to(device),
            torch.tensor(lengths, dtype=torch.long, device=device),
            max_new_tokens,
            first_token_bias,
            keep,
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
        keep: bool = False,
    ) -> List[Generation]:
        """Greedy-decode one branch per suffix, behind prefix `text_index[i]`.

        max_new_tokens: one bound for all branches, or one per branch (branches
            of different kinds can then share the forward calls).
        first_token_bias: token id -> value added to its log-probability when
            the first token is chosen; the recorded log-probabilities stay the
            model's. The count step uses it against count 0.
        keep: every branch is kept (`Generation.branch`, a `KeptBranch`)
            when it stops or reaches its bound: rows stay in the batch until
            all have finished, so that one cache holds them all.
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
        self.tokens_evaluated += sum(len(s) for s in suffixes)
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
        return self._greedy(out.logits[:, -1, :], output_cache(out), mask, lengths, max_new_tokens, first_token_bias, keep)

    @torch.inference_mode()
    def fork(
        self,
        branches: Sequence[KeptBranch],
        suffixes: Sequence[Sequence[int]],
        max_new_tokens: Union[int, Sequence[int]],
    ) -> List[Generation]:
        """`decode` behind kept branches: each kept cache stands in for the
        prefixes, and the suffix starts with the branch's stop token."""
        n = len(suffixes)
        limits = branch_bounds(max_new_tokens, n)
        if len(branches) != n or any(b is None for b in branches):
            raise ValueError("fork needs one kept branch per suffix.")
        groups: Dict[int, List[int]] = {}
        for k, branch in enumerate(branches):
            groups.setdefault(id(branch.cache), []).append(k)
        out: List[Optional[Generation]] = [None] * n
        for members in groups.values():
            cache = branches[members[0]].cache
            gens = self.decode(
                cache,
                [branches[k].row for k in members],
                [[branches[k].last, *suffixes[k]] for k in members],
                [limits[k] for k in members],
            )
            for k, gen in zip(members, gens):
                out[k] = gen
        return out  # type: ignore[return-value]

    def _greedy(
        self,
        logits: torch.Tensor,
        cache: Any,
        mask: torch.Tensor,
        lengths: torch.Tensor,
        max_new_tokens: Union[int, Sequence[int]],
        first_token_bias: Optional[Dict[int, float]] = None,
        keep: bool = False,
    ) -> List[Generation]:
        """Greedy steps for rows whose first next-token logits are known; a row
        leaves the batch (and its cache rows are dropped) once it stops or
        reaches its bound. With `keep`, a finished row stays, reading pad
        tokens that its mask hides, so the last cache holds every branch."""
        device = logits.device
        n = logits.shape[0]
        limits = torch.tensor(branch_bounds(max_new_tokens, n), dtype=torch.long, device=device)
        stop = torch.tensor(self.stop_ids, dtype=torch.long, device=device)
        tokens: List[List[int]] = [[] for _ in range(n)]
        logprobs: List[List[float]] = [[] for _ in range(n)]
        stopped = [False] * n
        active = torch.arange(n, device=device)  # original index of each row
        alive = torch.ones(n, dtype=torch.bool, device=device)  # keep: rows still generating
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
            for index, token, lp, done, live in zip(
                active.tolist(), next_ids.tolist(), next_lp.tolist(), is_stop.tolist(), alive.tolist()
            ):
                if live:
                    tokens[index].append(token)
                    logprobs[index].append(lp)
                    stopped[index] = done
            going = alive & ~is_stop & (limits > step + 1)
            if not bool(going.any()):
                break
            if keep:
                alive = going
                next_ids = torch.where(going, next_ids, torch.full_like(next_ids, self.pad_id))
                fed = going.long()[:, None]
            else:
                if not bool(going.all()):
                    kept = going.nonzero()[:, 0]
                    active, next_ids, mask, lengths = active[kept], next_ids[kept], mask[kept], lengths[kept]
                    limits, alive = limits[kept], alive[kept]
                    cache.batch_select_indices(kept)
                fed = torch.ones_like(mask[:, :1])
            self.tokens_evaluated += int(fed.sum())
            mask = torch.cat([mask, fed], dim=1)
            out = self.model(
                input_ids=next_ids[:, None],
                attention_mask=mask,
                position_ids=lengths[:, None],
                use_cache=True,
                **{self._cache_arg: cache},
            )
            lengths = lengths + fed[:, 0]
            logits = out.logits[:, -1, :]
            cache = output_cache(out)
        if not keep:
            return [Generation(t, lp, s) for t, lp, s in zip(tokens, logprobs, stopped)]
        kept_cache = PrefixCache(cache=cache, mask=mask, lengths=lengths)
        group: List[KeptBranch] = []
        gens = []
        for row, (t, lp, s) in enumerate(zip(tokens, logprobs, stopped)):
            branch = KeptBranch(kept_cache, row, t[-1], group)
            group.append(branch)
            gens.append(Generation(t, lp, s, branch))
        return gens
