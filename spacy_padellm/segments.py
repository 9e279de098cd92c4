"""Cutting a doc into segments of whole sentences that the model can decode.

The model was fine-tuned on single sentences; on a long text it predicts a
few mentions per label and stops (a 2,000-word article: 9 of 108 entities).
So a doc is decoded in segments shaped like the training texts: whole
sentences, packed only while they stay as short as the short training
texts (the 15th percentile): every training text was one line, and two
lines packed together read like none of them. A
sentence longer than the budget but no longer than nearly all training
texts (the 99th percentile) is a segment of its own: the model has seen
such sentences, and cutting one would lose entities. Only a longer
sentence (a run-on: a results table, an itinerary) is cut into parts about
as long as most training texts: before the tokens the senter finds likeliest
to start a sentence where it sees any, else at token boundaries into
overlapping pieces; each piece keeps only the spans that start in its own
part of the overlap, so an entity at a cut is found whole by one piece and
never twice.

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
# model tokens. Chosen on CoNLL-03 dev sentences 0-499, docs without
# sentences split by the senter: 93.04 span F1 at the 15th percentile (10
# tokens), 91.75 at the median (20), 92.99 with no packing at all; packing
# two short lines (a byline and a dateline, two results rows) into one
# text loses their entities, since every training text was one line.
SEGMENT_PERCENTILE = 15
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
# A run-on that must be cut is cut before the token the senter finds
# likeliest to start a sentence, when that probability reaches this. On
# CoNLL-03 dev 0-499 joined by spaces, 87% of the true starts reach it and
# 0.2% of the tokens inside entities (at 0.01: 91% and 3.6%; a cut inside
# an entity loses it, as no overlap follows a cut at a likely start).
LIKELY_START = 0.1


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
    return _sentences_and_starts(doc, split)[0]


def _sentences_and_starts(doc: Doc, split: str) -> Tuple[List[Tuple[int, int]], Callable[[int, int], Optional[numpy.ndarray]]]:
    """`sentences`, and a function from a token range to each of its
    tokens' probability of starting a sentence (None where the senter does
    not apply: rules, or another language), computed once for the doc when
    the senter split it, else on demand for the range alone."""
    use_model = split == "auto" and doc.lang_ == SENTENCE_MODEL_LANG
    if doc.has_annotation("SENT_START"):

        def on_demand(start: int, end: int) -> Optional[numpy.ndarray]:
            model = sentence_model() if use_model else None
            return None if model is None else model.range_probabilities(doc, start, end)

        return [(s.start, s.end) for s in doc.sents], on_demand
    model = sentence_model() if use_model else None
    if model is None:
        return _rule_sentences(doc), lambda start, end: None
    probabilities = model.probabilities(doc)
    starts = [0] + [int(i) for i in numpy.flatnonzero(probabilities >= SENTER_THRESHOLD) if i > 0 and not doc[int(i)].is_space]
    return list(zip(starts, starts[1:] + [len(doc)])), lambda start, end: probabilities[start:end]


def sentence_model() -> Optional["SentenceModel"]:
    """The shipped senter (`SentenceModel`); None when the package was
    installed without it."""
    with _SENTENCE_MODEL_LOCK:  # threads on a cold start load it once
        return _load_sentence_model(SENTENCE_MODEL)


@lru_cache(maxsize=None)
def _load_sentence_model(path: Path) -> Optional["SentenceModel"]:
    if not (path / "config.cfg").exists():
        return None
    import spacy

    return SentenceModel(spacy.load(path).get_pipe("senter"))


class SentenceModel:
    """A `senter` as a function from a doc to the indices of the tokens that
    start a sentence (the doc is not changed), and to every token's
    probability of starting one, which says where a run-on that must be cut
    most likely holds a sentence boundary."""

    def __init__(self, senter: Any) -> None:
        self.senter = senter
        self.start = list(senter.labels).index("S")

    def __call__(self, doc: Doc, threshold: Optional[float] = None) -> List[int]:
        """Tokens whose probability of a start is at least `threshold`
        (default SENTER_THRESHOLD)."""
        least = SENTER_THRESHOLD if threshold is None else threshold
        return [int(i) for i in numpy.flatnonzero(self.probabilities(doc) >= least)]

    def probabilities(self, doc: Doc) -> numpy.ndarray:
        """Each token's probability of starting a sentence. In chunks, so
        that a 200,000-word doc needs no more memory than a short one; each
        chunk has SENTER_MARGIN tokens of context on each side (more than
        the CNN's receptive field of 4 tokens)."""
        found = numpy.zeros(len(doc), dtype="float32")
        for first in range(0, len(doc), SENTER_CHUNK):
            lo, hi = max(0, first - SENTER_MARGIN), min(len(doc), first + SENTER_CHUNK + SENTER_MARGIN)
            chunk = doc if (lo, hi) == (0, len(doc)) else doc[lo:hi].as_doc()
            logits = self.senter.model.ops.to_numpy(self.senter.model.predict([chunk])[0])
            # the senter's model ends in logits: its probability of a start
            shifted = numpy.exp(logits - logits.max(axis=1, keepdims=True))
            p_start = shifted[:, self.start] / shifted.sum(axis=1)
            last = min(len(doc), first + SENTER_CHUNK)
            found[first:last] = p_start[first - lo : last - lo]
        return found

    def range_probabilities(self, doc: Doc, start: int, end: int) -> numpy.ndarray:
        """`probabilities` of tokens [start, end), read with SENTER_MARGIN
        tokens of context on each side."""
        lo, hi = max(0, start - SENTER_MARGIN), min(len(doc), end + SENTER_MARGIN)
        return self.probabilities(doc[lo:hi].as_doc())[start - lo : end - lo]


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
    `sentence_limit` tokens on its own, longer ones cut into parts of up to
    `piece` tokens (at least `budget`) where the senter sees the likeliest
    sentence starts, else into overlapping pieces."""
    sentence_limit = max(budget, sentence_limit)
    piece = min(max(budget, piece), sentence_limit)
    text = doc.text
    if not text.strip():
        return []
    if count_tokens([text])[0] <= budget:
        return [Segment(0, len(text), 0, len(text))]
    sents, ranges = [], []
    found, start_probabilities = _sentences_and_starts(doc, split)
    for s, e in found:
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
            segments.extend(_split_sentence(doc, text, *sents[i], count_tokens, piece, start_probabilities(*sents[i])))
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


def _split_sentence(
    doc: Doc,
    text: str,
    start: int,
    end: int,
    count_tokens: CountTokens,
    budget: int,
    start_probabilities: Optional[numpy.ndarray] = None,
) -> List[Segment]:
    """A sentence longer than the budget, in parts of whole tokens.

    Where the senter's probabilities of a sentence start are given (a
    run-on it did not split: a results table, an itinerary, a list of
    names), each part ends before the likeliest start within the budget,
    so the parts read like the lines they were. Stretches with no likely
    start are cut into pieces that overlap by about a quarter of the
    budget; the boundary between two pieces' kept parts lies in the middle
    of their overlap, so a span of up to an eighth of the budget that
    starts near a cut is whole in the piece that keeps it."""
    tokens = [t for t in doc[start:end] if not t.is_space]
    # Byte-level tokenizers fold a space into the word after it: count each
    # token with the space before it, as it reads inside the piece.
    sizes = count_tokens([(" " if k and tokens[k - 1].whitespace_ else "") + t.text for k, t in enumerate(tokens)])
    if start_probabilities is None:
        parts = [(0, len(tokens), False)]
    else:
        parts = _likely_parts(sizes, [float(start_probabilities[t.i - start]) for t in tokens], budget)
    segments: List[Segment] = []
    for first, last, whole in parts:
        if whole:
            a, b = tokens[first].idx, tokens[last - 1].idx + len(tokens[last - 1].text)
            segments.append(Segment(a, b, a, b))
        else:
            pieces = [(first + x, first + y) for x, y in _overlapping_pieces(sizes[first:last], budget)]
            segments.extend(_pieces_to_segments(text, tokens, pieces, count_tokens, budget))
    return segments


def _likely_parts(sizes: List[int], p_start: List[float], budget: int) -> List[Tuple[int, int, bool]]:
    """(first, last, whole) token ranges that cover the tokens in order.
    A whole part fits the budget and ends before the likeliest sentence
    start (probability at least LIKELY_START, at least a quarter of the
    budget in) of the stretch that fits; a part that is not whole has no
    such start and is left for the overlapping cut."""
    least = max(1, budget // 4)
    parts: List[Tuple[int, int, bool]] = []
    first, n = 0, len(sizes)
    while first < n:
        used, last, best = 0, first, -1
        while last < n and used + sizes[last] <= budget:
            used += sizes[last]
            last += 1
            if last < n and used >= least and p_start[last] >= LIKELY_START and (best < 0 or p_start[last] > p_start[best]):
                best = last
        if last == n and last > first:
            parts.append((first, n, True))
            break
        if best >= 0:
            parts.append((first, best, True))
            first = best
            continue
        # No likely start within reach: up to the next one, cut with overlaps.
        stop = max(last, first + 1)
        while stop < n and p_start[stop] < LIKELY_START:
            stop += 1
        parts.append((first, stop, False))
        first = stop
    return parts


def _overlapping_pieces(sizes: List[int], budget: int) -> List[Tuple[int, int]]:
    """Token index ranges of pieces of up to `budget` tokens (a longer token
    alone) that overlap by about a quarter of the budget."""
    overlap = max(1, budget // 4)
    pieces: List[Tuple[int, int]] = []
    first = 0
    while first < len(sizes):
        if sizes[first] > budget:
            pieces.append((first, first + 1))
            first += 1
            continue
        last, used = first, 0
        while last < len(sizes) and used + sizes[last] <= budget:
            used += sizes[last]
            last += 1
        pieces.append((first, last))
        if last == len(sizes):
            break
        back, carried = last, 0  # start the next piece `overlap` tokens back
        while back - 1 > first and carried + sizes[back - 1] <= overlap:
            back -= 1
            carried += sizes[back]
        # No overlap before a token that could not share a piece with it.
        first = back if carried + sizes[last] <= budget else last
    return pieces


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


def halves(
    doc: Doc, segment: Segment, found: Sequence[Tuple[int, int]], split: str = "auto"
) -> Optional[Tuple[Segment, Segment]]:
    """A segment cut in two near its middle, for decoding again when it was
    too crowded for the model (it repeated or invented mentions, or a count
    reached its bound: a list of names or a results table that the
    sentence split left whole). The cut lies between whole tokens in the
    middle half of the segment, never inside a span already `found`
    (character ranges), and where it can, after punctuation or before a
    token that the senter finds a likely sentence start; among those, the
    one nearest the middle. None when there is no such place."""
    span = doc.char_span(segment.start, segment.end, alignment_mode="expand")  # found by bisection, not a scan
    tokens = [t for t in span or () if segment.start <= t.idx < segment.end and not t.is_space]
    n = len(tokens)
    if n < 2:
        return None
    probabilities = None
    if split == "auto" and doc.lang_ == SENTENCE_MODEL_LANG:
        model = sentence_model()
        if model is not None:
            probabilities = model.range_probabilities(doc, tokens[0].i, tokens[-1].i + 1)
    candidates = [k for k in range(max(1, n // 4), min(n - 1, (3 * n) // 4) + 1)
                  if not any(a < tokens[k].idx < b for a, b in found)]
    if not candidates:
        return None

    def likely(k: int) -> bool:
        after_punct = tokens[k - 1].is_punct and not tokens[k - 1].is_left_punct
        return after_punct or (probabilities is not None and probabilities[tokens[k].i - tokens[0].i] >= LIKELY_START)

    preferred = [k for k in candidates if likely(k)] or candidates
    k = min(preferred, key=lambda c: abs(2 * c - n))
    left_end = tokens[k - 1].idx + len(tokens[k - 1].text)
    cut = tokens[k].idx
    return (
        Segment(segment.start, left_end, segment.keep_start, min(segment.keep_end, cut)),
        Segment(cut, segment.end, max(segment.keep_start, cut), segment.keep_end),
    )
