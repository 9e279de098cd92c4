"""PaDeLLM-NER two-step parallel decoding over a batch of texts.

Step 1 decodes the mention count of every (text, label) branch; step 2 the
n-th mention of every (text, label, n) branch. Both steps run all branches
of all texts together through one `BranchDecoder`, behind prefixes encoded
once. The autoregressive baseline (`autoregressive.py`) uses the same
engine with one branch per text.
"""
import re
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .backend import Backend, Generation
from .prompt import PromptTokenizer
from .types import Mention, TextPrediction

_COUNT = re.compile(r"^\s*(\d{1,6})\s*$")
MentionKey = Tuple[int, str, int, int]  # text, label, count, n


def stop_token_ids(tokenizer: Any) -> List[int]:
    """Tokens that end a generation: every token whose text contains a
    newline, and EOS. Byte-level vocabularies merge newlines into many tokens
    ("\\n\\n", ".\\n"), so the vocabulary is scanned once."""
    ids = set()
    vocab_size = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(vocab_size)])
    for i, text in enumerate(texts):
        if "\n" in text:
            ids.add(i)
    for name in ("eos_token_id",):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            ids.add(value)
    return sorted(ids)


def generation_text(tokenizer: Any, generation: Generation) -> str:
    """The generated text up to the first newline, special tokens removed."""
    text = tokenizer.decode(generation.token_ids, skip_special_tokens=True)
    return text.split("\n", 1)[0]


def zero_count_token_ids(tokenizer: Any) -> List[int]:
    """The tokens that start count 0 ("0", and any merged form such as
    "0\n" or " 0" the vocabulary has)."""
    ids = set()
    for text in ("0", " 0", "0\n"):
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if encoded and tokenizer.decode(encoded[:1]).strip() == "0":
            ids.add(encoded[0])
    return sorted(ids)


def parse_count(text: str, max_count: int) -> Tuple[int, Optional[str]]:
    """The count, and the fallback taken to get it (None when none was).

    Anything but a non-negative integer counts as unparseable and means 0:
    predicting no mention is the safe reading of "many" or "-1".
    """
    match = _COUNT.match(text)
    if match is None:
        return 0, "unparseable_counts"
    count = int(match.group(1))
    if count > max_count:
        return max_count, "clipped_counts"
    return count, None


class ParallelDecoding:
    """Runs the two PaDeLLM steps for a batch of texts."""

    def __init__(
        self,
        engine: Backend,
        prompts: PromptTokenizer,
        labels: Sequence[str],
        *,
        max_count: int,
        max_count_tokens: int,
        max_mention_tokens: int,
        zero_count_penalty: float = 0.0,
    ) -> None:
        self.engine = engine
        self.prompts = prompts
        self.labels = list(labels)
        self.max_count = max_count
        self.max_count_tokens = max_count_tokens
        self.max_mention_tokens = max_mention_tokens
        # Logit bias of the count's first token: -zero_count_penalty on the
        # tokens that start count 0. Most (text, label) branches of the
        # training data have count 0, and the recall a fine-tuned model loses
        # is lost there (counts too low, README); a penalty trades a little
        # precision for that recall without retraining.
        self.count_bias: Optional[Dict[int, float]] = None
        if zero_count_penalty:
            self.count_bias = {i: -float(zero_count_penalty) for i in zero_count_token_ids(self.tokenizer)}
        # All exact, all on by default (off only for the benchmarks'
        # ablations). Fusion: the prefill and the count branches' first token
        # in one forward call.
        self.fused_prefill = True
        # Forks: mention branches continue their label's count branch, so the
        # label and the count are not evaluated again for every mention (as
        # long as the count was generated in its canonical tokens; else the
        # branch is re-encoded behind the prefix, as training saw it).
        self.fork_mentions = True
        # Speculation: the mentions of the count that a count branch's first
        # token spells ("2") are decoded in the same calls that finish the
        # count, a sequential call fewer. With forks it costs at most one
        # token per mention (the count's first token again in each mention's
        # branch; llama.cpp evaluates it once for all); without, every mention
        # branch re-encodes the label behind the prefix, which on a CPU
        # measured 6% slower than no speculation
        # (benchmarks/results/decoding_cpu_profile.md).
        self.speculative_counts = True

    @property
    def tokenizer(self) -> Any:
        return self.prompts.tokenizer

    def prefix_ids(self, text: str) -> List[int]:
        return self.prompts.prefix(text)

    def __call__(self, texts: Sequence[str]) -> List[TextPrediction]:
        if not texts:
            return []
        preds = [TextPrediction(fallbacks=Counter()) for _ in texts]
        branches = [(i, label) for i in range(len(texts)) for label in self.labels]
        speculate = self.speculative_counts and self.max_count_tokens >= 2
        keep = self.fork_mentions
        prefixes, count_gens = start_branches(
            self.engine,
            [self.prefix_ids(t) for t in texts],
            [self.prompts.count_branch(label) for label in self.labels],
            1 if speculate else self.max_count_tokens,
            fused=self.fused_prefill,
            first_token_bias=self.count_bias,
            keep=keep,
        )
        kept = [gen.branch for gen in count_gens if gen.branch is not None]
        try:  # the engine's cache of these prefixes and branches is freed whatever happens
            done: Dict[MentionKey, Generation] = {}
            if speculate and keep:
                count_gens, done = self._finish_counts_with_forks(prefixes, branches, count_gens)
            elif speculate:
                count_gens, done = self._finish_counts_with_mentions(prefixes, branches, count_gens)
            add_stats(preds, [i for i, _ in branches], count_gens)
            mention_branches: List[MentionKey] = []
            parents: Dict[Tuple[int, str], Any] = {}  # count branches the mentions fork from
            for (i, label), gen in zip(branches, count_gens):
                if not gen.stopped:
                    preds[i].fallbacks["truncated_generations"] += 1
                count, fallback = parse_count(generation_text(self.tokenizer, gen), self.max_count)
                if fallback:
                    preds[i].fallbacks[fallback] += 1
                if count >= self.max_count:
                    preds[i].fallbacks["possible_undercounts"] += 1
                preds[i].counts[label] = count
                preds[i].count_scores[label] = gen.probability
                mention_branches.extend((i, label, count, n) for n in range(1, count + 1))
                if count and gen.branch is not None and gen.token_ids == self.prompts.count(count):
                    parents[(i, label)] = gen.branch
            unused = [gen.branch for gen, key in zip(count_gens, branches) if gen.branch is not None and key not in parents]
            self.engine.release_branches(unused)  # before the mentions take sequences and memory

            todo = [key for key in mention_branches if key not in done]
            forked = [key for key in todo if key[:2] in parents]
            if forked:
                handles = [parents[key[:2]] for key in forked]
                headers = [self.prompts.mention_header(n) for _, _, _, n in forked]
                width = _width(getattr(handles[0], "cache", None))
                gens = self._decode_bounded(
                    width, headers, lambda b, e: self.engine.fork(handles[b:e], headers[b:e], self.max_mention_tokens)
                )
                done.update(zip(forked, gens))
            rest = [key for key in todo if key[:2] not in parents]
            suffixes = [self.prompts.mention_branch(label, c, n) for _, label, c, n in rest]
            text_index = [i for i, _, _, _ in rest]
            gens = self._decode_bounded(
                _width(prefixes),
                suffixes,
                lambda b, e: self.engine.decode(prefixes, text_index[b:e], suffixes[b:e], self.max_mention_tokens),
            )
            done.update(zip(rest, gens))
        finally:
            self.engine.release_branches(kept)
            self.engine.release(prefixes)
        mention_gens = [done[key] for key in mention_branches]
        add_stats(preds, [b[0] for b in mention_branches], mention_gens)
        for (i, label, _, n), gen in zip(mention_branches, mention_gens):
            if not gen.stopped:
                preds[i].fallbacks["truncated_generations"] += 1
                continue
            text = generation_text(self.tokenizer, gen)
            preds[i].mentions.append(Mention(label, n, text, gen.probability))
        return preds

    def _decode_bounded(
        self, width: int, suffixes: Sequence[Sequence[int]], run: Callable[[int, int], List[Generation]]
    ) -> List[Generation]:
        """The mention branches `run(begin, end)` decodes, in groups small
        enough that their key/value caches (each branch holds a copy of the
        `width` cache slots it continues) stay under BRANCH_TOKEN_LIMIT
        tokens, whatever the counts."""
        gens: List[Generation] = []
        begin = 0
        while begin < len(suffixes):
            end, tokens = begin, 0
            while end < len(suffixes):
                cost = width + len(suffixes[end]) + self.max_mention_tokens
                if end > begin and tokens + cost > BRANCH_TOKEN_LIMIT:
                    break
                tokens += cost
                end += 1
            gens.extend(run(begin, end))
            begin = end
        return gens

    def _speculated_count(self, first: Sequence[int]) -> int:
        """The count whose canonical tokens start with `first` and go on (its
        newline still to come), or 0 when there is none to speculate on."""
        guess = self.tokenizer.decode(list(first), skip_special_tokens=True)
        if not guess.isdigit() or not 0 < int(guess) <= self.max_count:
            return 0
        canonical = self.prompts.count(int(guess))
        return int(guess) if len(canonical) > len(first) and canonical[: len(first)] == list(first) else 0

    def _finish_counts_with_forks(
        self, prefixes: Any, branches: Sequence[Tuple[int, str]], firsts: Sequence[Generation]
    ) -> Tuple[List[Generation], Dict[MentionKey, Generation]]:
        """Finish the count branches and decode the mentions of the count
        each one's first token spells, in the same calls: each kept first-
        token branch forks a branch that finishes its count and, for first
        token "2", two that continue it with the rest of count "2" (the
        newline) and mention headers 1 and 2. A count that comes out other
        than spelled ("1" then "2": 12) keeps its count; its speculated
        mentions are not used and the caller decodes the right ones. The
        result equals the unspeculated steps exactly."""
        finished = list(firsts)
        guesses: Dict[int, int] = {}
        rows: List[Tuple[int, int]] = []  # (branch, n); n = 0 finishes the count
        parents: List[Any] = []
        suffixes: List[List[int]] = []
        limits: List[int] = []
        unkept: List[int] = []  # first-token branches the engine could not keep
        for k, first in enumerate(firsts):
            if first.stopped:
                continue
            if first.branch is None:
                unkept.append(k)
                continue
            rows.append((k, 0))
            parents.append(first.branch)
            suffixes.append([])
            limits.append(self.max_count_tokens - len(first.token_ids))
            guesses[k] = self._speculated_count(first.token_ids)
            rest = self.prompts.count(guesses[k])[len(first.token_ids) :] if guesses[k] else []
            for n in range(1, guesses[k] + 1):
                rows.append((k, n))
                parents.append(first.branch)
                suffixes.append(rest + self.prompts.mention_header(n))
                limits.append(self.max_mention_tokens)
        try:  # in groups under BRANCH_TOKEN_LIMIT, as the mention step's
            width = _width(getattr(parents[0], "cache", None)) if parents else 0
            gens = self._decode_bounded(width, suffixes, lambda b, e: self.engine.fork(parents[b:e], suffixes[b:e], limits[b:e]))
        finally:  # branches that stopped at their first token stay for the caller's forks
            self.engine.release_branches([gen.branch for gen in firsts if not gen.stopped])
        # Branches not kept finish behind the prefix, label re-encoded.
        again = self.engine.decode(
            prefixes,
            [branches[k][0] for k in unkept],
            [self.prompts.count_branch(branches[k][1]) + firsts[k].token_ids for k in unkept],
            [self.max_count_tokens - len(firsts[k].token_ids) for k in unkept],
        ) if unkept else []
        finishing = [(k, gen) for (k, n), gen in zip(rows, gens) if n == 0] + list(zip(unkept, again))
        for k, gen in finishing:
            first = firsts[k]
            finished[k] = Generation(first.token_ids + gen.token_ids, first.logprobs + gen.logprobs, gen.stopped)
        done: Dict[MentionKey, Generation] = {}
        for (k, n), gen in zip(rows, gens):
            if n and finished[k].token_ids == self.prompts.count(guesses[k]):
                i, label = branches[k]
                done[(i, label, guesses[k], n)] = gen
        return finished, done

    def _finish_counts_with_mentions(
        self, prefixes: Any, branches: Sequence[Tuple[int, str]], firsts: Sequence[Generation]
    ) -> Tuple[List[Generation], Dict[MentionKey, Generation]]:
        """Finish the count branches and, in the same forward calls, decode
        the mentions of the count each branch's first token spells ("3"
        speculates count 3). A branch whose finished count differs ("3" then
        "1": 31) keeps its count; its speculated mentions are not used and the
        caller decodes the right ones. The result equals the two sequential
        steps exactly and saves the forward call that reads the count's
        closing newline."""
        finished = list(firsts)
        speculated: Dict[int, int] = {}
        rows: List[Tuple[int, int]] = []  # (branch, n); n = 0 continues the count
        text_index, suffixes, limits = [], [], []
        for k, ((i, label), first) in enumerate(zip(branches, firsts)):
            if first.stopped:
                continue
            rows.append((k, 0))
            text_index.append(i)
            suffixes.append(self.prompts.count_branch(label) + first.token_ids)
            limits.append(self.max_count_tokens - len(first.token_ids))
            guess = self.tokenizer.decode(first.token_ids, skip_special_tokens=True)
            if not guess.isdigit():
                continue
            speculated[k], _ = parse_count(guess, self.max_count)
            for n in range(1, speculated[k] + 1):
                rows.append((k, n))
                text_index.append(i)
                suffixes.append(self.prompts.mention_branch(label, speculated[k], n))
                limits.append(self.max_mention_tokens)
        done: Dict[MentionKey, Generation] = {}
        for (k, n), gen in zip(rows, self.engine.decode(prefixes, text_index, suffixes, limits)):
            i, label = branches[k]
            if n == 0:
                first = firsts[k]
                finished[k] = Generation(first.token_ids + gen.token_ids, first.logprobs + gen.logprobs, gen.stopped)
            else:
                done[(i, label, speculated[k], n)] = gen
        return finished, done


# Most cache slots (branches x their length) that one mention step holds:
# with SmolLM2-135M in float32 (46 kB of keys and values per slot) about
# 750 MB. Typical batches stay far below it (16 CoNLL sentences with 2
# mentions each: about 3,000 slots); it bounds the rare batch whose counts
# all reach max_count.
BRANCH_TOKEN_LIMIT = 2**14

# The fused call's attention mask has (texts x length^2) entries, length being
# a prefix plus all first-step branches; above this many (128 MB of float32)
# the prefill runs on its own with a 2D mask (long documents).
FUSED_MASK_LIMIT = 2**25


def _width(handle: Any) -> int:
    """Cache slots each branch behind `handle` copies (torch's padded mask
    width; 0 for an engine whose branches share their prefix's cells)."""
    mask = getattr(handle, "mask", None)
    return int(mask.shape[1]) if mask is not None else 0


def start_branches(
    engine: Backend,
    prefixes: Sequence[Sequence[int]],
    suffixes: Sequence[Sequence[int]],
    max_new_tokens: int,
    fused: bool = True,
    first_token_bias: Optional[Dict[int, float]] = None,
    keep: bool = False,
) -> Tuple[Any, List[Generation]]:
    """Encode the prefixes and decode the first step's branches (the same
    suffixes behind every text), text-major. Fused, the prefill and the
    branches' first token are one forward call; unfused, two."""
    length = max(len(p) for p in prefixes) + sum(len(s) for s in suffixes)
    if fused and len(prefixes) * length**2 <= FUSED_MASK_LIMIT:
        return engine.encode_with_branches(prefixes, suffixes, max_new_tokens, first_token_bias, keep=keep)
    cache = engine.encode_prefixes(prefixes)
    text_index = [i for i in range(len(prefixes)) for _ in suffixes]
    suffixes = [s for _ in prefixes for s in suffixes]
    try:
        return cache, engine.decode(cache, text_index, suffixes, max_new_tokens, first_token_bias, keep=keep)
    except BaseException:
        engine.release(cache)
        raise


def add_stats(preds: List[TextPrediction], text_index: Sequence[int], gens: Sequence[Generation]) -> None:
    """Generated tokens, and sequential decoding steps (the longest branch
    of a text in each step), which the benchmarks report."""
    longest: Dict[int, int] = {}
    for i, gen in zip(text_index, gens):
        preds[i].generated_tokens += len(gen.token_ids)
        longest[i] = max(longest.get(i, 0), len(gen.token_ids))
    for i, steps in longest.items():
        preds[i].decoding_steps += steps
