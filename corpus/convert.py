"""Convert an NER corpus to a spaCy DocBin (`.spacy`) for `spacy train`.

    python corpus/convert.py ../shared/data/conll03/train.jsonl corpus/conll03-train.spacy

The conversion itself lives in `spacy_padellm.convert` (importable and
tested); this script only parses the command line and reports progress.
"""
import argparse
import itertools
import sys
from typing import List, Optional

from spacy_padellm.convert import FORMATS, ConversionSummary, convert_docs, write_docbin
from spacy_padellm.corpus import DEFAULT_SPANS_KEY, END_CONVENTIONS


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="the corpus file to read")
    parser.add_argument("output", help="the .spacy file to write (folders are created)")
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="input format (default: jsonl)")
    parser.add_argument(
        "--end", choices=END_CONVENTIONS, default="inclusive",
        help="jsonl end index convention: inclusive (conll03, weibo, resume) or exclusive (genia)",
    )
    parser.add_argument("--lang", default="en", help="language; zh makes one token per character (default: en)")
    parser.add_argument("--spans-key", default=DEFAULT_SPANS_KEY, help="doc.spans key for the gold spans")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first SKIP sentences (default: 0)")
    parser.add_argument(
        "--limit", type=int, default=0,
        help="keep at most LIMIT sentences after those skipped (default: 0, all); with --skip, this "
        "splits one file into parts, as for genia, which has a dev split only",
    )
    args = parser.parse_args(argv)
    if args.skip < 0 or args.limit < 0:
        parser.error("--skip and --limit must be 0 or more")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)

    def progress(summary: ConversionSummary) -> None:
        print(f"{summary.docs} docs, {summary.spans} spans ...", flush=True)

    try:
        docs = convert_docs(args.input, format=args.format, end=args.end, lang=args.lang, spans_key=args.spans_key)
        docs = itertools.islice(docs, args.skip, args.skip + args.limit if args.limit else None)
        summary = write_docbin(docs, args.output, spans_key=args.spans_key, progress=progress)
    except ValueError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    print(
        f"Wrote {args.output}: {summary.docs} docs, {summary.spans} spans in "
        f"doc.spans[{args.spans_key!r}], {summary.ents} in doc.ents."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
