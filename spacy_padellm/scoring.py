"""Span-level scores for `doc.ents` and for the component's span group."""
from typing import Any, Callable, Dict, Iterable, List, Set, Tuple

from spacy.scorer import Scorer, get_ner_prf
from spacy.tokens import Span
from spacy.training import Example


def padellm_ner_score(examples: Iterable[Example], *, spans_key: str, **kwargs: Any) -> Dict[str, Any]:
    """`ents_p/r/f` (flat, as spaCy's `ner` reports them),
    `spans_{spans_key}_p/r/f` (the span group, overlaps allowed) and, where
    the gold spans nest, `spans_{spans_key}_nested_r/_n`: the recall over the
    gold spans that contain or lie inside another one, which the flat scores
    cannot show."""
    examples = list(examples)
    scores: Dict[str, Any] = dict(get_ner_prf(examples))
    scores.update(
        Scorer.score_spans(
            examples,
            attr=f"spans_{spans_key}",
            getter=lambda doc, attr: doc.spans.get(spans_key, []),
            has_annotation=lambda doc: spans_key in doc.spans,
            allow_overlap=True,
            **kwargs,
        )
    )
    found, total = nested_recall(examples, spans_key)
    if total:
        scores[f"spans_{spans_key}_nested_r"] = found / total
        scores[f"spans_{spans_key}_nested_n"] = total
    return scores


def nested_spans(spans: Iterable[Span]) -> List[Span]:
    """The spans that contain, or lie inside, another span of a different
    extent (the same extent under two labels is not nesting)."""
    spans = list(spans)
    return [
        span
        for span in spans
        if any(
            (other.start, other.end) != (span.start, span.end)
            and (other.start <= span.start and span.end <= other.end or span.start <= other.start and other.end <= span.end)
            for other in spans
        )
    ]


def nested_recall(examples: Iterable[Example], spans_key: str) -> Tuple[int, int]:
    """How many gold nested spans were predicted with their label, of how
    many. Compared by character offsets, so the two docs' tokens may differ."""
    found = total = 0
    for eg in examples:
        if spans_key not in eg.reference.spans:
            continue
        predicted: Set[Tuple[int, int, str]] = {
            (span.start_char, span.end_char, span.label_) for span in eg.predicted.spans.get(spans_key, [])
        }
        for span in nested_spans(eg.reference.spans[spans_key]):
            total += 1
            found += (span.start_char, span.end_char, span.label_) in predicted
    return found, total


def make_padellm_ner_scorer() -> Callable[..., Dict[str, Any]]:
    return padellm_ner_score
