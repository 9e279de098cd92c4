"""Where PaDeLLM loses recall: the count step or the mention step.

For every (sentence, label) of a JSONL slice, compares the decoded count with
the gold count, and
counts the gold entities lost to counts that were too low, the spurious
branches of counts that were too high, and, where the count was right, the
gold mentions the generated strings missed (compared as the aligner does,
ignoring case and whitespace).

    python benchmarks/count_errors.py ../shared/data/conll03/dev.jsonl --skip 500 --limit 300
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from spacy_padellm.corpus import make_jsonl_corpus
from spacy_padellm.training import gold_mentions

sys.path.insert(0, str(Path(__file__).parent))
import systems  # noqa: E402


def _loose(string: str) -> str:
    return "".join(string.split()).lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--skip", type=int, default=0)
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--end", default="inclusive")
    parser.add_argument("--pipeline", default=None, help="a saved pipeline (default: the shipped default model)")
    parser.add_argument("--zero-count-penalty", type=float, default=None)
    args = parser.parse_args()

    nlp = systems.padellm("parallel", args.pipeline).nlp
    pipe = nlp.get_pipe("padellm_ner")
    if args.zero_count_penalty is not None:
        pipe.cfg["zero_count_penalty"] = args.zero_count_penalty
    pipe._ensure_loaded()
    pipe.shim.merge_for_inference()
    docs = [eg.reference for eg in make_jsonl_corpus(args.path, end=args.end, skip=args.skip, limit=args.limit)(nlp)]
    stats: Counter = Counter()
    size = pipe.cfg["batch_size"]
    for begin in range(0, len(docs), size):
        batch = docs[begin : begin + size]
        for doc, pred in zip(batch, pipe._decoder([d.text for d in batch])):
            gold = gold_mentions(doc, pipe.spans_key, pipe.labels)
            for label in pipe.labels:
                count = pred.counts.get(label, 0)
                wanted = [span.text for span in gold[label]]
                stats["gold"] += len(wanted)
                if count < len(wanted):
                    stats["counts too low"] += 1
                    stats["gold lost to low counts"] += len(wanted) - count
                elif count > len(wanted):
                    stats["counts too high"] += 1
                    stats["branches from high counts"] += count - len(wanted)
                else:
                    stats["counts exact"] += 1
                    strings = [m.text for m in pred.mentions if m.label == label]
                    missing = Counter(map(_loose, wanted)) - Counter(map(_loose, strings))
                    stats["gold missed with exact count"] += sum(missing.values())
    print(json.dumps(dict(stats), indent=2))


if __name__ == "__main__":
    main()
