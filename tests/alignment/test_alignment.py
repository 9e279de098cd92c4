"""Mention strings to character offsets, with scripted generations."""
import pytest

from spacy_padellm.alignment import align_mentions, find_mention
from spacy_padellm.types import Mention


def spans_of(text, mentions):
    spans, counts = align_mentions(text, mentions)
    return [(text[s.start : s.end], s.start, s.label) for s in spans], counts


def test_repeated_strings_land_on_different_occurrences():
    text = "China beat China in Beijing ."
    got, counts = spans_of(text, [Mention("LOC", 1, "China", 0.9), Mention("LOC", 2, "China", 0.8)])
    assert got == [("China", 0, "LOC"), ("China", 11, "LOC")]
    assert sum(counts.values()) == 0


def test_same_string_under_two_labels_may_share_an_occurrence():
    text = "Jordan met Jordan ."
    got, _ = spans_of(text, [Mention("PER", 1, "Jordan", 0.9), Mention("LOC", 1, "Jordan", 0.5)])
    assert sorted(got) == [("Jordan", 0, "LOC"), ("Jordan", 0, "PER")]


def test_third_mention_without_third_occurrence_is_counted():
    text = "China beat China ."
    got, counts = spans_of(text, [Mention("LOC", n, "China", 0.5) for n in (1, 2, 3)])
    assert [g[1] for g in got] == [0, 11]
    assert counts["repeated_mentions"] == 1


def test_textual_order_decides_between_occurrences():
    text = "Paris and Rome and Paris ."
    got, _ = spans_of(text, [Mention("LOC", 1, "Rome", 0.9), Mention("LOC", 2, "Paris", 0.9)])
    assert [g[1] for g in got] == [10, 19]


def test_mentions_out_of_order_still_find_unused_occurrence():
    text = "Paris and Rome ."
    got, counts = spans_of(text, [Mention("LOC", 1, "Rome", 0.9), Mention("LOC", 2, "Paris", 0.9)])
    assert sorted(g[1] for g in got) == [0, 10]
    assert sum(counts.values()) == 0


def test_hallucination_is_dropped_and_counted():
    got, counts = spans_of("Japan won .", [Mention("LOC", 1, "Mars", 0.9)])
    assert got == []
    assert counts["hallucinated_mentions"] == 1


def test_empty_mention_is_counted():
    got, counts = spans_of("Japan won .", [Mention("LOC", 1, "  ", 0.9)])
    assert got == [] and counts["empty_mentions"] == 1


@pytest.mark.parametrize(
    "text,mention,expected",
    [
        ("He lives in NEW YORK .", "New York", "NEW YORK"),
        ("in New  York today", "New York", "New  York"),
        ("New York 's mayor", "New York's", "New York 's"),
        ("the U.S. dollar", "U.S.", "U.S."),
        ("emoji 🙂 Zürich 🙂 ok", "Zürich", "Zürich"),
    ],
)
def test_case_and_whitespace_differences(text, mention, expected):
    got, counts = spans_of(text, [Mention("LOC", 1, mention, 0.9)])
    assert [g[0] for g in got] == [expected]


def test_exact_match_preferred_over_case_insensitive():
    text = "apple sells Apple products"
    got, _ = spans_of(text, [Mention("ORG", 1, "Apple", 0.9)])
    assert got == [("Apple", 12, "ORG")]


def test_no_match_inside_a_word():
    got, counts = spans_of("Iran and Iraq", [Mention("LOC", 1, "Ira", 0.9)])
    assert got == [] and counts["hallucinated_mentions"] == 1


def test_chinese_characters_without_spaces():
    text = "我在北京和上海工作，北京很大"
    got, _ = spans_of(text, [Mention("GPE", 1, "北京", 0.9), Mention("GPE", 2, "上海", 0.8), Mention("GPE", 3, "北京", 0.7)])
    assert [(g[0], g[1]) for g in got] == [("北京", 2), ("上海", 5), ("北京", 10)]


def test_nested_mentions_of_one_label():
    text = "the Drosophila homeodomain binds"
    got, _ = spans_of(text, [Mention("DNA", 1, "Drosophila homeodomain", 0.9), Mention("DNA", 2, "homeodomain", 0.8)])
    assert got == [("Drosophila homeodomain", 4, "DNA"), ("homeodomain", 15, "DNA")]


def test_offset_shifts_spans():
    spans, _ = align_mentions("Japan won", [Mention("LOC", 1, "Japan", 0.9)], offset=100)
    assert (spans[0].start, spans[0].end) == (100, 105)


def test_find_mention_respects_used():
    assert find_mention("a b a", "a", 0, {(0, 1)}) == (4, 5)
    assert find_mention("a b a", "a", 0, {(0, 1), (4, 5)}) is None
