"""Input records and output records of `annotate`.

A corpus arrives as JSONL, plain text (one doc per line) or a `.spacy`
DocBin. Each input doc becomes a `Record` that remembers where it came from
(its 1-based line, or its position in a DocBin) so that a record which
cannot be read is reported by line in the errors file instead of stopping
the run or vanishing. Output records carry the id, every input field, and
the entities as character offsets with their probability.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

INPUT_FORMATS = ("jsonl", "text", "spacy")
RAW_LIMIT = 1000  # characters of a bad line kept in the errors file


@dataclass
class Record:
    """One input doc. `fields` is the input record as read (text and id
    included), passed through to the output."""

    position: int
    id: Any
    text: str
    fields: Dict[str, Any] = field(default_factory=dict)


@dataclass
class BadRecord:
    """An input doc that was not annotated, and why."""

    position: int
    error: str
    raw: str = ""
    id: Any = None

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"line": self.position, "error": self.error}
        if self.id is not None:
            out["id"] = self.id
        if self.raw:
            out["record"] = self.raw[:RAW_LIMIT]
        return out


def input_format(path: Path, given: Optional[str] = None) -> str:
    """The input's format: `given`, or from the suffix (`.jsonl`, `.ndjson`,
    `.json` are JSONL; `.spacy` a DocBin; anything else plain text)."""
    if given:
        if given not in INPUT_FORMATS:
            raise ValueError(f"--input-format must be one of {', '.join(INPUT_FORMATS)}, got {given!r}")
        return given
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".spacy":
        return "spacy"
    return "text"


def parse_line(line: str, position: int, fmt: str, text_field: str, id_field: str) -> Union[Record, BadRecord]:
    """One line of a JSONL or text input (without its line break)."""
    if fmt == "text":
        if not line.strip():
            return BadRecord(position, "empty line: no text to annotate")
        return Record(position, position, line, {id_field: position, text_field: line})
    if not line.strip():
        return BadRecord(position, "empty line: not a JSON record")
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        return BadRecord(position, f"not valid JSON: {err}", line)
    if not isinstance(value, dict):
        return BadRecord(position, f"not a JSON object but a {type(value).__name__}", line)
    record_id = value.get(id_field, position)
    text = value.get(text_field)
    if text is None:
        fields = ", ".join(repr(k) for k in list(value)[:10])
        return BadRecord(position, f"no field {text_field!r} (its fields: {fields}; see --text-field)", line, record_id)
    if not isinstance(text, str):
        return BadRecord(position, f"field {text_field!r} is a {type(text).__name__}, not a string", line, record_id)
    if not text.strip():
        return BadRecord(position, f"field {text_field!r} is empty", line, record_id)
    fields = {id_field: record_id, **value} if id_field not in value else value
    return Record(position, record_id, text, fields)


def docbin_records(path: Path, start: int, end: int, text_field: str, id_field: str) -> Iterator[Union[Record, BadRecord]]:
    """Docs `start:end` of a DocBin. The id and other fields come from
    `doc.user_data` (where `annotate` writes them in `.spacy` output)."""
    docs = _docbin_docs(path)
    for k in range(start, min(end, len(docs))):
        doc = docs[k]
        position = k + 1
        extra = {key: value for key, value in doc.user_data.items() if isinstance(key, str)}
        record_id = extra.get(id_field, position)
        if not doc.text.strip():
            yield BadRecord(position, "empty doc: no text to annotate", id=record_id)
            continue
        yield Record(position, record_id, doc.text, {id_field: record_id, **extra, text_field: doc.text})


_DOCBINS: Dict[str, Any] = {}


def _docbin_docs(path: Path) -> List[Any]:
    """A DocBin's docs, read once per process: every shard of a `.spacy`
    input is a slice of them (a DocBin is read whole anyway)."""
    import spacy
    from spacy.tokens import DocBin

    key = f"{Path(path).resolve()}:{Path(path).stat().st_mtime_ns}"
    if key not in _DOCBINS:
        _DOCBINS.clear()
        _DOCBINS[key] = list(DocBin().from_disk(path).get_docs(spacy.blank("xx").vocab))
    return _DOCBINS[key]


def count_docbin(path: Path) -> int:
    return len(_docbin_docs(path))


def _span_json(span: Any, score: Optional[float]) -> Dict[str, Any]:
    return {"start": span.start_char, "end": span.end_char, "label": span.label_,
            "score": None if score is None else round(float(score), 6)}


def output_record(doc: Any, record: Record, spans_key: Optional[str], drop_text: Optional[str] = None) -> Dict[str, Any]:
    """The JSON record of an annotated doc: its input fields, `entities` from
    `doc.ents` and, when the span group holds more than `doc.ents` (nested
    or overlapping mentions, or a lower threshold), `spans`."""
    group = doc.spans.get(spans_key) if spans_key else None
    scores: Dict[Any, float] = {}
    all_spans: List[Dict[str, Any]] = []
    if group is not None:
        values = group.attrs.get("scores")
        for k, span in enumerate(group):
            score = None if values is None or k >= len(values) else float(values[k])
            scores[(span.start_char, span.end_char, span.label_)] = score
            all_spans.append(_span_json(span, score))
    out = {key: value for key, value in record.fields.items() if key != drop_text}
    out["entities"] = [_span_json(ent, scores.get((ent.start_char, ent.end_char, ent.label_))) for ent in doc.ents]
    if group is not None and len(all_spans) > len(out["entities"]):
        out["spans"] = all_spans
    return out
