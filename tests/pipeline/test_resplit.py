"""Crowded segments are decoded again in halves: a list of names left whole
reads to the model like one sentence with too many entities."""
import pytest
import spacy

from spacy_padellm.segments import Segment, halves
from spacy_padellm.types import Mention, TextPrediction

from ..conftest import ScriptedDecoding

LIST = "Ann met Bob , Cy met Dee ."


class CountingDecoding(ScriptedDecoding):
    """ScriptedDecoding whose count for each label has the scripted probability."""

    def __init__(self, script, count_scores):
        super().__init__(script)
        self.count_scores = count_scores

    def __call__(self, texts):
        preds = super().__call__(texts)
        for text, pred in zip(texts, preds):
            pred.count_scores = dict(self.count_scores.get(text, {}))
        return preds


def crowded_script():
    """The whole text: the model repeats its first name. Each half: right."""
    return {
        LIST: [("PER", 1, "Ann", 0.9), ("PER", 2, "Ann", 0.9)],
        "Ann met Bob ,": [("PER", 1, "Ann", 0.8), ("PER", 2, "Bob", 0.8)],
        "Cy met Dee .": [("PER", 1, "Cy", 0.8), ("PER", 2, "Dee", 0.8)],
    }


def names(doc):
    return [(e.text, e.label_) for e in doc.ents]


def test_a_crowded_segment_is_decoded_again_in_halves(scripted_nlp):
    pipe = scripted_nlp.get_pipe("padellm_ner")
    pipe._decoder = decoder = ScriptedDecoding(crowded_script())
    doc = scripted_nlp(LIST)
    assert names(doc) == [("Ann", "PER"), ("Bob", "PER"), ("Cy", "PER"), ("Dee", "PER")]
    assert decoder.calls == [[LIST], ["Ann met Bob ,", "Cy met Dee ."]]
    info = doc._.padellm
    assert info["fallbacks"] == {"repeated_mentions": 1, "resplit_segments": 1}
    assert info["segments"] == 1
    assert pipe.fallback_counts["resplit_segments"] == 1


def test_resplits_zero_keeps_what_the_whole_segment_gave(scripted_nlp):
    pipe = scripted_nlp.get_pipe("padellm_ner")
    pipe.cfg["resplits"] = 0
    pipe._decoder = decoder = ScriptedDecoding(crowded_script())
    doc = scripted_nlp(LIST)
    assert names(doc) == [("Ann", "PER")]
    assert decoder.calls == [[LIST]]
    assert doc._.padellm["fallbacks"] == {"repeated_mentions": 1}


def test_an_unsure_count_resplits_and_the_whole_keeps_what_halves_miss(scripted_nlp):
    """No fallback, but PER's count is less probable than `resplit_below`.
    The halves find Bob and Dee; the whole segment's Cy overlaps none of
    their spans and is kept."""
    script = {
        LIST: [("PER", 1, "Ann", 0.9), ("PER", 2, "Cy", 0.9)],
        "Ann met Bob ,": [("PER", 1, "Ann", 0.8), ("PER", 2, "Bob", 0.8)],
        "Cy met Dee .": [("PER", 1, "Dee", 0.8)],
    }
    pipe = scripted_nlp.get_pipe("padellm_ner")
    for below, expected in ((0.5, ["Ann", "Cy"]), (0.8, ["Ann", "Bob", "Cy", "Dee"])):
        pipe.cfg["resplit_below"] = below
        pipe._decoder = CountingDecoding(script, {LIST: {"PER": 0.6, "LOC": 0.99}})
        assert [text for text, _ in names(scripted_nlp(LIST))] == expected


def test_resplits_bound_the_depth(scripted_nlp):
    """Every text repeats a mention: halves, then quarters, and no further."""
    class Repeating(ScriptedDecoding):
        def __call__(self, texts):
            self.calls.append(list(texts))
            word = lambda t: t.split()[0]
            return [TextPrediction(mentions=[Mention("PER", 1, word(t), 0.9), Mention("PER", 2, word(t), 0.9)]) for t in texts]

    pipe = scripted_nlp.get_pipe("padellm_ner")
    pipe._decoder = decoder = Repeating({})
    doc = scripted_nlp("Ann , Bob , Cy , Dee , Eve , Fay , Gus , Hal")
    assert [len(call) for call in decoder.calls] == [1, 2, 4]
    assert doc._.padellm["fallbacks"]["resplit_segments"] == 3
    assert [e.text for e in doc.ents] == ["Ann", "Cy", "Eve", "Gus"]


def test_halves_cut_near_the_middle_after_punctuation_never_inside_a_found_span():
    nlp = spacy.blank("en")
    doc = nlp.make_doc("Ann met Bob , Cy met Dee .")
    whole = Segment(0, len(doc.text), 0, len(doc.text))
    left, right = halves(doc, whole, [], split="rules")
    assert (doc.text[left.start : left.end], doc.text[right.start : right.end]) == ("Ann met Bob ,", "Cy met Dee .")
    assert (left.keep_start, left.keep_end, right.keep_start, right.keep_end) == (0, right.start, right.start, len(doc.text))
    # "Bob , Cy" found as one span: the cut moves off it.
    left, right = halves(doc, whole, [(doc.text.index("Bob"), doc.text.index("Cy") + 2)], split="rules")
    assert left.end <= doc.text.index("Bob") or right.start >= doc.text.index("Cy") + 2
    assert halves(nlp.make_doc("Ann"), Segment(0, 3, 0, 3), []) is None


def test_halves_keep_only_what_their_segment_kept():
    """A piece of a cut sentence keeps spans starting in part of it; so do its halves."""
    doc = spacy.blank("en").make_doc("one two three four five six seven eight")
    piece = Segment(0, len(doc.text), 4, 24)
    left, right = halves(doc, piece, [], split="rules")
    assert left.keep_start == 4 and right.keep_end == 24
    assert left.keep_end == right.keep_start == right.start
