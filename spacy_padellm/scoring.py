"""Span-level scores for `doc.ents` and for the component's span group."""
from typing import Any, Callable, Dict, Iterable

from spacy.scorer import Scorer, get_ner_prf
from spacy.training import Example


def padellm_ner_score(examples: Iterable[Example], *, spans_key: str, **kwargs: Any) -> Dict[str, Any]:
    """`ents_p/r/f` (flat, as spaCy's `ner` reports them) and
    `spans_{spans_key}_p/r/f` (the span group, overlaps allowed)."""
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
    return scores


def make_padellm_ner_scorer() -> Callable[..., Dict[str, Any]]:
    return padellm_ner_score
