"""Read the PaDeLLM-NER JSONL corpora as spaCy Docs and training Examples.

Each line is `[text, [start, end, mention, label], ...]`. The texts are
already tokenized (English: tokens joined by single spaces; Chinese: one
index per character), so the Docs are built from exactly those tokens rather
than with spaCy's tokenizer: that way the file's indices are token indices
and no entity is lost to a tokenization mismatch.

Every gold span goes into `doc.spans[spans_key]`, because genia nests
entities and `doc.ents` cannot hold overlaps; `doc.ents` gets the longest
non-overlapping selection, so that spaCy's flat `ents_*` scores still work.
The mention string of every entity is checked against the tokens it points
at: the corpora disagree on whether `end` is inclusive, and a wrong guess
would otherwise shift every entity silently.
"""
import itertools
import json
import random
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Iterator, List, Optional, Sequence, Tuple, Union

from spacy.language import Language
from spacy.tokens import Doc, Span, SpanGroup
from spacy.training import Example
from spacy.util import filter_spans
from spacy.vocab import Vocab

from .errors import Errors

END_CONVENTIONS = ("inclusive", "exclusive")
DEFAULT_SPANS_KEY = "padellm"
# Languages whose corpora index characters, not space-separated tokens.
CHARACTER_LANGS = frozenset({"zh"})

Entity = Tuple[int, int, str, str]


def check_end(end: str, path: Union[str, Path]) -> None:
    """Fail before reading anything: a wrong `end` would misplace every span."""
    if end not in END_CONVENTIONS:
        raise ValueError(Errors.E2030.format(end=end, path=path))


def resolve_lang(lang: Optional[str], vocab_or_nlp: Union[Language, Vocab, None]) -> str:
    """An explicit `lang` wins, then the pipeline's language, then English."""
    if lang:
        return lang
    if isinstance(vocab_or_nlp, Language):
        return vocab_or_nlp.lang
    if isinstance(vocab_or_nlp, Vocab) and vocab_or_nlp.lang:
        return vocab_or_nlp.lang
    return "en"


def tokenize(text: str, char_level: bool) -> Tuple[List[str], List[bool]]:
    """The words and trailing-space flags the file's indices refer to."""
    if char_level:
        return list(text), [False] * len(text)
    if not text:
        return [], []
    words = text.split(" ")
    return words, [True] * (len(words) - 1) + [False]


def parse_line(line: str, path: Union[str, Path], line_no: int) -> Tuple[str, List[Entity]]:
    """Decode one JSONL line and check its shape, naming the line on failure."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(Errors.E2031.format(path=path, line=line_no, reason=err)) from None

    def fail(problem: str) -> ValueError:
        return ValueError(Errors.E2032.format(path=path, line=line_no, problem=problem))

    if not isinstance(data, list) or not data:
        raise fail(f"expected a non-empty JSON array, got {type(data).__name__} {data!r:.60}")
    text = data[0]
    if not isinstance(text, str):
        raise fail(f"element 0 must be the text (a string), got {text!r:.60}")
    entities: List[Entity] = []
    for i, item in enumerate(data[1:], 1):
        if not isinstance(item, list) or len(item) != 4:
            raise fail(f"element {i} must be [start, end, mention, label], got {item!r:.80}")
        start, end, mention, label = item
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end)):
            raise fail(f"element {i} {item!r}: start and end must be integers")
        if not isinstance(mention, str) or not isinstance(label, str) or not label:
            raise fail(f"element {i} {item!r}: mention and label must be strings (label non-empty)")
        entities.append((start, end, mention, label))
    return text, entities


def entity_span(
    doc: Doc,
    words: Sequence[str],
    entity: Entity,
    *,
    end: str,
    char_level: bool,
    path: Union[str, Path],
    line_no: int,
) -> Span:
    """The Span an entity points at, after checking it against its mention."""
    start, last, mention, label = entity
    stop = last + 1 if end == "inclusive" else last
    unit = "character" if char_level else "token"
    joiner = "" if char_level else " "
    problem = None
    if start < 0:
        problem = f"start {start} is negative"
    elif stop <= start:
        problem = f"the span is empty (start {start}, end {last}, end is {end})"
    elif stop > len(words):
        problem = f"it ends past the last {unit}, index {len(words) - 1}"
    if problem:
        raise ValueError(
            Errors.E2033.format(
                path=path, line=line_no, entity=list(entity), n=len(words), unit=unit, problem=problem,
                hint=_hint(words, entity, end=end, char_level=char_level),
            )
        )
    found = joiner.join(words[start:stop])
    if found != mention:
        raise ValueError(
            Errors.E2034.format(
                path=path, line=line_no, entity=list(entity), unit=unit, found=found,
                hint=_hint(words, entity, end=end, char_level=char_level),
            )
        )
    return Span(doc, start, stop, label=label)


def _hint(words: Sequence[str], entity: Entity, *, end: str, char_level: bool) -> str:
    """What to change when an entity does not fit: the other end convention,
    character tokens, or the file itself."""
    start, last, mention, _ = entity
    other = "exclusive" if end == "inclusive" else "inclusive"
    other_stop = last if end == "inclusive" else last + 1
    joiner = "" if char_level else " "
    if 0 <= start < other_stop <= len(words) and joiner.join(words[start:other_stop]) == mention:
        return f"It matches with end={other!r}: pass that for this file."
    if not char_level and " " not in mention and len(mention) > 1:
        text = "".join(words)
        stop = last + 1 if end == "inclusive" else last
        if text[start:stop] == mention or text[start:other_stop] == mention:
            return "It matches the text's characters: pass lang='zh' for character-indexed corpora."
    return f"Fix the indices or the mention in the file, and check that end={end!r} is the file's convention."


def line_to_doc(
    vocab: Vocab,
    line: str,
    *,
    path: Union[str, Path],
    line_no: int,
    end: str = "inclusive",
    spans_key: str = DEFAULT_SPANS_KEY,
    char_level: bool = False,
) -> Doc:
    """One annotated Doc: all spans in the span group, a flat subset as ents."""
    text, entities = parse_line(line, path, line_no)
    words, spaces = tokenize(text, char_level)
    if not char_level and "" in words:
        raise ValueError(Errors.E2035.format(path=path, line=line_no, i=words.index("")))
    doc = Doc(vocab, words=words, spaces=spaces)
    spans = [
        entity_span(doc, words, entity, end=end, char_level=char_level, path=path, line_no=line_no)
        for entity in entities
    ]
    doc.spans[spans_key] = SpanGroup(doc, name=spans_key, spans=spans)
    doc.ents = filter_spans(spans)
    return doc


def read_jsonl_docs(
    path: Union[str, Path],
    vocab: Union[Language, Vocab, None] = None,
    *,
    end: str = "inclusive",
    spans_key: str = DEFAULT_SPANS_KEY,
    lang: Optional[str] = None,
) -> Iterator[Doc]:
    """Stream the annotated Docs of a JSONL file, one per non-blank line.

    `vocab` may be an `nlp` object or a Vocab (a fresh one when omitted).
    `lang` defaults to the pipeline's language, else "en"; "zh" makes one
    token per character, as the Chinese corpora index characters.
    """
    check_end(end, path)
    path = Path(path)
    if not path.is_file():
        raise ValueError(Errors.E2038.format(path=path))
    char_level = resolve_lang(lang, vocab) in CHARACTER_LANGS
    if isinstance(vocab, Language):
        vocab = vocab.vocab
    elif vocab is None:
        vocab = Vocab()
    with path.open(encoding="utf8") as file_:
        for line_no, line in enumerate(file_, 1):
            if not line.strip():
                continue
            yield line_to_doc(
                vocab, line, path=path, line_no=line_no, end=end, spans_key=spans_key, char_level=char_level
            )


def to_example(reference: Doc) -> Example:
    """Pair a gold Doc with an unannotated copy of its words, as spaCy's
    readers do, so components predict on exactly the gold tokens."""
    predicted = Doc(
        reference.vocab,
        words=[token.text for token in reference],
        spaces=[bool(token.whitespace_) for token in reference],
    )
    return Example(predicted, reference)


class JsonlCorpus:
    """A reader for `[corpora]`/`[training]` configs: called with `nlp`, it
    yields Examples, reading the file again on every call (every epoch)."""

    def __init__(
        self,
        path: Union[str, Path],
        *,
        end: str = "inclusive",
        spans_key: str = DEFAULT_SPANS_KEY,
        lang: Optional[str] = None,
        limit: int = 0,
        shuffle: bool = False,
        skip: int = 0,
        context_sentences: int = 0,
        context_share: float = 1.0,
        joined_lines: int = 0,
        joined_share: float = 1.0,
        joined_max_words: int = 40,
    ) -> None:
        check_end(end, path)
        if skip < 0 or limit < 0:
            raise ValueError(Errors.E2039.format(path=path, skip=skip, limit=limit))
        if not _is_count(context_sentences):
            raise ValueError(Errors.E2105.format(value=context_sentences))
        if not _is_share(context_share):
            raise ValueError(Errors.E2106.format(value=context_share))
        for name, value in (("joined_lines", joined_lines), ("joined_max_words", joined_max_words)):
            if not _is_count(value):
                raise ValueError(Errors.E2107.format(name=name, value=value))
        if not _is_share(joined_share):
            raise ValueError(Errors.E2108.format(value=joined_share))
        if joined_lines > 1 and context_sentences:
            raise ValueError(Errors.E2109)
        self.path = Path(path)
        self.end = end
        self.spans_key = spans_key
        self.lang = lang
        self.limit = limit
        self.shuffle = shuffle
        self.skip = skip
        self.context_sentences = context_sentences
        self.context_share = float(context_share)
        self.joined_lines = joined_lines
        self.joined_share = float(joined_share)
        self.joined_max_words = joined_max_words

    def __call__(self, nlp: Language) -> Iterator[Example]:
        docs = read_jsonl_docs(self.path, nlp, end=self.end, spans_key=self.spans_key, lang=self.lang)
        if self.context_sentences:
            docs = with_preceding_context(docs, self.context_sentences, self.context_share)
        if self.joined_lines > 1:
            docs = join_lines(docs, self.joined_lines, self.joined_share, self.joined_max_words)
        stop = self.skip + self.limit if self.limit else None
        selected: Any = itertools.islice(docs, self.skip, stop)
        if self.shuffle:
            selected = list(selected)
            random.shuffle(selected)
        for doc in selected:
            yield to_example(doc)


# `doc.user_data` key of the text before a training doc (`context_sentences`),
# which training puts before its prompt as the long-document memory would.
CONTEXT_KEY = "padellm_context"


def _is_count(value: Any) -> bool:
    """A whole number of 0 or more (a bool is an int to Python, not to a config)."""
    return not isinstance(value, bool) and isinstance(value, int) and value >= 0


def _is_share(value: Any) -> bool:
    """A number from 0 to 1."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value <= 1


def with_preceding_context(docs: Iterator[Doc], n: int, share: float = 1.0) -> Iterator[Doc]:
    """Each doc with the text of the `n` lines before it in the file (joined
    by spaces) in `doc.user_data[CONTEXT_KEY]`: the files keep their
    articles' sentences in order, so this is the text a long-document memory
    holds when the doc is a segment of its article. The first doc has none.

    With `share` < 1 only that share of the docs (drawn with Python's
    `random`, which `spacy train` seeds) gets its context, the rest none:
    behind the memory a doc's first segment has no context and the later
    ones have some. (Behind context the sentence-trained model also counts
    the context's entities, so training first makes it count fewer
    everywhere: with half the texts at 1e-3, dev[0:100] F fell from 93.6 to
    84.4 at step 50 and came back to 93.0 by step 300 as the rate decayed,
    `configs/smollm2_lora_context_cpu.cfg`. On context alone at 1e-4 it fell
    to 29.2 in 25 steps.)"""
    before: Deque[str] = deque(maxlen=n)
    for doc in docs:
        if before and (share >= 1 or random.random() < share):
            doc.user_data[CONTEXT_KEY] = " ".join(before)
        before.append(doc.text)
        yield doc


def join_lines(docs: Iterator[Doc], most: int, share: float, max_words: int) -> Iterator[Doc]:
    """Consecutive lines joined by spaces into one training text, with all
    their spans: what a segment is when the sentence split missed a
    boundary (a dateline run into its story, results rows run together),
    which a model trained on single lines reads badly (60 steps of it did
    not help the shipped adapter there: README, "Long documents"). With `share` < 1
    only that share of the texts (drawn with Python's `random`, which
    `spacy train` seeds) starts a joined text, of 2 to `most` lines drawn
    alike, and a line that would take it past `max_words` words is not
    added; the other lines stay as they are."""
    group: List[Doc] = []
    want = 1
    for doc in docs:
        if group and (len(group) >= want or sum(len(d) for d in group) + len(doc) > max_words):
            yield _join(group)
            group = []
        if not group:
            want = random.randint(2, most) if (share >= 1 or random.random() < share) else 1
        group.append(doc)
    if group:
        yield _join(group)


def _join(docs: List[Doc]) -> Doc:
    """One doc of `docs` joined by single spaces; spaCy shifts their span
    groups and entities."""
    return docs[0] if len(docs) == 1 else Doc.from_docs(docs, ensure_whitespace=True)


def make_jsonl_corpus(
    path: Path,
    end: str = "inclusive",
    spans_key: str = DEFAULT_SPANS_KEY,
    lang: Optional[str] = None,
    limit: int = 0,
    shuffle: bool = False,
    skip: int = 0,
    context_sentences: int = 0,
    context_share: float = 1.0,
    joined_lines: int = 0,
    joined_share: float = 1.0,
    joined_max_words: int = 40,
) -> Callable[[Language], Iterator[Example]]:
    """`spacy_padellm.JsonlCorpus.v1`: like `spacy.Corpus.v1`, for the JSONL
    corpora. `end` is the file's end convention ("exclusive" for genia);
    `lang` overrides the pipeline's language ("zh": character tokens).
    `skip` and `limit` (> 0) select a fixed range of lines in file order,
    which is how one file is split into a training and a selection part
    (genia has a dev split only); `shuffle` then reorders that range (with
    Python's `random`, which `spacy train` seeds). `context_sentences` > 0
    trains with preceding context: each text's prompt follows the text of
    the lines before it, as behind the long-document memory; `context_share`
    gives that context to only a share of the texts (drawn anew each epoch).
    `joined_lines` > 1 joins that share (`joined_share`) of the texts with
    the lines after them, 2 to `joined_lines` lines of at most
    `joined_max_words` words in all, into one text with all their spans:
    the shape of a segment whose sentence boundary the split missed."""
    return JsonlCorpus(
        path, end=end, spans_key=spans_key, lang=lang, limit=limit, shuffle=shuffle, skip=skip,
        context_sentences=context_sentences, context_share=context_share,
        joined_lines=joined_lines, joined_share=joined_share, joined_max_words=joined_max_words,
    )
