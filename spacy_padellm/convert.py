"""Convert NER corpora to spaCy's binary `.spacy` format (a DocBin).

`spacy train` reads DocBins with its stock `spacy.Corpus.v1` reader, so a
converted corpus needs nothing of this package at training time. Every
format ends in the same shape as the JSONL reader's docs: the gold spans in
`doc.spans[spans_key]` (all of them, nested included) and a non-overlapping
selection in `doc.ents`, so the scorer's `spans_*` and `ents_*` keys both
have gold annotation.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, Union

import spacy
from spacy.tokens import Doc, DocBin, Span, SpanGroup
from spacy.training.converters import json_to_docs as spacy_json_to_docs
from spacy.util import filter_spans
from spacy.vocab import Vocab

from .corpus import CHARACTER_LANGS, DEFAULT_SPANS_KEY, read_jsonl_docs
from .errors import Errors

FORMATS = ("jsonl", "conll", "json")
PROGRESS_EVERY = 1000
# Tag prefixes that start or continue an entity (IOB, IOB2, IOBES and BILUO).
_STARTS = frozenset("BSU")
_ENDS = frozenset("ESLU")
_PREFIXES = frozenset("BIESLU")


@dataclass
class ConversionSummary:
    """What a conversion wrote: enough to compare with the corpus' own counts."""

    docs: int = 0
    spans: int = 0
    ents: int = 0


def jsonl_to_docs(
    path: Union[str, Path], *, end: str = "inclusive", lang: str = "en", spans_key: str = DEFAULT_SPANS_KEY
) -> Iterator[Doc]:
    """The reference docs of the JSONL reader (see `corpus.read_jsonl_docs`)."""
    return read_jsonl_docs(path, spacy.blank(lang).vocab, end=end, spans_key=spans_key, lang=lang)


def iob_spans(tags: List[str], *, path: Union[str, Path], line_nos: List[int]) -> List[Tuple[int, int, str]]:
    """(start, end, label) token spans from IOB1/IOB2 (also IOBES/BILUO) tags.

    An I- tag that does not continue an entity of its own label starts one,
    which is how IOB1 files mark entities (B- there only separates two
    adjacent entities of the same label).
    """
    spans: List[Tuple[int, int, str]] = []
    start: Optional[int] = None
    label = ""
    for i, tag in enumerate(tags):
        if tag == "O":
            if start is not None:
                spans.append((start, i, label))
            start = None
            continue
        prefix, sep, tag_label = tag.partition("-")
        if not sep or not tag_label or prefix not in _PREFIXES:
            raise ValueError(
                Errors.E2036.format(path=path, line=line_nos[i], problem=f"the tag {tag!r} is not an IOB tag")
            )
        if prefix in _STARTS or start is None or tag_label != label:
            if start is not None:
                spans.append((start, i, label))
            start, label = i, tag_label
        if prefix in _ENDS:
            spans.append((start, i + 1, label))
            start = None
    if start is not None:
        spans.append((start, len(tags), label))
    return spans


def _conll_sentences(path: Path) -> Iterator[Tuple[List[str], List[str], List[int]]]:
    """Words, tags and line numbers per sentence; -DOCSTART- lines dropped."""
    words: List[str] = []
    tags: List[str] = []
    line_nos: List[int] = []
    with path.open(encoding="utf8") as file_:
        for line_no, line in enumerate(file_, 1):
            columns = line.split()
            if not columns:
                if words:
                    yield words, tags, line_nos
                words, tags, line_nos = [], [], []
                continue
            if columns[0] == "-DOCSTART-":
                continue
            if len(columns) < 2:
                raise ValueError(
                    Errors.E2036.format(path=path, line=line_no, problem=f"only one column in {line.strip()!r}")
                )
            words.append(columns[0])
            tags.append(columns[-1])
            line_nos.append(line_no)
    if words:
        yield words, tags, line_nos


def conll_to_docs(
    path: Union[str, Path], *, lang: str = "en", spans_key: str = DEFAULT_SPANS_KEY
) -> Iterator[Doc]:
    """One Doc per sentence of a CoNLL column file (token first, NER tag last).

    One Doc per sentence, not spaCy's default of ten, so that the docs line
    up with the JSONL corpora's one sentence per line. For Chinese (`lang`
    "zh") the tokens are joined without spaces.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(Errors.E2038.format(path=path))
    vocab = spacy.blank(lang).vocab
    joined = lang not in CHARACTER_LANGS
    for words, tags, line_nos in _conll_sentences(path):
        spaces = [joined] * (len(words) - 1) + [False]
        doc = Doc(vocab, words=words, spaces=spaces)
        spans = [Span(doc, s, e, label=label) for s, e, label in iob_spans(tags, path=path, line_nos=line_nos)]
        _set_gold(doc, spans, spans_key)
        yield doc


def json_to_docs(path: Union[str, Path], *, spans_key: str = DEFAULT_SPANS_KEY) -> Iterator[Doc]:
    """Docs of spaCy v2's JSON training format, through spaCy's own converter;
    its entities are flat, so the span group repeats `doc.ents`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(Errors.E2038.format(path=path))
    for doc in spacy_json_to_docs(path.read_bytes()):
        _set_gold(doc, list(doc.ents), spans_key)
        yield doc


def _set_gold(doc: Doc, spans: List[Span], spans_key: str) -> None:
    doc.spans[spans_key] = SpanGroup(doc, name=spans_key, spans=spans)
    doc.ents = filter_spans(spans)


def convert_docs(
    path: Union[str, Path],
    *,
    format: str = "jsonl",
    end: str = "inclusive",
    lang: str = "en",
    spans_key: str = DEFAULT_SPANS_KEY,
) -> Iterator[Doc]:
    """Dispatch on `format`; `end` applies to jsonl only, `lang` to jsonl and conll."""
    if format == "jsonl":
        return jsonl_to_docs(path, end=end, lang=lang, spans_key=spans_key)
    if format == "conll":
        return conll_to_docs(path, lang=lang, spans_key=spans_key)
    if format == "json":
        return json_to_docs(path, spans_key=spans_key)
    raise ValueError(Errors.E2037.format(format=format, options=", ".join(FORMATS)))


def write_docbin(
    docs: Iterable[Doc],
    output: Union[str, Path],
    *,
    spans_key: str = DEFAULT_SPANS_KEY,
    progress: Optional[Callable[[ConversionSummary], None]] = None,
    every: int = PROGRESS_EVERY,
) -> ConversionSummary:
    """Save docs as a DocBin (span groups included), creating parent folders;
    `progress` is called every `every` docs, so long conversions show life."""
    doc_bin = DocBin()
    summary = ConversionSummary()
    for doc in docs:
        doc_bin.add(doc)
        summary.docs += 1
        summary.spans += len(doc.spans[spans_key]) if spans_key in doc.spans else 0
        summary.ents += len(doc.ents)
        if progress is not None and every > 0 and summary.docs % every == 0:
            progress(summary)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    doc_bin.to_disk(output)
    return summary


def read_docbin(path: Union[str, Path], vocab: Optional[Vocab] = None) -> List[Doc]:
    """The docs of a `.spacy` file, for checks and tests."""
    return list(DocBin().from_disk(path).get_docs(vocab or Vocab()))
