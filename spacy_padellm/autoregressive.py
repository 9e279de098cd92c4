"""The autoregressive baseline (the paper's AutoReg_struct).

One branch per text, behind the same prefix as PaDeLLM's: the model writes
every label-mention pair on one line, in textual order,

    LOC: Japan; MISC: Asian Cup; PER: Nadim Ladki

or `none`. It is trained from the same examples through the same packing and
its mentions go through the same alignment, so the two modes differ only in
how the output is laid out: one long sequence here, many short parallel ones
in PaDeLLM.
"""
from collections import Counter
from typing import Any, Dict, List, Sequence, Tuple

from spacy.tokens import Span

from .decoding import add_stats, generation_text, start_branches
from .backend import Backend
from .prompt import PromptTokenizer
from .types import Mention, TextPrediction

PAIR_SEPARATOR = "; "
LABEL_SEPARATOR = ": "
NO_ENTITIES = "none"


def format_pairs(pairs: Sequence[Tuple[str, str]]) -> str:
    """The target line for (label, mention) pairs, ending with the newline
    decoding stops at."""
    if not pairs:
        return NO_ENTITIES + "\n"
    return PAIR_SEPARATOR.join(f"{label}{LABEL_SEPARATOR}{mention}" for label, mention in pairs) + "\n"


def parse_pairs(line: str, labels: Sequence[str]) -> Tuple[List[Tuple[str, str]], int]:
    """(label, mention) pairs of a generated line, and how many parts were
    not "LABEL: mention" with a known label (dropped)."""
    line = line.strip()
    if not line or line == NO_ENTITIES:
        return [], 0
    by_length = sorted(labels, key=len, reverse=True)
    pairs: List[Tuple[str, str]] = []
    bad = 0
    for part in line.split(PAIR_SEPARATOR.strip()):
        part = part.strip()
        label = next((lab for lab in by_length if part.startswith(lab + LABEL_SEPARATOR.strip())), None)
        if label is None:
            bad += 1
            continue
        pairs.append((label, part[len(label) + 1 :].strip()))
    return pairs, bad


def gold_pairs(mentions_by_label: Dict[str, List[Span]], max_count: int) -> List[Tuple[str, str]]:
    """Pairs in textual order, at most `max_count` per label (as PaDeLLM)."""
    spans = [s for spans in mentions_by_label.values() for s in spans[:max_count]]
    return [(s.label_, s.text) for s in sorted(spans, key=lambda s: (s.start, s.end, s.label_))]


class AutoregressiveDecoding:
    """One greedy generation per text, all pairs on one line."""

    def __init__(
        self,
        engine: Backend,
        prompts: PromptTokenizer,
        labels: Sequence[str],
        *,
        max_new_tokens: int,
    ) -> None:
        self.engine = engine
        self.prompts = prompts
        self.labels = list(labels)
        self.max_new_tokens = max_new_tokens
        self.fused_prefill = True  # as ParallelDecoding's: prefix and header in one forward call

    @property
    def tokenizer(self) -> Any:
        return self.prompts.tokenizer

    def __call__(self, texts: Sequence[str]) -> List[TextPrediction]:
        if not texts:
            return []
        preds = [TextPrediction(fallbacks=Counter()) for _ in texts]
        prefixes, gens = start_branches(
            self.engine,
            [self.prompts.prefix(t) for t in texts],
            [self.prompts.structured_branch()],
            self.max_new_tokens,
            fused=self.fused_prefill,
        )
        self.engine.release(prefixes)  # one branch per text, all done
        add_stats(preds, range(len(texts)), gens)
        for pred, gen in zip(preds, gens):
            line = generation_text(self.tokenizer, gen)
            if not gen.stopped:
                # Keep the complete pairs of a line cut by the token bound.
                pred.fallbacks["truncated_generations"] += 1
                line = line.rsplit(PAIR_SEPARATOR.strip(), 1)[0] if PAIR_SEPARATOR.strip() in line else ""
            pairs, bad = parse_pairs(line, self.labels)
            if bad:
                pred.fallbacks["unparseable_pairs"] += bad
            seen: Counter = Counter()
            for label, mention in pairs:
                seen[label] += 1
                pred.mentions.append(Mention(label, seen[label], mention, gen.probability))
            pred.counts = dict(seen)
        return preds
