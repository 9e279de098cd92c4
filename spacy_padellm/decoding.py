"""PaDeLLM-NER two-step parallel decoding over a batch of texts.

Step 1 decodes the mention count of every (text, label) branch; step 2 the
n-th mention of every (text, label, n) branch. Both steps run all branches
of all texts together through one `BranchDecoder`, behind prefixes encoded
once. A future strategy (the autoregressive baseline) plugs into the same
engine with one branch per text.
"""
import re
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .engine import BranchDecoder, Generation
from .prompt import PromptTokenizer
from .types import Mention, TextPrediction

_COUNT = re.compile(r"^\s*(\d{1,6})\s*$")


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
        engine: BranchDecoder,
        prompts: PromptTokenizer,
        labels: Sequence[str],
        *,
        max_count: int,
        max_count_tokens: int,
        max_mention_tokens: int,
    ) -> None:
        self.engine = engine
        self.prompts = prompts
        self.labels = list(labels)
        self.max_count = max_count
        self.max_count_tokens = max_count_tokens
        self.max_mention_tokens = max_mention_tokens

    @property
    def tokenizer(self) -> Any:
        return self.prompts.tokenizer

    def prefix_ids(self, text: str) -> List[int]:
        return self.prompts.prefix(text)

    def __call__(self, texts: Sequence[str]) -> List[TextPrediction]:
        if not texts:
            return []
        preds = [TextPrediction(fallbacks=Counter()) for _ in texts]
        prefixes = self.engine.encode_prefixes([self.prefix_ids(t) for t in texts])

        branches = [(i, label) for i in range(len(texts)) for label in self.labels]
        count_gens = self.engine.decode(
            prefixes,
            [i for i, _ in branches],
            [self.prompts.count_branch(label) for _, label in branches],
            self.max_count_tokens,
        )
        self._add_stats(preds, [i for i, _ in branches], count_gens)
        mention_branches: List[Tuple[int, str, int, int]] = []
        for (i, label), gen in zip(branches, count_gens):
            if not gen.stopped:
                preds[i].fallbacks["truncated_generations"] += 1
            count, fallback = parse_count(generation_text(self.tokenizer, gen), self.max_count)
            if fallback:
                preds[i].fallbacks[fallback] += 1
            preds[i].counts[label] = count
            mention_branches.extend((i, label, count, n) for n in range(1, count + 1))

        mention_gens = self.engine.decode(
            prefixes,
            [i for i, _, _, _ in mention_branches],
            [self.prompts.mention_branch(label, c, n) for _, label, c, n in mention_branches],
            self.max_mention_tokens,
        )
        self._add_stats(preds, [b[0] for b in mention_branches], mention_gens)
        for (i, label, _, n), gen in zip(mention_branches, mention_gens):
            if not gen.stopped:
                preds[i].fallbacks["truncated_generations"] += 1
                continue
            text = generation_text(self.tokenizer, gen)
            preds[i].mentions.append(Mention(label, n, text, gen.probability))
        return preds

    @staticmethod
    def _add_stats(
        preds: List[TextPrediction], text_index: Sequence[int], gens: Sequence[Generation]
    ) -> None:
        """Generated tokens, and sequential decoding steps (the longest branch
        of a text in each step), which the benchmarks report."""
        longest: Dict[int, int] = {}
        for i, gen in zip(text_index, gens):
            preds[i].generated_tokens += len(gen.token_ids)
            longest[i] = max(longest.get(i, 0), len(gen.token_ids))
        for i, steps in longest.items():
            preds[i].decoding_steps += steps
