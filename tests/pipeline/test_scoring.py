"""Span-level scores for doc.ents and the span group via nlp.evaluate."""
import pytest
from spacy.training import Example

from ..conftest import ScriptedDecoding


def test_evaluate_reports_ents_and_span_group(scripted_nlp):
    nlp = scripted_nlp
    text = "The Bank of China lends in Paris ."
    nlp.get_pipe("padellm_ner").add_label("ORG")
    nlp.get_pipe("padellm_ner")._decoder = ScriptedDecoding(
        {text: [("ORG", 1, "Bank of China", 0.6), ("LOC", 1, "China", 0.9), ("LOC", 2, "Rome", 0.9)]}
    )
    reference = nlp.make_doc(text)
    reference.spans["padellm"] = [reference.char_span(4, 17, label="ORG"), reference.char_span(12, 17, label="LOC")]
    reference.ents = [reference.char_span(4, 17, label="ORG"), reference.char_span(27, 32, label="LOC")]
    scores = nlp.evaluate([Example(nlp.make_doc(text), reference)])
    # Span group: both nested spans right (Rome is hallucinated and dropped).
    assert scores["spans_padellm_f"] == pytest.approx(1.0)
    # Flat: China (more probable) was chosen over Bank of China; Paris missed.
    assert scores["ents_p"] == pytest.approx(0.0)
    assert scores["ents_r"] == pytest.approx(0.0)
    assert set(scores["ents_per_type"]) == {"ORG", "LOC"}


def test_nested_recall_counts_gold_spans_inside_or_around_others(scripted_nlp):
    nlp = scripted_nlp
    text = "Drosophila homeodomain binds IL-2 gene promoter ."
    pipe = nlp.get_pipe("padellm_ner")
    for label in ("DNA", "protein"):
        pipe.add_label(label)
    # predicted: the outer DNA span and the inner protein; the inner "homeodomain" DNA span is missed
    pipe._decoder = ScriptedDecoding(
        {text: [("DNA", 1, "Drosophila homeodomain", 0.9), ("protein", 1, "IL-2", 0.8), ("DNA", 2, "IL-2 gene promoter", 0.7)]}
    )
    reference = nlp.make_doc(text)
    gold = [(0, 22, "DNA"), (11, 22, "DNA"), (29, 33, "protein"), (29, 47, "DNA"), (29, 38, "DNA")]
    reference.spans["padellm"] = [reference.char_span(s, e, label=l) for s, e, l in gold]
    scores = nlp.evaluate([Example(nlp.make_doc(text), reference)])
    # every gold span here nests in or around another one; 3 of 5 were predicted
    assert scores["spans_padellm_nested_n"] == 5
    assert scores["spans_padellm_nested_r"] == pytest.approx(3 / 5)
    assert scores["spans_padellm_r"] == pytest.approx(3 / 5)


def test_no_nested_keys_for_flat_gold(scripted_nlp):
    nlp = scripted_nlp
    text = "Peter lives in Paris ."
    nlp.get_pipe("padellm_ner")._decoder = ScriptedDecoding({text: [("PER", 1, "Peter", 0.9)]})
    reference = nlp.make_doc(text)
    reference.spans["padellm"] = [reference.char_span(0, 5, label="PER"), reference.char_span(15, 20, label="LOC")]
    scores = nlp.evaluate([Example(nlp.make_doc(text), reference)])
    assert "spans_padellm_nested_r" not in scores and scores["spans_padellm_r"] == pytest.approx(0.5)
