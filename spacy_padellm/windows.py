"""Splitting texts that are too long for the model's context into windows.

A window is a character range of the doc made of whole sentences (when the
doc has sentence boundaries) or whole tokens, short enough in model tokens.
Entities that cross a window boundary cannot be found; the fallback is counted.
"""
from typing import Callable, List, Tuple

from spacy.tokens import Doc


def _units(doc: Doc) -> List[Tuple[int, int]]:
    if doc.has_annotation("SENT_START"):
        return [(s.start_char, s.end_char) for s in doc.sents]
    return [(t.idx, t.idx + len(t.text)) for t in doc]


def split_windows(doc: Doc, count_tokens: Callable[[str], int], budget: int) -> List[Tuple[int, int]]:
    """Character ranges covering the doc's text, each at most `budget` tokens.

    count_tokens: model tokens of a string.
    """
    text = doc.text
    if count_tokens(text) <= budget:
        return [(0, len(text))]
    windows: List[Tuple[int, int]] = []
    start, used, prev_end = None, 0, 0
    for unit_start, unit_end in _units(doc):
        size = count_tokens(text[unit_start:unit_end])
        if size > budget:
            if start is not None:
                windows.append((start, prev_end))
                start, used = None, 0
            windows.extend(_split_unit(doc, unit_start, unit_end, count_tokens, budget))
            continue
        if start is not None and used + size > budget:
            windows.append((start, prev_end))
            start, used = None, 0
        if start is None:
            start = unit_start
        used += size
        prev_end = unit_end
    if start is not None:
        windows.append((start, prev_end))
    return _enforce(text, windows, count_tokens, budget)


def _split_unit(doc: Doc, start: int, end: int, count_tokens: Callable[[str], int], budget: int) -> List[Tuple[int, int]]:
    """A sentence longer than the budget, split at token boundaries."""
    tokens = [(t.idx, t.idx + len(t.text)) for t in doc.char_span(start, end, alignment_mode="expand") or []]
    if len(tokens) <= 1:
        return _split_chars(start, end, budget)
    mid = len(tokens) // 2
    left, right = (tokens[0][0], tokens[mid - 1][1]), (tokens[mid][0], tokens[-1][1])
    out = []
    for s, e in (left, right):
        if count_tokens(doc.text[s:e]) <= budget:
            out.append((s, e))
        else:
            out.extend(_split_unit(doc, s, e, count_tokens, budget))
    return out


def _split_chars(start: int, end: int, budget: int) -> List[Tuple[int, int]]:
    """A single token longer than the budget, cut into pieces of `budget // 4`
    characters (a character is at most four byte-level tokens)."""
    step = max(1, budget // 4)
    return [(s, min(s + step, end)) for s in range(start, end, step)]


def _enforce(text: str, windows: List[Tuple[int, int]], count_tokens: Callable[[str], int], budget: int) -> List[Tuple[int, int]]:
    """Token counts of joined units can exceed their sum; halve any window
    that does, by characters at a whitespace where possible."""
    out: List[Tuple[int, int]] = []
    for s, e in windows:
        if e - s <= 1 or count_tokens(text[s:e]) <= budget:
            out.append((s, e))
            continue
        mid = text.rfind(" ", s + 1, (s + e) // 2 + 1)
        mid = mid if mid > s else (s + e) // 2
        out.extend(_enforce(text, [(s, mid), (mid, e)], count_tokens, budget))
    return out
