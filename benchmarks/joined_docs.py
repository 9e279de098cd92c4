"""Long docs made of consecutive dev sentences, for the long-document
benchmarks (`long_docs.py`, `long_memory.py`).

A row of the data files is `[text, [start, end, text, label], ...]` with
whitespace-token indices (end inclusive in CoNLL-03, exclusive in GENIA).
The sentences are joined by single spaces (or line breaks); gold spans are shifted into the
joined doc, kept whole in the span group `padellm` (nested ones included)
and, without overlaps, as `doc.ents`.
"""
import json
from pathlib import Path
from typing import List, Sequence

from spacy.language import Language
from spacy.tokens import Doc, Span


def read_rows(path: Path, start: int, stop: int) -> List[list]:
    """Rows [start, stop) of a JSONL data file."""
    with path.open(encoding="utf8") as f:
        return [json.loads(line) for i, line in enumerate(f) if start <= i < stop]


def joined_reference(nlp: Language, rows: Sequence[list], end_inclusive: bool = True, separator: str = " ") -> Doc:
    """The gold doc of the rows' sentences joined by `separator` (a space,
    or a line break as a text that keeps its lines has them): the file's
    tokens and sentences, its spans in `doc.spans["padellm"]`, and those
    that do not overlap as `doc.ents`."""
    if separator not in (" ", "\n"):
        raise ValueError(f"separator must be a space or a line break, not {separator!r}")
    words: List[str] = []
    spaces: List[bool] = []
    starts, spans = [], []
    for k, row in enumerate(rows):
        if k and separator == "\n":
            spaces[-1] = False
            words.append("\n")
            spaces.append(False)
        offset = len(words)
        starts.append(offset)
        row_words = row[0].split(" ")
        words.extend(row_words)
        spaces.extend([True] * len(row_words))
        spans.extend((offset + s, offset + e + (1 if end_inclusive else 0), label) for s, e, _, label in row[1:])
    sent_starts = [False] * len(words)
    for s in starts:
        sent_starts[s] = True
    reference = Doc(nlp.vocab, words=words, spaces=spaces, sent_starts=sent_starts)
    gold = [Span(reference, s, e, label=label) for s, e, label in spans]
    reference.spans["padellm"] = gold
    flat, used = [], set()
    for span in sorted(gold, key=lambda sp: (sp.start, -len(sp))):
        if not used.intersection(range(span.start, span.end)):
            flat.append(span)
            used.update(range(span.start, span.end))
    reference.ents = flat
    return reference
