"""Long docs are decoded in segments of whole sentences, shaped like the
training texts; nothing is lost at segment boundaries."""
import numpy
import pytest
import spacy

from spacy_padellm.segments import sentences, split_segments

from ..conftest import MEMORIZED, make_nlp


def count_words(texts):
    """A stand-in for the tokenizer: one model token per word."""
    return [len(t.split()) for t in texts]


def kept_by(segments, char):
    return [s for s in segments if s.start <= char < s.end and s.keeps(char)]


def test_sentences_are_packed_whole_up_to_the_budget():
    nlp = spacy.blank("en")
    doc = nlp(" ".join(["One two three four ."] * 12))
    segments = split_segments(doc, count_words, 12)
    assert [count_words([doc.text[s.start : s.end]])[0] for s in segments] == [10] * 6
    assert all(doc.text[s.start : s.end].endswith(".") for s in segments)
    for token in doc:
        assert len(kept_by(segments, token.idx)) == 1


def test_sentences_come_from_rules_when_the_doc_has_none():
    nlp = spacy.blank("en")
    doc = nlp("Peter went home . He slept ! Did he ? Yes")
    assert [doc[s:e].text for s, e in sentences(doc, "rules")] == ["Peter went home .", "He slept !", "Did he ?", "Yes"]
    assert not doc.has_annotation("SENT_START")  # the user's doc is left as it was
    lines = nlp("SOCCER - SHEARER NAMED CAPTAIN\nLONDON 1996-08-30\n\nShearer was named captain .")
    assert [lines[s:e].text.strip() for s, e in sentences(lines, "rules")] == [
        "SOCCER - SHEARER NAMED CAPTAIN", "LONDON 1996-08-30", "Shearer was named captain ."
    ]


# Headline, dateline and a results table, joined by spaces: no full stop
# ends the dateline or the table rows, so the rules see three sentences.
NEWS = [
    "SOCCER - SHEARER NAMED AS ENGLAND CAPTAIN .",
    "LONDON 1996-08-30",
    "The new England soccer manager Glenn Hoddle named Alan Shearer as captain on Friday .",
    "Leeds 2 Chelsea 1",
    "Arsenal 3 Everton 0",
]


def test_the_shipped_senter_finds_sentences_the_rules_miss():
    nlp = spacy.blank("en")
    doc = nlp(" ".join(NEWS))
    found = [doc[s:e].text for s, e in sentences(doc)]
    assert len(sentences(doc, "rules")) == 3
    assert found[:3] == NEWS[:3]
    assert len(found) >= 4 and not doc.has_annotation("SENT_START")
    assert [s for s, _ in sentences(doc)] == sorted({s for s, _ in sentences(doc)})


def test_the_senter_reads_a_long_doc_in_chunks_with_the_same_result(monkeypatch):
    """Chunks bound the senter's memory on a 200,000-word doc; their
    margins make the boundaries the same as in one pass."""
    from spacy_padellm import segments

    nlp = spacy.blank("en")
    doc = nlp(" ".join(NEWS * 6))
    whole = sentences(doc)
    monkeypatch.setattr(segments, "SENTER_CHUNK", 7)
    assert sentences(doc) == whole
    assert len(whole) >= 6 * 4


def test_the_senter_threshold_decides_which_tokens_start_sentences():
    from spacy_padellm.segments import sentence_model

    model = sentence_model()
    doc = spacy.blank("en")(" ".join(NEWS * 2))
    default, sure, every = model(doc), set(model(doc, threshold=0.99)), model(doc, threshold=0.0)
    assert sure <= set(default) < set(every)
    assert every == list(range(len(doc)))  # the threshold decides, not the argmax
    assert model(doc, threshold=0.5) == default


def test_the_senter_is_english_only():
    """Other languages (its training text is English news) get the rules."""
    nlp = spacy.blank("de")
    doc = nlp(" ".join(NEWS))
    assert sentences(doc) == sentences(doc, "rules")


def test_sentences_set_by_the_pipeline_are_used():
    nlp = spacy.blank("en")
    doc = nlp("a b . c d e . f")
    for i, token in enumerate(doc):
        token.is_sent_start = i in (0, 5)
    assert [doc[s:e].text for s, e in sentences(doc)] == ["a b . c d", "e . f"]


def test_a_fitting_sentence_is_never_split():
    nlp = spacy.blank("en")
    long, short = " ".join(["w"] * 9) + " .", "x y ."
    doc = nlp(" ".join([short, long, short, short]))
    segments = split_segments(doc, count_words, 10)
    texts = [doc.text[s.start : s.end] for s in segments]
    assert long in texts
    assert all(t.endswith(".") for t in texts)


def test_a_sentence_up_to_the_limit_is_a_segment_of_its_own():
    nlp = spacy.blank("en")
    long = " ".join(["w"] * 15) + " ."
    doc = nlp(" ".join(["x y .", long, "x y ."]))
    segments = split_segments(doc, count_words, 10, sentence_limit=20)
    assert [doc.text[s.start : s.end] for s in segments] == ["x y .", long, "x y ."]
    cut = split_segments(doc, count_words, 10, sentence_limit=12)
    assert len(cut) > 3 and long not in [doc.text[s.start : s.end] for s in cut]


def test_a_sentence_longer_than_the_budget_is_cut_in_overlapping_pieces():
    nlp = spacy.blank("en")
    words = [f"w{i}" for i in range(100)]
    doc = nlp(" ".join(words))
    budget = 16
    segments = split_segments(doc, count_words, budget, split="rules")  # no senter: no likely starts
    assert len(segments) > 100 // budget
    assert all(count_words([doc.text[s.start : s.end]])[0] <= budget for s in segments)
    for a, b in zip(segments, segments[1:]):
        assert b.start < a.end  # they overlap
    for token in doc:
        owners = kept_by(segments, token.idx)
        assert len(owners) == 1, token.text
        # a two-token entity starting here is whole in the piece that keeps it
        if token.i + 1 < len(doc):
            assert doc[token.i + 1].idx + len(doc[token.i + 1]) <= owners[0].end


def test_a_run_on_is_cut_before_its_likeliest_sentence_starts():
    """Where the senter sees likely starts in a run-on it did not split (a
    results table), the parts end there, whole and without overlap; a
    stretch with none is still cut into overlapping pieces."""
    from spacy_padellm.segments import LIKELY_START, _split_sentence

    nlp = spacy.blank("en")
    doc = nlp(" ".join(f"w{i}" for i in range(60)))
    p = numpy.zeros(len(doc), dtype="float32")
    p[5], p[10], p[22] = LIKELY_START, 0.4, 0.3  # 10 beats 5 within the first 12 tokens
    segments = _split_sentence(doc, doc.text, 0, len(doc), count_words, 12, p)
    texts = [doc.text[s.start : s.end] for s in segments]
    assert texts[:2] == [doc[0:10].text, doc[10:22].text]
    assert all(s.keep_start == s.start and s.keep_end == s.end for s in segments[:2])
    rest = segments[2:]  # w22-w59: no likely start, so overlapping pieces
    assert rest[0].start == doc[22].idx and len(rest) > 1
    assert all(b.start < a.end for a, b in zip(rest, rest[1:]))
    for token in doc:
        assert len(kept_by(segments, token.idx)) == 1, token.text
    assert all(count_words([t])[0] <= 12 for t in texts)
    below = p.copy()
    below[[5, 10, 22]] = LIKELY_START / 2  # unlikely starts: the old overlapping cut
    assert _split_sentence(doc, doc.text, 0, len(doc), count_words, 12, below) == _split_sentence(
        doc, doc.text, 0, len(doc), count_words, 12
    )


def test_a_huge_token_is_cut_by_characters(tiny_model_dir):
    nlp = make_nlp(tiny_model_dir)
    nlp.initialize()
    pipe = nlp.get_pipe("padellm_ner")
    doc = nlp.make_doc("Japan won . " + "x" * 10000 + " Japan lost .")
    budget = 40
    segments = split_segments(doc, pipe._count_many, budget)
    assert all(pipe._count_tokens(doc.text[s.start : s.end]) <= budget for s in segments)
    for token in doc:
        assert len(kept_by(segments, token.idx)) == 1
    covered = set()
    for s in segments:
        covered.update(range(s.start, s.end))
    assert all(i in covered for i, c in enumerate(doc.text) if not c.isspace())


def ents(doc):
    return [(e.start_char, e.end_char, e.label_) for e in doc.ents]


def test_an_article_finds_what_its_sentences_find_alone(memorized_nlp):
    """The tiny model knows single sentences only, as the shipped one was
    trained on; joined into one doc, every sentence's entities must still
    be found, at document offsets."""
    pipe = memorized_nlp.get_pipe("padellm_ner")
    texts = [t for t, _ in MEMORIZED] * 10
    alone = [ents(d) for d in memorized_nlp.pipe(texts)]
    assert sum(map(len, alone)) > 0
    article = memorized_nlp(" ".join(texts))
    expected, offset = [], 0
    for text, found in zip(texts, alone):
        expected.extend((s + offset, e + offset, label) for s, e, label in found)
        offset += len(text) + 1
    assert ents(article) == expected
    info = article._.padellm
    assert info["segments"] == len(pipe._segments(article)) > 1
    assert info["fallbacks"]["segmented_docs"] == 1
    assert pipe.fallback_counts["segmented_docs"] >= 1
    assert not article.has_annotation("SENT_START")


def test_the_segment_budget_is_derived_from_training_texts_and_saved(memorized_nlp, memorized_model_dir):
    pipe = memorized_nlp.get_pipe("padellm_ner")
    lengths = pipe._count_many([t for t, _ in MEMORIZED])
    budget, piece, longest = pipe.cfg["trained_text_tokens"]
    assert min(lengths) <= budget <= piece <= longest == max(lengths)  # few texts: the longest is never cut
    assert pipe.segment_budget == budget and pipe.sentence_limit == longest
    copy = make_nlp(memorized_model_dir, labels=["LOC", "MISC", "PER"])
    copy.from_bytes(memorized_nlp.to_bytes())
    assert copy.get_pipe("padellm_ner").cfg["trained_text_tokens"] == pipe.cfg["trained_text_tokens"]
    override = make_nlp(memorized_model_dir, labels=["LOC"], segment_tokens=50)
    override.from_bytes(memorized_nlp.to_bytes())
    assert override.get_pipe("padellm_ner").segment_budget == 50


def test_without_segments_a_doc_beyond_the_context_is_windowed(memorized_model_dir):
    nlp = make_nlp(memorized_model_dir, labels=["LOC"], segment_tokens=0, max_text_tokens=24)
    nlp.initialize()
    doc = nlp(" ".join([MEMORIZED[0][0]] * 6))
    assert doc._.padellm["fallbacks"]["windowed_docs"] == 1
    assert "segmented_docs" not in doc._.padellm["fallbacks"]
    assert doc._.padellm["segments"] > 1
    short = nlp(MEMORIZED[0][0])
    assert short._.padellm["segments"] == 1 and short._.padellm["fallbacks"] == {}
