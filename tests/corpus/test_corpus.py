"""The JSONL reader, its registration and the converters, on tiny files
written per test (the real corpora are only read, if present, at the end)."""
import json
import subprocess
import sys
from itertools import islice
from pathlib import Path
from typing import List

import pytest
import spacy
from spacy.training import Example

from spacy_padellm.convert import (
    conll_to_docs,
    convert_docs,
    iob_spans,
    json_to_docs,
    read_docbin,
    write_docbin,
)
from spacy_padellm.corpus import make_jsonl_corpus, read_jsonl_docs

ROOT = Path(__file__).parents[2]
DATA = Path(__file__).parents[3] / "shared" / "data"
READER = "spacy_padellm.JsonlCorpus.v1"

JAPAN = ["Japan began the defence of their Asian Cup title .", [0, 0, "Japan", "LOC"], [6, 7, "Asian Cup", "MISC"]]
NESTED = [
    "of the c-fos and c-jun genes .",
    [2, 6, "c-fos and c-jun genes", "DNA"],
    [2, 3, "c-fos", "DNA"],
    [4, 6, "c-jun genes", "DNA"],
    [5, 6, "genes", "protein"],
]


def write_jsonl(path: Path, rows: List) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf8")
    return path


def write_lines(path: Path, lines: List[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    return path


def spans_of(doc, key: str = "padellm"):
    return [(s.start, s.end, s.label_, s.text) for s in doc.spans[key]]


def ents_of(doc):
    return [(s.start, s.end, s.label_, s.text) for s in doc.ents]


# --- reading --------------------------------------------------------------


def test_inclusive_end(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [JAPAN])
    (doc,) = read_jsonl_docs(path, end="inclusive")
    assert [t.text for t in doc] == JAPAN[0].split(" ")
    assert doc.text == JAPAN[0]
    assert spans_of(doc) == [(0, 1, "LOC", "Japan"), (6, 8, "MISC", "Asian Cup")]
    assert ents_of(doc) == spans_of(doc)


def test_exclusive_end(tmp_path: Path) -> None:
    row = ["Japan began the defence of their Asian Cup title .", [0, 1, "Japan", "LOC"], [6, 8, "Asian Cup", "MISC"]]
    (doc,) = read_jsonl_docs(write_jsonl(tmp_path / "g.jsonl", [row]), end="exclusive")
    assert spans_of(doc) == [(0, 1, "LOC", "Japan"), (6, 8, "MISC", "Asian Cup")]


def test_nested_spans_in_group_flat_ents(tmp_path: Path) -> None:
    (doc,) = read_jsonl_docs(write_jsonl(tmp_path / "g.jsonl", [NESTED]), end="exclusive")
    assert len(doc.spans["padellm"]) == 4
    assert spans_of(doc)[1] == (2, 3, "DNA", "c-fos")
    # filter_spans keeps the longest, non-overlapping span
    assert ents_of(doc) == [(2, 6, "DNA", "c-fos and c-jun genes")]


def test_custom_spans_key_and_empty_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(["No entities here ."]) + "\n\n   \n" + json.dumps(JAPAN) + "\n", encoding="utf8")
    docs = list(read_jsonl_docs(path, spans_key="gold"))
    assert len(docs) == 2
    assert list(docs[0].spans["gold"]) == [] and docs[0].ents == ()
    assert len(docs[1].spans["gold"]) == 2 and "padellm" not in docs[1].spans


def test_repeated_mentions(tmp_path: Path) -> None:
    row = ["China beat China in China .", [0, 0, "China", "LOC"], [2, 2, "China", "ORG"], [4, 4, "China", "LOC"]]
    (doc,) = read_jsonl_docs(write_jsonl(tmp_path / "c.jsonl", [row]))
    assert spans_of(doc) == [(0, 1, "LOC", "China"), (2, 3, "ORG", "China"), (4, 5, "LOC", "China")]
    assert len(doc.ents) == 3


def test_chinese_characters(tmp_path: Path) -> None:
    row = ["吴重阳，中国国籍。", [0, 2, "吴重阳", "NAME"], [4, 7, "中国国籍", "CONT"]]
    path = write_jsonl(tmp_path / "r.jsonl", [row])
    for docs in (read_jsonl_docs(path, lang="zh"), read_jsonl_docs(path, spacy.blank("zh"))):
        (doc,) = list(docs)
        assert len(doc) == len(row[0]) and doc.text == row[0]
        assert spans_of(doc) == [(0, 3, "NAME", "吴重阳"), (4, 8, "CONT", "中国国籍")]
    # read as English, the text is one token: the error says to pass lang='zh'
    with pytest.raises(ValueError, match="lang='zh'"):
        list(read_jsonl_docs(path))


@pytest.mark.parametrize(
    "line,end,message",
    [
        ('["Japan began", [0, 0, "Japan", "LOC"]', "inclusive", "E2031.*not valid JSON"),
        ('{"text": "Japan"}', "inclusive", "E2032.*JSON array"),
        ("[]", "inclusive", "E2032.*non-empty"),
        ('[3, [0, 0, "Japan", "LOC"]]', "inclusive", "E2032.*element 0"),
        ('["Japan began", [0, 0, "Japan"]]', "inclusive", "E2032.*element 1"),
        ('["Japan began", ["0", 0, "Japan", "LOC"]]', "inclusive", "E2032.*integers"),
        ('["Japan began", [0, 0, "Japan", ""]]', "inclusive", "E2032.*label"),
        ('["Japan began", [1, 2, "began", "LOC"]]', "inclusive", "E2033.*past the last token"),
        ('["Japan began", [-1, 0, "Japan", "LOC"]]', "inclusive", "E2033.*negative"),
        ('["Japan began", [1, 1, "began", "LOC"]]', "exclusive", "E2033.*empty"),
        ('["Japan began", [0, 0, "Japan", "LOC"]]', "exclusive", "E2033.*end='inclusive'"),
        ('["Japan began", [0, 1, "Japan", "LOC"]]', "inclusive", "E2034.*'Japan began'.*end='exclusive'"),
        ('["Japan began", [1, 1, "Japan", "LOC"]]', "inclusive", "E2034.*'began'.*Fix the indices"),
        ('["Japan  began"]', "inclusive", "E2035.*empty token at position 1"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, line: str, end: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(["A valid line ."]) + "\n\n" + line + "\n", encoding="utf8")
    with pytest.raises(ValueError, match=message) as err:
        list(read_jsonl_docs(path, end=end))
    assert f"{path}, line 3:" in str(err.value)


def test_unknown_end_and_missing_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [JAPAN])
    with pytest.raises(ValueError, match="E2030.*'both'.*c.jsonl.*exclusive"):
        list(read_jsonl_docs(path, end="both"))
    with pytest.raises(ValueError, match="E2030"):
        make_jsonl_corpus(path, end="both")
    with pytest.raises(ValueError, match="E2038.*missing.jsonl"):
        list(read_jsonl_docs(tmp_path / "missing.jsonl"))


# --- the registered reader --------------------------------------------------


def test_registered_reader_yields_examples_for_evaluate(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [JAPAN, NESTED[:1] + [[2, 2, "c-fos", "DNA"]], ["Nothing ."]])
    assert spacy.registry.readers.get(READER) is make_jsonl_corpus
    config = {"corpus": {"@readers": READER, "path": str(path), "spans_key": "gold"}}
    corpus = spacy.registry.resolve(config)["corpus"]
    nlp = spacy.blank("en")
    examples = list(corpus(nlp))
    assert len(examples) == 3 and all(isinstance(eg, Example) for eg in examples)
    eg = examples[0]
    assert [t.text for t in eg.predicted] == [t.text for t in eg.reference]
    assert eg.predicted.ents == () and not eg.predicted.spans
    assert eg.predicted.vocab is nlp.vocab
    assert len(eg.reference.spans["gold"]) == 2
    scores = nlp.evaluate(examples)
    assert scores["token_acc"] == 1.0


def test_reader_limit_shuffle_and_lang(tmp_path: Path) -> None:
    rows = [[f"Text {i} ."] for i in range(10)]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    nlp = spacy.blank("en")
    assert len(list(make_jsonl_corpus(path, limit=3)(nlp))) == 3
    # skip + limit: a fixed range in file order, shuffled only within it
    part = [eg.reference.text for eg in make_jsonl_corpus(path, skip=2, limit=3, shuffle=True)(nlp)]
    assert sorted(part) == ["Text 2 .", "Text 3 .", "Text 4 ."]
    rest = [eg.reference.text for eg in make_jsonl_corpus(path, skip=5)(nlp)]
    assert rest == [f"Text {i} ." for i in range(5, 10)]
    with pytest.raises(ValueError, match="skip=-1"):
        make_jsonl_corpus(path, skip=-1)
    texts = [eg.reference.text for eg in make_jsonl_corpus(path, shuffle=True)(nlp)]
    assert sorted(texts) == sorted(row[0] for row in rows)
    # called again (the next epoch), it reads the file again
    corpus = make_jsonl_corpus(path)
    assert len(list(corpus(nlp))) == len(list(corpus(nlp))) == 10
    zh = write_jsonl(tmp_path / "zh.jsonl", [["吴重阳。", [0, 2, "吴重阳", "NAME"]]])
    (eg,) = make_jsonl_corpus(zh, lang="zh")(nlp)
    assert len(eg.reference) == 4 and len(eg.predicted) == 4
    (eg,) = make_jsonl_corpus(zh)(spacy.blank("zh"))
    assert eg.reference.spans["padellm"][0].text == "吴重阳"


# --- converters ---------------------------------------------------------------


def test_jsonl_docbin_round_trip(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "g.jsonl", [NESTED, ["Nothing ."]])
    output = tmp_path / "out" / "g.spacy"
    seen = []
    summary = write_docbin(convert_docs(path, format="jsonl", end="exclusive"), output, progress=seen.append, every=1)
    assert (summary.docs, summary.spans, summary.ents) == (2, 4, 1)
    assert len(seen) == 2
    docs = read_docbin(output)
    assert [d.text for d in docs] == [NESTED[0], "Nothing ."]
    assert spans_of(docs[0]) == [(s, e, label, m) for s, e, m, label in NESTED[1:]]
    assert ents_of(docs[0]) == [(2, 6, "DNA", "c-fos and c-jun genes")]


CONLL = [
    "-DOCSTART- -X- -X- O",
    "",
    "EU NNP B-NP I-ORG",
    "rejects VBZ B-VP O",
    "German JJ B-NP I-MISC",
    "call NN I-NP O",
    ".",  # one column: an error, replaced in the error test only
]


def test_conll_round_trip(tmp_path: Path) -> None:
    lines = CONLL[:-1] + [". . O O", "", "Peter NNP I-PER", "Blackburn NNP I-PER", "Paul NNP B-PER", "", ""]
    path = write_lines(tmp_path / "train.conll", lines)
    docs = list(conll_to_docs(path, spans_key="gold"))
    assert [d.text for d in docs] == ["EU rejects German call .", "Peter Blackburn Paul"]
    assert spans_of(docs[0], "gold") == [(0, 1, "ORG", "EU"), (2, 3, "MISC", "German")]
    # IOB1: B- separates two adjacent entities of the same label
    assert spans_of(docs[1], "gold") == [(0, 2, "PER", "Peter Blackburn"), (2, 3, "PER", "Paul")]
    output = tmp_path / "train.spacy"
    summary = write_docbin(convert_docs(path, format="conll", spans_key="gold"), output, spans_key="gold")
    assert (summary.docs, summary.spans) == (2, 4)
    loaded = read_docbin(output)
    assert [spans_of(d, "gold") for d in loaded] == [spans_of(d, "gold") for d in docs]
    assert [ents_of(d) for d in loaded] == [spans_of(d, "gold") for d in docs]


def test_conll_chinese_and_iob2(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "zh.conll", ["吴 B-NAME", "重 I-NAME", "阳 I-NAME", "， O", "中 B-CONT", "国 I-CONT"])
    (doc,) = conll_to_docs(path, lang="zh")
    assert doc.text == "吴重阳，中国"
    assert spans_of(doc) == [(0, 3, "NAME", "吴重阳"), (4, 6, "CONT", "中国")]


def test_iob_variants_and_conll_errors(tmp_path: Path) -> None:
    lines = [1, 2, 3, 4, 5]
    assert iob_spans(["S-A", "B-A", "E-A", "I-B", "U-C"], path="x", line_nos=lines) == [
        (0, 1, "A"), (1, 3, "A"), (3, 4, "B"), (4, 5, "C")
    ]
    assert iob_spans(["I-A", "I-B", "O", "I-B"], path="x", line_nos=lines) == [(0, 1, "A"), (1, 2, "B"), (3, 4, "B")]
    path = write_lines(tmp_path / "bad.conll", CONLL)
    with pytest.raises(ValueError, match=r"E2036.*bad.conll, line 7:.*one column"):
        list(conll_to_docs(path))
    path = write_lines(tmp_path / "tag.conll", ["EU X-ORG"])
    with pytest.raises(ValueError, match=r"E2036.*tag.conll, line 1:.*'X-ORG'"):
        list(conll_to_docs(path))
    with pytest.raises(ValueError, match="E2037.*jsonl, conll, json"):
        convert_docs(path, format="csv")


def test_json_v2_format(tmp_path: Path) -> None:
    data = [{
        "id": 0,
        "paragraphs": [{
            "raw": "EU rejects German call",
            "sentences": [{
                "tokens": [
                    {"id": 0, "orth": "EU", "ner": "U-ORG"},
                    {"id": 1, "orth": "rejects", "ner": "O"},
                    {"id": 2, "orth": "German", "ner": "U-MISC"},
                    {"id": 3, "orth": "call", "ner": "O"},
                ]
            }],
        }],
    }]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data), encoding="utf8")
    (doc,) = json_to_docs(path)
    assert spans_of(doc) == [(0, 1, "ORG", "EU"), (2, 3, "MISC", "German")] == ents_of(doc)
    summary = write_docbin(convert_docs(path, format="json"), tmp_path / "train.spacy")
    assert (summary.docs, summary.spans) == (1, 2)


def test_convert_script(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [JAPAN] * 3)
    output = tmp_path / "c.spacy"
    script = ROOT / "corpus" / "convert.py"
    done = subprocess.run([sys.executable, str(script), str(path), str(output)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "3 docs, 6 spans" in done.stdout
    assert len(read_docbin(output)) == 3
    done = subprocess.run(
        [sys.executable, str(script), str(path), str(output), "--end", "exclusive"], capture_output=True, text=True
    )
    assert done.returncode == 1 and "line 1" in done.stderr
    rows = [[f"Text {i} ."] for i in range(6)]
    path = write_jsonl(tmp_path / "parts.jsonl", rows)
    done = subprocess.run(
        [sys.executable, str(script), str(path), str(output), "--skip", "2", "--limit", "3"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert [doc.text for doc in read_docbin(output)] == ["Text 2 .", "Text 3 .", "Text 4 ."]


# --- the real corpora, if present ---------------------------------------------


@pytest.mark.parametrize(
    "name,end,lang",
    [("conll03", "inclusive", "en"), ("genia", "exclusive", "en"), ("resume", "inclusive", "zh")],
)
def test_shared_data_first_lines_are_valid(name: str, end: str, lang: str) -> None:
    source = DATA / name / "dev.jsonl"
    if not source.is_file():
        pytest.skip(f"{source} not present")
    # the reader streams, so only the first 50 lines are read (and checked)
    docs = list(islice(read_jsonl_docs(source, end=end, lang=lang), 50))
    with source.open(encoding="utf8") as file_:
        rows = [json.loads(line) for line in islice(file_, 50)]
    assert len(docs) == 50
    joiner = "" if lang == "zh" else " "
    for doc, row in zip(docs, rows):
        assert doc.text == row[0]
        spans = doc.spans["padellm"]
        assert len(spans) == len(row) - 1
        for span, (_, _, mention, label) in zip(spans, row[1:]):
            assert joiner.join(t.text for t in span) == mention and span.label_ == label


def test_sentence_docs_copies_are_joined_differently(tmp_path):
    """`--copies 3`: three passes over the file, every sentence start in each,
    cut into docs differently in each pass."""
    import spacy
    from spacy.tokens import DocBin

    from corpus.sentence_docs import main as sentence_docs

    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps([f"Leeds {i} Chelsea 1"]) for i in range(40)), encoding="utf8")
    sentence_docs([str(data), str(tmp_path / "docs.spacy"), "--max-sentences", "5", "--copies", "3"])
    docs = list(DocBin().from_disk(tmp_path / "docs.spacy").get_docs(spacy.blank("en").vocab))
    starts = [sum(t.is_sent_start for t in doc) for doc in docs]
    assert sum(starts) == 120
    passes, current, total = [], [], 0
    for n in starts:
        current.append(n)
        total += n
        if total % 40 == 0:
            passes.append(current)
            current = []
    assert len(passes) == 3 and passes[0] != passes[1] != passes[2]


def test_segment_texts_keep_the_entities_inside_each_cut():
    """corpus/segment_texts.py: lines joined by spaces, cut where the
    component would cut them; each cut keeps the entities wholly inside it,
    re-indexed to its own tokens, and cuts inside a word are skipped."""
    from corpus.segment_texts import joined, segment_rows

    rows = [["Leeds 2 Chelsea 1", [0, 0, "Leeds", "ORG"], [2, 2, "Chelsea", "ORG"]],
            ["New York Yankees won", [0, 2, "New York Yankees", "ORG"]]]
    text, entities = joined(rows)
    assert text == "Leeds 2 Chelsea 1 New York Yankees won"
    assert [text[a:b] for a, b, _ in entities] == ["Leeds", "Chelsea", "New York Yankees"]
    cut = text.index("Chelsea")
    between = text.index("York")
    got = list(segment_rows(text, entities, [(0, cut), (cut, between), (between, len(text)), (1, 5)]))
    assert got == [
        ["Leeds 2", [0, 0, "Leeds", "ORG"]],
        ["Chelsea 1 New", [0, 0, "Chelsea", "ORG"]],  # New York Yankees crosses the cut
        ["York Yankees won"],
    ]
