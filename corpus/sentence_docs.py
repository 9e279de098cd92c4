"""Docs of consecutive sentences, with their boundaries, for training the
shipped sentence splitter (`configs/senter_cpu.cfg`).

A doc without `doc.sents` is split into sentences before it is decoded
(`spacy_padellm/segments.py`). spaCy's rules miss every sentence that does
not end in a full stop: headlines, datelines, results tables. On CoNLL-03
text joined by spaces they merged 500 sentences into 263, and span F1 fell
by 10 points, because the model finds fewer entities in a merged text. A
small `senter` trained on the same kind of text finds those boundaries.

The sentences of a JSONL file (../shared/data's format) are read in order
and joined into docs of 1 to `--max-sentences` sentences, by a space, a line
break or a blank line; half the docs are also detokenized ("Smith , who"
becomes "Smith, who"), as users' text is. `--copies N` writes N such
passes over the file, each cut and joined differently (seeds seed, seed+1,
...), so that each boundary is seen behind more than one separator.

    python corpus/sentence_docs.py ../shared/data/conll03/train.jsonl corpus/senter-train.spacy
"""
import argparse
import json
import random
import re
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import spacy
from spacy.language import Language
from spacy.tokens import Doc, DocBin

SEPARATORS = [" "] * 8 + ["\n", "\n\n"]
# A space before closing punctuation, and after opening, goes in detokenized text.
_BEFORE = re.compile(r" ([,.;:!?%)\]}]|'s\b|n't\b|'re\b|'ll\b|'ve\b|'d\b|'m\b)")
_AFTER = re.compile(r"([(\[{$]) ")


def detokenize(text: str) -> str:
    return _AFTER.sub(r"\1", _BEFORE.sub(r"\1", text))


def read_texts(path: Path) -> List[str]:
    with path.open(encoding="utf8") as f:
        return [json.loads(line)[0] for line in f if line.strip()]


def joined_doc(nlp: Language, sentences: Sequence[str], separators: Sequence[str]) -> Doc:
    """One doc of the sentences; a token starts a sentence when its first
    character starts one."""
    starts, pieces, offset = set(), [], 0
    for k, sentence in enumerate(sentences):
        if k:
            pieces.append(separators[k - 1])
            offset += len(separators[k - 1])
        starts.add(offset)
        pieces.append(sentence)
        offset += len(sentence)
    doc = nlp.make_doc("".join(pieces))
    for token in doc:
        token.is_sent_start = token.idx in starts and not token.is_space
    return doc


def sentence_docs(nlp: Language, texts: Sequence[str], max_sentences: int, seed: int) -> Iterator[Doc]:
    rng = random.Random(seed)
    i = 0
    while i < len(texts):
        n = rng.randint(1, max_sentences)
        chunk = list(texts[i : i + n])
        i += n
        if rng.random() < 0.5:
            chunk = [detokenize(t) for t in chunk]
        yield joined_doc(nlp, chunk, [rng.choice(SEPARATORS) for _ in chunk[1:]])


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="JSONL file in the format of ../shared/data")
    parser.add_argument("output", type=Path, help="the .spacy file to write")
    parser.add_argument("--lang", default="en")
    parser.add_argument("--lines", default="", help="START:STOP of the input (default: all)")
    parser.add_argument("--max-sentences", type=int, default=40, help="most sentences per doc (default: 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copies", type=int, default=1, help="passes over the file, each joined differently (default: 1)")
    args = parser.parse_args(argv)
    texts = read_texts(args.input)
    if args.lines:
        start, stop = (int(x) for x in args.lines.split(":"))
        texts = texts[start:stop]
    nlp = spacy.blank(args.lang)
    if args.copies < 1:
        parser.error(f"--copies must be at least 1, not {args.copies}")
    docs = [doc for k in range(args.copies) for doc in sentence_docs(nlp, texts, args.max_sentences, args.seed + k)]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=docs).to_disk(args.output)
    sents = sum(len(list(d.sents)) for d in docs)
    print(f"Wrote {args.output}: {len(docs)} docs, {sents} sentences, {sum(len(d) for d in docs)} tokens")


if __name__ == "__main__":
    main()
