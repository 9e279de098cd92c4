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
