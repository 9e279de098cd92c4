"""Training on joined lines: consecutive lines as one text with all their
spans, the shape of a segment whose sentence boundary the split missed."""
import random

import pytest
import spacy

from spacy_padellm.corpus import make_jsonl_corpus

from ..conftest import write_jsonl

LINES = [
    ["GENEVA 1996-08-30", [0, 0, "GENEVA", "LOC"]],
    ["UEFA fined Standard Liege .", [0, 0, "UEFA", "ORG"], [2, 3, "Standard Liege", "ORG"]],
    ["Nadim Ladki reported .", [0, 1, "Nadim Ladki", "PER"]],
    ["Japan won .", [0, 0, "Japan", "LOC"]],
]


@pytest.fixture
def corpus_file(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", LINES)


def spans(doc):
    return [(span.text, span.label_) for span in doc.spans["padellm"]]


def test_lines_are_joined_with_all_their_spans(corpus_file):
    nlp = spacy.blank("en")
    random.seed(0)
    examples = list(make_jsonl_corpus(corpus_file, joined_lines=2)(nlp))
    assert [eg.reference.text for eg in examples] == [
        LINES[0][0] + " " + LINES[1][0], LINES[2][0] + " " + LINES[3][0]
    ]
    assert spans(examples[0].reference) == [("GENEVA", "LOC"), ("UEFA", "ORG"), ("Standard Liege", "ORG")]
    assert [(e.text, e.label_) for e in examples[1].reference.ents] == [("Nadim Ladki", "PER"), ("Japan", "LOC")]
    assert [t.text for t in examples[1].predicted] == [t.text for t in examples[1].reference]


def test_word_limit_keeps_lines_apart(corpus_file):
    nlp = spacy.blank("en")
    random.seed(0)
    examples = list(make_jsonl_corpus(corpus_file, joined_lines=3, joined_max_words=6)(nlp))
    assert all(len(eg.reference) <= 6 for eg in examples)
    assert " ".join(eg.reference.text for eg in examples) == " ".join(line[0] for line in LINES)


def test_share_zero_keeps_every_line(corpus_file):
    nlp = spacy.blank("en")
    examples = list(make_jsonl_corpus(corpus_file, joined_lines=3, joined_share=0.0)(nlp))
    assert [eg.reference.text for eg in examples] == [line[0] for line in LINES]


@pytest.mark.parametrize("settings, match", [
    ({"joined_lines": -1}, "joined_lines"),
    ({"joined_lines": 2, "joined_max_words": 1.5}, "joined_max_words"),
    ({"joined_lines": 2, "joined_share": 2}, "joined_share"),
    ({"joined_lines": 2, "context_sentences": 1}, "cannot both"),
])
def test_bad_settings_are_refused(corpus_file, settings, match):
    with pytest.raises(ValueError, match=match):
        make_jsonl_corpus(corpus_file, **settings)
