"""Cutting a doc into segments of whole sentences that the model can decode.

The model was fine-tuned on single sentences; on a long text it predicts a
few mentions per label and stops (a 2,000-word article: 9 of 108 entities).
So a doc is decoded in segments shaped like the training texts: whole
sentences, packed up to a token budget (the median training text). A
sentence longer than the budget but no longer than nearly all training
texts (the 99th percentile) is a segment of its own: the model has seen
such sentences, and cutting one would lose entities. Only a longer
sentence is cut, at token boundaries, into overlapping pieces about as long
as most training texts; each piece keeps only the spans that start in its
own part of the overlap, so an entity at a cut is found whole by one piece
and never twice.

The sentences come from `doc.sents` when a sentencizer, senter or parser set
them. Else, for English, from a small `senter` shipped in the package
(`default_model/senter`, 3 MB, trained by `corpus/sentence_docs.py` and
`configs/senter_cpu.cfg` on CoNLL-03 train): spaCy's punctuation rules miss
headlines, datelines and table rows, and a merged text loses entities
(splitting one costs almost nothing). For other languages, or with
`sentence_split = "rules"`, from spaCy's `Sentencizer` rules plus line
breaks. No model is downloaded, and the doc itself is left unchanged.
"""
import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy
from spacy.pipeline import Sentencizer
from spacy.tokens import Doc

# Counts the model tokens of each string of a list (one batched tokenizer call).
CountTokens = Callable[[Sequence[str]], List[int]]

_SENTENCIZER = Sentencizer()
# A line of at most this many tokens (with its line break) that ends
# without punctuation still ends a sentence: headlines, datelines, bylines.
SHORT_LINE = 10
# The segment budget is this percentile of the training texts' lengths in
# model tokens (chosen on CoNLL-03 dev sentences 0-499; see the README).
SEGMENT_PERCENTILE = 50
# A sentence that must be cut is cut into pieces of this percentile of the
# training texts' lengths (or of the budget, when that is larger): pieces
# about as long as most training texts.
PIECE_PERCENTILE = 90
# A sentence up to this percentile of the training lengths is decoded
# whole; beyond it (a run-on of table rows or headlines the rules did not
# split) it is cut into pieces. Not the maximum: one outlier sets that.
LONGEST_PERCENTILE = 99
# The lengths of the shipped default model's training texts (CoNLL-03 train).
TRAINING_TEXTS = Path(__file__).parent / "default_model" / "training_texts.json"
# The shipped sentence splitter: a spaCy pipeline of one `senter`, and the
# language it was trained for.
SENTENCE_MODEL = Path(__file__).parent / "default_model" / "senter"
SENTENCE_MODEL_LANG = "en"
# How a doc without `doc.sents` is split: the shipped senter where the doc's
# language is its own (else the rules), or always the rules.
SENTENCE_SPLITS = ("auto", "rules")
_SENTENCE_MODEL_LOCK = threading.Lock()
SENTER_CHUNK = 4096
SENTER_MARGIN = 16
# A token starts a sentence where the senter gives it at least this
# probability (0.5: the argmax). Lower ones find few more starts on CoNLL-03
# dev 0-499, where the senter misses table rows with confidence
# (`benchmarks/senter_threshold.py`).
SENTER_THRESHOLD = 0.5


@dataclass(frozen=True)
class TrainedLengths:
    """What the segments are sized by, from the training texts' lengths in
    model tokens: the packing budget, the size of the pieces a sentence
    too long to decode whole is cut into, and the longest sentence decoded
    whole (the 99th percentile)."""

    budget: int
    piece: int
    longest: int

    @classmethod
    def from_lengths(cls, lengths: Sequence[int]) -> "TrainedLengths":
        values = numpy.asarray(lengths)
        budget, piece, longest = (
            # "higher": a length some training text has (with few texts the
            # 99th percentile is the longest one, never cut)
            max(1, int(numpy.percentile(values, p, method="higher")))
            for p in (SEGMENT_PERCENTILE, PIECE_PERCENTILE, LONGEST_PERCENTILE)
        )
        return cls(budget, piece, longest)

    def to_list(self) -> List[int]:
        return [self.budget, self.piece, self.longest]


@lru_cache(maxsize=None)
def default_lengths() -> TrainedLengths:
    """The shipped model's `TrainedLengths` (CoNLL-03 train), for pipelines
    that were not initialized with examples."""
    stats = json.loads(TRAINING_TEXTS.read_text(encoding="utf8"))
    return TrainedLengths(*stats["segments"])


@dataclass(frozen=True)
class Segment:
    """Characters [start, end) of a doc, decoded as one text.

    Spans found in it are kept when they start in [keep_start, keep_end):
    the whole segment, except for the overlapping pieces of a cut sentence.
    """

    start: int
    end: int
    keep_start: int
    keep_end: int

    def keeps(self, span_start: int) -> bool:
        return self.keep_start <= span_start < self.keep_end


def sentences(doc: Doc, split: str = "auto") -> List[Tuple[int, int]]:
    """Token ranges of the doc's sentences: its own, else the shipped
    senter's (`split = "auto"` and an English doc), else the rule-based ones
    (sentence-final punctuation, blank lines, and line breaks after short
    lines: headlines and datelines end without a full stop)."""
    if doc.has_annotation("SENT_START"):
        return [(s.start, s.end) for s in doc.sents]
    model = sentence_model() if split == "auto" and doc.lang_ == SENTENCE_MODEL_LANG else None
    if model is not None:
        starts = [0] + [i for i in model(doc) if i > 0 and not doc[i].is_space]
        return list(zip(starts, starts[1:] + [len(doc)]))
    return _rule_sentences(doc)


def sentence_model() -> Optional[Callable[..., List[int]]]:
    """The shipped senter as a function from a doc to the indices of the
    tokens that start a sentence (the doc is not changed; `threshold`, the
    least probability of a start, defaults to SENTER_THRESHOLD); None when
    the package was installed without it."""
    with _SENTENCE_MODEL_LOCK:  # threads on a cold start load it once
        return _load_sentence_model(SENTENCE_MODEL)


@lru_cache(maxsize=None)
def _load_sentence_model(path: Path) -> Optional[Callable[..., List[int]]]:
    if not (path / "config.cfg").exists():
        return None
    import spacy

    senter = spacy.load(path).get_pipe("senter")
    start = list(senter.labels).index("S")

    def starts(doc: Doc, threshold: Optional[float] = None) -> List[int]:
        least = SENTER_THRESHOLD if threshold is None else threshold
        # In chunks, so that a 200,000-word doc needs no more memory than a
        # short one; each chunk has SENTER_MARGIN tokens of context on each
        # side (more than the CNN's receptive field of 4 tokens).
        found: List[int] = []
        for first in range(0, len(doc), SENTER_CHUNK):
            lo, hi = max(0, first - SENTER_MARGIN), min(len(doc), first + SENTER_CHUNK + SENTER_MARGIN)
            chunk = doc if (lo, hi) == (0, len(doc)) else doc[lo:hi].as_doc()
            logits = senter.model.ops.to_numpy(senter.model.predict([chunk])[0])
            # the senter's model ends in logits: its probability of a start
            shifted = numpy.exp(logits - logits.max(axis=1, keepdims=True))
            p_start = shifted[:, start] / shifted.sum(axis=1)
            found.extend(
                lo + int(i) for i in numpy.flatnonzero(p_start >= least)
                if first <= lo + i < first + SENTER_CHUNK
            )
        return found

    return starts


def _rule_sentences(doc: Doc) -> List[Tuple[int, int]]:
    guesses = _SENTENCIZER.predict([doc])[0]
    starts: List[int] = []
    line_start, line_length = 0, 0  # of the line that the last break ended
    for i, token in enumerate(doc):
        if i == 0 or guesses[i]:
            starts.append(i)
        elif _line_break(doc[i - 1]) and not token.is_space:
            # A blank line, or a line break after a short line (a headline,
            # dateline or byline), ends a sentence; a hard wrap inside a
            # paragraph does not.
            if doc[i - 1].text.count("\n") > 1 or line_length <= SHORT_LINE:
                starts.append(i)
        if _line_break(token):
            line_start, line_length = i + 1, i - line_start
    return list(zip(starts, starts[1:] + [len(doc)]))


def _line_break(token: Any) -> bool:
    return token.is_space and "\n" in token.text


def _chars(doc: Doc, start: int, end: int) -> Tuple[int, int]:
    """Characters of tokens [start, end), without trailing whitespace."""
    last = doc[end - 1]
    return doc[start].idx, last.idx + len(last.text)


def split_segments(
    doc: Doc,
    count_tokens: CountTokens,
    budget: int,
    sentence_limit: int = 0,
    piece: int = 0,
    split: str = "auto",
) -> List[Segment]:
    """Segments covering every token of `doc` (tokens that are only
    whitespace need not be covered): whole sentences (see `sentences` for
    `split`) packed up to `budget` model tokens, a sentence of up to
    `sentence_limit` tokens on its own, longer ones in overlapping pieces
    of `piece` tokens (at least `budget`)."""
    sentence_limit = max(budget, sentence_limit)
    piece = min(max(budget, piece), sentence_limit)
    text = doc.text
    if not text.strip():
        return []
    if count_tokens([text])[0] <= budget:
        return [Segment(0, len(text), 0, len(text))]
    sents, ranges = [], []
    for s, e in sentences(doc, split):
        a, b = _chars(doc, s, e)
        if text[a:b].strip():
            sents.append((s, e))
            ranges.append((a, b))
    sizes = count_tokens([text[a:b] for a, b in ranges])
    segments: List[Segment] = []
    group: List[int] = []  # indices of the sentences packed so far
    used = 0

    def flush() -> None:
        nonlocal group, used
        if group:
            segments.extend(_pack(text, [ranges[i] for i in group], count_tokens, budget))
        group, used = [], 0

    for i, size in enumerate(sizes):
        if size > sentence_limit:
            flush()
            segments.extend(_split_sentence(doc, text, *sents[i], count_tokens, piece))
            continue
        if size > budget:
            flush()
            segments.append(Segment(*ranges[i], *ranges[i]))
            continue
        if group and used + size > budget:
            flush()
        group.append(i)
        used += size
    flush()
    return segments


def _pack(text: str, ranges: List[Tuple[int, int]], count_tokens: CountTokens, budget: int) -> List[Segment]:
    """Whole sentences that fit the budget one by one, as one segment if
    their joined text fits too (joining can merge tokens across a space,
    so the sum of their sizes is an estimate), else halved by sentences."""
    start, end = ranges[0][0], ranges[-1][1]
    if len(ranges) == 1 or count_tokens([text[start:end]])[0] <= budget:
        return [Segment(start, end, start, end)]
    mid = len(ranges) // 2
    return _pack(text, ranges[:mid], count_tokens, budget) + _pack(text, ranges[mid:], count_tokens, budget)


def _split_sentence(doc: Doc, text: str, start: int, end: int, count_tokens: CountTokens, budget: int) -> List[Segment]:
    """A sentence longer than the budget, in pieces of whole tokens that
    overlap by about a quarter of the budget. The boundary between two
    pieces' kept parts lies in the middle of their overlap, so a span of
    up to an eighth of the budget that starts near a cut is whole in the
    piece that keeps it."""
    tokens = [t for t in doc[start:end] if not t.is_space]
    # Byte-level tokenizers fold a space into the word after it: count each
    # token with the space before it, as it reads inside the piece.
    sizes = count_tokens([(" " if k and tokens[k - 1].whitespace_ else "") + t.text for k, t in enumerate(tokens)])
    overlap = max(1, budget // 4)
    pieces: List[Tuple[int, int]] = []  # token index ranges into `tokens`
    first = 0
    while first < len(tokens):
        if sizes[first] > budget:
            pieces.append((first, first + 1))
            first += 1
            continue
        last, used = first, 0
        while last < len(tokens) and used + sizes[last] <= budget:
            used += sizes[last]
            last += 1
        pieces.append((first, last))
        if last == len(tokens):
            break
        back, carried = last, 0  # start the next piece `overlap` tokens back
        while back - 1 > first and carried + sizes[back - 1] <= overlap:
            back -= 1
            carried += sizes[back]
        # No overlap before a token that could not share a piece with it.
        first = back if carried + sizes[last] <= budget else last
    return _pieces_to_segments(text, tokens, pieces, count_tokens, budget)


def _pieces_to_segments(
    text: str, tokens: list, pieces: List[Tuple[int, int]], count_tokens: CountTokens, budget: int
) -> List[Segment]:
    segments: List[Segment] = []
    bounds = []  # the kept part of each piece starts at its bound
    for k, (first, last) in enumerate(pieces):
        if k == 0:
            bounds.append(tokens[first].idx)
        else:
            prev_last = pieces[k - 1][1]
            middle = (first + prev_last) // 2 if prev_last > first else first
            bounds.append(tokens[middle].idx)
    ends = bounds[1:] + [len(text) + 1]
    for (first, last), keep_start, keep_end in zip(pieces, bounds, ends):
        start = tokens[first].idx
        end = tokens[last - 1].idx + len(tokens[last - 1].text)
        if last - first == 1 and count_tokens([text[start:end]])[0] > budget:
            segments.extend(_split_chars(text, start, end, count_tokens, budget, keep_start, keep_end))
        else:
            segments.append(Segment(start, end, keep_start, keep_end))
    return segments


def _split_chars(
    text: str, start: int, end: int, count_tokens: CountTokens, budget: int, keep_start: int, keep_end: int
) -> List[Segment]:
    """A single token longer than the budget (a URL, a 10,000-character
    string), cut into pieces of characters that fit it: the longest step
    whose first piece fits, from four characters per token down (a
    character is at most four byte-level tokens), each piece checked."""
    step = max(1, budget * 4)
    while step > max(1, budget // 4) and count_tokens([text[start : start + step]])[0] > budget:
        step //= 2
    bounds: List[Tuple[int, int]] = []
    s = start
    while s < end:
        e = min(s + step, end)
        while e - s > 1 and count_tokens([text[s:e]])[0] > budget:
            e = s + (e - s) // 2
        bounds.append((s, e))
        s = e
    return [
        Segment(s, e, keep_start if s == start else s, keep_end if e == end else e) for s, e in bounds
    ]
