"""Duplicates, nesting, `doc.ents` and fallbacks, through scripted generations."""
import logging

import pytest
from spacy.tokens import Span


def run(nlp, text, script):
    from ..conftest import ScriptedDecoding

    nlp.get_pipe("padellm_ner")._decoder = ScriptedDecoding({text: script})
    return nlp(text)


def test_same_span_under_two_labels_keeps_most_probable(scripted_nlp):
    doc = run(scripted_nlp, "Jordan won .", [("PER", 1, "Jordan", 0.4), ("LOC", 1, "Jordan", 0.7)])
    group = doc.spans["padellm"]
    assert [(s.text, s.label_) for s in group] == [("Jordan", "LOC")]
    assert list(group.attrs["scores"]) == pytest.approx([0.7])
    assert doc._.padellm["label_conflicts"] == 1


def test_tie_does_not_depend_on_label_order(scripted_nlp):
    a = run(scripted_nlp, "Jordan won .", [("PER", 1, "Jordan", 0.5), ("LOC", 1, "Jordan", 0.5)])
    b = run(scripted_nlp, "Jordan won .", [("LOC", 1, "Jordan", 0.5), ("PER", 1, "Jordan", 0.5)])
    assert [s.label_ for s in a.ents] == [s.label_ for s in b.ents] == ["LOC"]


def test_nested_spans_kept_in_group_flat_selection_in_ents(scripted_nlp):
    script = [("ORG", 1, "Bank of China", 0.6), ("LOC", 1, "China", 0.9)]
    scripted_nlp.get_pipe("padellm_ner").add_label("ORG")
    doc = run(scripted_nlp, "The Bank of China lends .", script)
    group = doc.spans["padellm"]
    assert sorted((s.text, s.label_) for s in group) == [("Bank of China", "ORG"), ("China", "LOC")]
    scores = dict(zip((s.text for s in group), group.attrs["scores"]))
    assert scores["China"] == pytest.approx(0.9) and scores["Bank of China"] == pytest.approx(0.6)
    # The more probable span wins the flat view.
    assert [(e.text, e.label_) for e in doc.ents] == [("China", "LOC")]


def test_flat_selection_prefers_longer_span_on_equal_probability(scripted_nlp):
    doc = run(scripted_nlp, "The Bank of China lends .", [("MISC", 1, "Bank of China", 0.5), ("LOC", 1, "China", 0.5)])
    assert [e.text for e in doc.ents] == ["Bank of China"]
    assert len(doc.spans["padellm"]) == 2


@pytest.mark.parametrize("overwrite,expected", [(False, [("Paris", "GPE")]), (True, [("Paris", "LOC")])])
def test_existing_ents_follow_entity_ruler_rule(tiny_model_dir, overwrite, expected):
    from ..conftest import ScriptedDecoding, make_nlp

    nlp = make_nlp(tiny_model_dir, overwrite_ents=overwrite)
    nlp.initialize()
    pipe = nlp.get_pipe("padellm_ner")
    pipe._decoder = ScriptedDecoding({"Paris and Rome": [("LOC", 1, "Paris", 0.9), ("LOC", 2, "Rome", 0.9)]})
    doc = nlp.make_doc("Paris and Rome")
    doc.ents = [Span(doc, 0, 1, label="GPE")]
    doc = pipe(doc)
    assert [(e.text, e.label_) for e in doc.ents if e.text == "Paris"] == expected
    assert [(e.text, e.label_) for e in doc.ents if e.text == "Rome"] == [("Rome", "LOC")]


def test_annotate_ents_false_leaves_ents(tiny_model_dir):
    from ..conftest import ScriptedDecoding, make_nlp

    nlp = make_nlp(tiny_model_dir, annotate_ents=False)
    nlp.initialize()
    nlp.get_pipe("padellm_ner")._decoder = ScriptedDecoding({"Paris": [("LOC", 1, "Paris", 0.9)]})
    doc = nlp("Paris")
    assert doc.ents == () and len(doc.spans["padellm"]) == 1


def test_alignment_mode_contract_drops_partial_token(tiny_model_dir):
    from ..conftest import ScriptedDecoding, make_nlp

    for mode, expected in (("expand", ["U.S."]), ("contract", [])):
        nlp = make_nlp(tiny_model_dir, alignment_mode=mode)
        nlp.initialize()
        pipe = nlp.get_pipe("padellm_ner")
        pipe._decoder = ScriptedDecoding({"the U.S. dollar": [("LOC", 1, "U.S", 0.9)]})
        doc = nlp("the U.S. dollar")
        assert [s.text for s in doc.spans["padellm"]] == expected
        assert pipe.fallback_counts["misaligned_mentions"] == (0 if expected else 1)


def test_fallbacks_counted_per_doc_in_pipe_and_logged(scripted_nlp, caplog):
    pipe = scripted_nlp.get_pipe("padellm_ner")
    pipe.cfg["resplits"] = 0  # crowded segments decoded again: tests/pipeline/test_resplit.py
    pipe._decoder.script = {
        "Japan won .": [("LOC", 1, "Japan", 0.9), ("LOC", 2, "Mars", 0.9)],
        "Rome .": [("LOC", 1, "Venus", 0.9)],
    }
    with caplog.at_level(logging.WARNING, logger="spacy_padellm"):
        docs = list(scripted_nlp.pipe(["Japan won .", "Rome ."]))
    assert [d._.padellm["fallbacks"] for d in docs] == [{"hallucinated_mentions": 1}, {"hallucinated_mentions": 1}]
    assert pipe.fallback_counts["hallucinated_mentions"] == 2
    assert "hallucinated_mentions" in caplog.text
    assert [e.text for e in docs[0].ents] == ["Japan"]
    pipe.reset_fallback_counts()
    assert pipe.fallback_counts["hallucinated_mentions"] == 0


def test_empty_whitespace_and_emoji_docs(scripted_nlp):
    pipe = scripted_nlp.get_pipe("padellm_ner")
    pipe._decoder.script = {"🙂 Zürich 🙂": [("LOC", 1, "Zürich", 0.9)]}
    texts = ["", "   ", "\n\t", "🙂 Zürich 🙂"]
    docs = list(scripted_nlp.pipe(texts))
    assert [d.text for d in docs] == texts
    assert [len(d.ents) for d in docs] == [0, 0, 0, 1]
    # Blank docs never reach the decoder.
    assert pipe._decoder.calls == [["🙂 Zürich 🙂"]]
    assert all(d.spans["padellm"] is not None for d in docs)


def test_add_label_extends_default_labels(tiny_model_dir):
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(tiny_model_dir)}})
    pipe = nlp.get_pipe("padellm_ner")
    assert pipe.add_label("FOO") == 1 and pipe.add_label("PER") == 0
    assert pipe.labels == ("PER", "ORG", "LOC", "MISC", "FOO")


def test_chinese_mentions_land_on_character_tokens(tiny_model_dir):
    """spacy.blank("zh") makes one token per character; mentions are placed
    without spaces or word boundaries, repeated ones on later occurrences."""
    from ..conftest import ScriptedDecoding, make_nlp

    # segment_tokens 0: the whole text is one segment, as the script is keyed.
    nlp = make_nlp(tiny_model_dir, lang="zh", labels=["NAME", "ORG", "LOC"], segment_tokens=0)
    nlp.initialize()
    text = "吴重阳，中国国籍，毕业于中国人民大学，现居北京。北京大学教授。"
    nlp.get_pipe("padellm_ner")._decoder = ScriptedDecoding(
        {text: [("NAME", 1, "吴重阳", 0.9), ("ORG", 1, "中国人民大学", 0.8), ("ORG", 2, "北京大学", 0.7),
                ("LOC", 1, "北京", 0.6), ("LOC", 2, "北京", 0.6), ("LOC", 3, "上海", 0.5)]}
    )
    doc = nlp(text)
    assert all(len(token) == 1 for token in doc)
    spans = sorted((s.start, s.end, s.label_) for s in doc.spans["padellm"])
    assert spans == [(0, 3, "NAME"), (12, 18, "ORG"), (21, 23, "LOC"), (24, 26, "LOC"), (24, 28, "ORG")]
    # the flat view drops the LOC nested in the ORG; the hallucinated 上海 is counted
    assert [(e.text, e.label_) for e in doc.ents] == [("吴重阳", "NAME"), ("中国人民大学", "ORG"), ("北京", "LOC"), ("北京大学", "ORG")]
    assert doc._.padellm["fallbacks"]["hallucinated_mentions"] == 1


@pytest.mark.parametrize("keep_below", [False, True])
def test_threshold_drops_improbable_spans(tiny_model_dir, keep_below):
    from ..conftest import ScriptedDecoding, make_nlp

    nlp = make_nlp(tiny_model_dir, threshold=0.5, keep_below_threshold=keep_below)
    nlp.initialize()
    text = "Peter met Paul in Rome ."
    nlp.get_pipe("padellm_ner")._decoder = ScriptedDecoding(
        {text: [("PER", 1, "Peter", 0.9), ("PER", 2, "Paul", 0.3), ("LOC", 1, "Rome", 0.5)]}
    )
    doc = nlp(text)
    assert [e.text for e in doc.ents] == ["Peter", "Rome"]  # 0.5 is not below 0.5
    group = [s.text for s in doc.spans["padellm"]]
    assert group == (["Peter", "Paul", "Rome"] if keep_below else ["Peter", "Rome"])
    assert len(doc.spans["padellm"].attrs["scores"]) == len(group)
    assert doc._.padellm["below_threshold"] == 1


def test_default_threshold_keeps_everything(scripted_nlp):
    doc = run(scripted_nlp, "Peter met Paul .", [("PER", 1, "Peter", 0.01), ("PER", 2, "Paul", 1e-9)])
    assert [e.text for e in doc.ents] == ["Peter", "Paul"]
    assert doc._.padellm["below_threshold"] == 0


def test_expand_that_swallows_a_sentence_is_misaligned(scripted_nlp):
    """An English tokenizer keeps unspaced Chinese as one token; `expand`
    would turn the mention 北京 into the whole sentence."""
    doc = run(scripted_nlp, "他现在住在北京。", [("LOC", 1, "北京", 0.9)])
    assert list(doc.ents) == []
    assert doc._.padellm["fallbacks"]["misaligned_mentions"] == 1
    near = run(scripted_nlp, "He left the U.S. today .", [("LOC", 1, "U.S", 0.9)])
    assert [e.text for e in near.ents] == ["U.S."]  # a modest widening is kept


def test_entities_never_hold_control_characters(scripted_nlp):
    from ..conftest import ScriptedDecoding

    text = "Peter Blackburn visited Brussels\x1b[31 ."
    seen = "Peter Blackburn visited Brussels [31 ."  # the model reads no escape codes
    script = [("LOC", 1, "Brussels", 0.9), ("PER", 1, "Peter Blackburn", 0.9)]
    scripted_nlp.get_pipe("padellm_ner")._decoder = decoder = ScriptedDecoding({seen: script})
    doc = scripted_nlp(text)
    assert decoder.calls == [[seen]]
    assert [e.text for e in doc.ents] == ["Peter Blackburn"]
    assert doc._.padellm["fallbacks"]["misaligned_mentions"] == 1
