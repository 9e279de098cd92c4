"""Training texts shaped like the segments the component decodes when a doc
comes without sentence boundaries.

A doc without `doc.sents` is cut into segments (`spacy_padellm/segments.py`):
the shipped senter's sentences, packed up to a small budget, run-ons cut
into parts. In text joined by spaces the senter misses boundaries that leave
no trace (results tables, itineraries, lists of names, a dateline run into
its story), and such a segment holds parts of several training lines: a text
unlike any the model was trained on, where it loses entities. This joins
consecutive lines of a JSONL file (../shared/data's format) into docs of
`--sentences` lines by single spaces, cuts each doc as the default pipeline
would, and writes every segment that is not exactly one of the file's
lines, with the gold entities that lie wholly inside it, in the same JSONL
format (whitespace tokens, end index inclusive). `--plain` adds that many
times as many of the file's own lines, drawn at random, so that fine-tuning
on the output keeps the model's hold on single sentences.

    python corpus/segment_texts.py ../shared/data/conll03/train.jsonl corpus/segments-train.jsonl
"""
import argparse
import json
import random
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import spacy


def read_rows(path: Path) -> List[list]:
    with path.open(encoding="utf8") as f:
        return [json.loads(line) for line in f if line.strip()]


def joined(rows: Sequence[list]) -> Tuple[str, List[Tuple[int, int, str]]]:
    """The rows' texts joined by spaces, and their entities as character
    offsets [start, end) in it (rows are whitespace-tokenized, end inclusive)."""
    pieces, entities, offset = [], [], 0
    for row in rows:
        words = row[0].split(" ")
        starts = []
        for w in words:
            starts.append(offset)
            offset += len(w) + 1
        for s, e, _, label in row[1:]:
            entities.append((starts[s], starts[e] + len(words[e]), label))
        pieces.append(row[0])
    return " ".join(pieces), entities


def segment_rows(text: str, entities: Sequence[Tuple[int, int, str]], cuts: Sequence[Tuple[int, int]]) -> Iterator[list]:
    """Each cut [start, end) of `text` as a row: its whitespace tokens and the
    entities inside it (entities across a cut are left out, as the segment
    holds only part of them). Cuts that do not fall on spaces are skipped."""
    for start, end in cuts:
        while start < end and text[start] == " ":
            start += 1
        while end > start and text[end - 1] == " ":
            end -= 1
        if start >= end or (start and text[start - 1] != " ") or (end < len(text) and text[end] != " "):
            continue
        words = text[start:end].split(" ")
        token_at, position = {}, start
        for k, w in enumerate(words):
            token_at[position] = k
            token_at[position + len(w)] = k  # an end offset maps to its token
            position += len(w) + 1
        row: list = [text[start:end]]
        for a, b, label in entities:
            if start <= a and b <= end and a in token_at and b in token_at:
                row.append([token_at[a], token_at[b], text[a:b], label])
        yield row


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="JSONL file in the format of ../shared/data (end inclusive)")
    parser.add_argument("output", type=Path, help="the JSONL file to write")
    parser.add_argument("--sentences", type=int, default=50, help="lines joined into one doc (default: 50)")
    parser.add_argument("--plain", type=float, default=1.0, help="the file's own lines to add, as a multiple of the segments written (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.sentences < 2:
        parser.error(f"--sentences must be at least 2, not {args.sentences}")
    rows = read_rows(args.input)
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("padellm_ner")
    pipe._ensure_loaded()  # the model's tokenizer sizes the segments
    lines = {row[0] for row in rows}
    written: List[list] = []
    for i in range(0, len(rows), args.sentences):
        text, entities = joined(rows[i : i + args.sentences])
        doc = nlp.make_doc(text)
        cuts = [(seg.start, seg.end) for seg in pipe._segments(doc)]
        written.extend(row for row in segment_rows(text, entities, cuts) if row[0] not in lines)
    rng = random.Random(args.seed)
    plain = rng.sample(rows, min(len(rows), round(args.plain * len(written))))
    out = written + plain
    rng.shuffle(out)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf8") as f:
        for row in out:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"Wrote {args.output}: {len(written)} segments that are not one line, {len(plain)} lines")


if __name__ == "__main__":
    main()
