"""Duplicate resolution and the flat selection for `doc.ents`.

Two rules, kept apart on purpose: a span predicted under several labels keeps
its most probable label (the paper's rule, applied to spans, never to
overlapping spans of a different extent, so nested entities survive in the
span group); `doc.ents` then takes a non-overlapping selection, most probable
first, longer first on ties.
"""
from typing import Dict, List, Sequence, Tuple

from spacy.tokens import Span


def resolve_label_conflicts(
    spans: Sequence[Span], scores: Sequence[float]
) -> Tuple[List[Span], List[float], int]:
    """Keep one label per (start, end): the most probable one.

    Ties go to the alphabetically first label, so the order of the configured
    labels never changes the result.
    RETURNS (Tuple[List[Span], List[float], int]): spans sorted by position,
        their scores, and how many conflicting predictions were dropped.
    """
    best: Dict[Tuple[int, int], Tuple[float, str, Span]] = {}
    dropped = 0
    for span, score in zip(spans, scores):
        key = (span.start, span.end)
        if key in best:
            dropped += 1
            kept_score, kept_label, _ = best[key]
            better = score > kept_score or (score == kept_score and span.label_ < kept_label)
            if not better:
                continue
        best[key] = (score, span.label_, span)
    ordered = sorted(best.items(), key=lambda item: (item[0], item[1][1]))
    return [v[2] for _, v in ordered], [v[0] for _, v in ordered], dropped


def select_flat(spans: Sequence[Span], scores: Sequence[float]) -> List[Span]:
    """A non-overlapping subset: most probable first, then longest, then earliest."""
    order = sorted(
        range(len(spans)),
        key=lambda i: (-scores[i], -(spans[i].end - spans[i].start), spans[i].start),
    )
    taken = set()
    selected = []
    for i in order:
        tokens = set(range(spans[i].start, spans[i].end))
        if tokens & taken:
            continue
        taken |= tokens
        selected.append(spans[i])
    return sorted(selected, key=lambda s: s.start)


def merge_with_existing(
    new: Sequence[Span], existing: Sequence[Span], overwrite: bool
) -> List[Span]:
    """Combine with entities set earlier in the pipeline, as spaCy's
    `entity_ruler` does: existing entities win unless `overwrite` is set, in
    which case the overlapping existing ones are removed."""
    first, second = (list(new), list(existing)) if overwrite else (list(existing), list(new))
    taken = set()
    for span in first:
        taken.update(range(span.start, span.end))
    merged = list(first)
    for span in second:
        if not taken.intersection(range(span.start, span.end)):
            merged.append(span)
            taken.update(range(span.start, span.end))
    return sorted(merged, key=lambda s: s.start)
