"""Plain data passed between decoding, alignment and the pipe.

Nothing here depends on torch, so alignment and duplicate resolution can be
tested with scripted generations.
"""
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Literal

AlignmentMode = Literal["strict", "contract", "expand"]
ALIGNMENT_MODES = ("strict", "contract", "expand")

# Every run-time fallback has a name here; they are counted per doc and in the
# component, and documented in the README.
FALLBACKS = (
    "unparseable_counts",  # count output was not a non-negative integer -> 0
    "clipped_counts",  # count above `max_count` -> `max_count`
    "unparseable_pairs",  # autoregressive: a part not "LABEL: mention" with a known label -> dropped
    "truncated_generations",  # hit the token bound before a newline -> dropped
    "empty_mentions",  # blank mention string -> dropped
    "hallucinated_mentions",  # mention not found in the text -> dropped
    "repeated_mentions",  # no unused occurrence left for the label -> dropped
    "misaligned_mentions",  # found, but `Doc.char_span` gave no span -> dropped
    "windowed_docs",  # segment_tokens = 0: doc too long for the context, decoded in windows
    "segmented_docs",  # doc longer than the segment budget, decoded in segments of whole sentences
    "memory_docs",  # doc of several segments decoded behind the long-document memory
    "possible_undercounts",  # a count reached max_count: the label may have more mentions
    "resplit_segments",  # a crowded segment decoded again in halves (see pipe.CROWDED)
)


def new_counter() -> "Counter[str]":
    return Counter({name: 0 for name in FALLBACKS})


@dataclass
class Mention:
    """One generated mention: the n-th mention of `label` in one text."""

    label: str
    n: int
    text: str
    score: float


@dataclass
class TextPrediction:
    """What decoding produced for one text (a segment of a doc)."""

    counts: Dict[str, int] = field(default_factory=dict)
    # each count's probability (of its tokens and the newline that ends it)
    count_scores: Dict[str, float] = field(default_factory=dict)
    mentions: List[Mention] = field(default_factory=list)
    fallbacks: "Counter[str]" = field(default_factory=Counter)
    generated_tokens: int = 0
    decoding_steps: int = 0


@dataclass
class CharSpan:
    """A mention placed in the text by character offsets."""

    start: int
    end: int
    label: str
    score: float


@dataclass
class DocPrediction:
    """Character spans for one doc, with the fallbacks that produced them."""

    spans: List[CharSpan] = field(default_factory=list)
    fallbacks: "Counter[str]" = field(default_factory=Counter)
    segments: int = 0
    generated_tokens: int = 0
    decoding_steps: int = 0

    def add(self, other: "DocPrediction") -> None:
        """Another prediction's spans, fallbacks and statistics (a segment's,
        into its doc's); `segments` is the doc's own count and is kept."""
        self.spans.extend(other.spans)
        self.fallbacks.update(other.fallbacks)
        self.generated_tokens += other.generated_tokens
        self.decoding_steps += other.decoding_steps
