"""Reading input records and writing output records, without a model."""
import json

import numpy
import pytest
import spacy
from spacy.tokens import SpanGroup

from spacy_padellm.annotation.records import BadRecord, Record, input_format, output_record, parse_line


def test_jsonl_fields_pass_through_in_order():
    record = parse_line(json.dumps({"id": 7, "text": "Hi there", "meta": {"a": 1}}), 3, "jsonl", "text", "id")
    assert isinstance(record, Record)
    assert (record.position, record.id, record.text) == (3, 7, "Hi there")
    assert list(record.fields) == ["id", "text", "meta"]


def test_a_record_without_id_gets_its_line_number_first():
    record = parse_line(json.dumps({"body": "Hi", "x": 1}), 12, "jsonl", "body", "uid")
    assert record.id == 12
    assert list(record.fields.items()) == [("uid", 12), ("body", "Hi"), ("x", 1)]


@pytest.mark.parametrize(
    "line,reason",
    [
        ("{broken", "not valid JSON"),
        ("[1, 2]", "not a JSON object but a list"),
        ('{"id": 1, "body": "x"}', "no field 'text'"),
        ('{"id": 1, "text": 5}', "is a int, not a string"),
        ('{"id": 1, "text": "  "}', "is empty"),
        ("", "empty line"),
    ],
)
def test_bad_jsonl_lines_say_why_and_where(line, reason):
    bad = parse_line(line, 9, "jsonl", "text", "id")
    assert isinstance(bad, BadRecord)
    assert reason in bad.error
    assert bad.to_json()["line"] == 9


def test_text_lines_are_docs_with_line_ids():
    record = parse_line("A line .", 4, "text", "text", "id")
    assert record.id == 4 and record.fields == {"id": 4, "text": "A line ."}
    assert isinstance(parse_line("   ", 5, "text", "text", "id"), BadRecord)


def test_input_format_from_suffix(tmp_path):
    assert input_format(tmp_path / "a.jsonl") == "jsonl"
    assert input_format(tmp_path / "a.spacy") == "spacy"
    assert input_format(tmp_path / "a.txt") == "text"
    with pytest.raises(ValueError, match="--input-format"):
        input_format(tmp_path / "a.txt", "csv")


def test_output_record_has_scored_entities_and_nested_spans():
    nlp = spacy.blank("en")
    doc = nlp("The University of Tokyo said so .")
    outer, inner = doc[1:4], doc[3:4]
    group = SpanGroup(doc, name="padellm", spans=[doc.char_span(4, 23, "ORG"), doc.char_span(18, 23, "LOC")])
    group.attrs["scores"] = numpy.asarray([0.9, 0.6], dtype="float32")
    doc.spans["padellm"] = group
    doc.ents = [doc.char_span(4, 23, "ORG")]
    record = Record(1, "a", doc.text, {"id": "a", "text": doc.text})
    out = output_record(doc, record, "padellm")
    assert (outer.text, inner.text) == ("University of Tokyo", "Tokyo")
    assert out["entities"] == [{"start": 4, "end": 23, "label": "ORG", "score": pytest.approx(0.9)}]
    assert [(s["start"], s["end"], s["label"]) for s in out["spans"]] == [(4, 23, "ORG"), (18, 23, "LOC")]
    assert out["spans"][1]["score"] == pytest.approx(0.6)
    # Without nesting, no "spans"; without the group, no scores.
    doc.spans["padellm"] = SpanGroup(doc, name="padellm", spans=[doc.char_span(4, 23, "ORG")])
    assert "spans" not in output_record(doc, record, "padellm")
    assert output_record(doc, record, None)["entities"][0]["score"] is None
    assert "text" not in output_record(doc, record, "padellm", drop_text="text")
