"""How sure the shipped senter must be before a token starts a sentence.

A doc without `doc.sents` is split by the shipped senter. Two sentences left
in one segment lose entities (the model was trained on sentences), while a
sentence cut in two loses almost nothing, so the best threshold on the
senter's probability may lie below the argmax's 0.5. This joins
consecutive dev sentences into docs of N sentences (joined by spaces, no
`doc.sents`), and reports for each threshold the sentence-start precision
and recall, and with `--ner` the span F1 of the default pipeline on those
docs against the same sentences decoded one per doc.

Choose on one part of dev, report on another:

    python benchmarks/senter_threshold.py ../shared/data/conll03/dev.jsonl --lines 0:500 \\
        --thresholds 0.9,0.5,0.3,0.1,0.03,0.01,0.001 --out benchmarks/results/senter_threshold_selection_cpu
    python benchmarks/senter_threshold.py ../shared/data/conll03/dev.jsonl --lines 0:500 \\
        --thresholds 0.5,0.1,0.03 --ner --out benchmarks/results/senter_threshold_selection_ner_cpu
"""
import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from spacy.language import Language
from spacy.scorer import Scorer
from spacy.training import Example

sys.path.insert(0, str(Path(__file__).parent))
import systems  # noqa: E402
from joined_docs import joined_reference, read_rows  # noqa: E402
from long_docs import joined_example, run  # noqa: E402
from line_range import line_range  # noqa: E402
from spacy_padellm import segments  # noqa: E402


def boundary_scores(found: List[set], gold: List[set]) -> Dict[str, float]:
    """Precision, recall and F of sentence starts (the first token of a doc
    is not counted: it always starts one)."""
    tp = sum(len(f & g) for f, g in zip(found, gold))
    n_found, n_gold = sum(map(len, found)), sum(map(len, gold))
    p = tp / n_found if n_found else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"p": round(100 * p, 2), "r": round(100 * r, 2), "f": round(100 * (2 * p * r / (p + r) if p + r else 0.0), 2)}


def decode(nlp: Language, examples: List[Example], batch_size: int) -> Dict[str, float]:
    """Decode the examples' docs in place; span P, R and F, and seconds."""
    seconds, docs = run(nlp, examples, batch_size)
    for eg, doc in zip(examples, docs):
        eg.predicted = doc
    scores = Scorer(nlp).score(examples)
    return {
        "ents_p": round(100 * scores["ents_p"], 2), "ents_r": round(100 * scores["ents_r"], 2),
        "ents_f": round(100 * scores["ents_f"], 2), "seconds": round(seconds, 1),
    }


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="JSONL file in the format of ../shared/data")
    parser.add_argument("--lines", type=line_range, default=(0, 500), help="START:STOP of the data file")
    parser.add_argument("--size", type=int, default=50, help="sentences per doc")
    parser.add_argument("--thresholds", default="0.5,0.3,0.2,0.1,0.05", help="comma-separated probabilities")
    parser.add_argument("--ner", action="store_true", help="also decode the docs at each threshold (slow)")
    parser.add_argument("--batch-size", type=int, default=64, help="nlp.pipe batch size (docs per call)")
    parser.add_argument("--senter", type=Path, default=None, help="a saved senter pipeline to measure instead of the shipped one (a candidate)")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .md)")
    args = parser.parse_args(argv)
    if args.senter:  # the component's splits (--ner) use it too
        segments.SENTENCE_MODEL = args.senter
    thresholds = [float(x) for x in args.thresholds.split(",")]
    if any(not 0.0 < t <= 1.0 for t in thresholds):
        parser.error(f"--thresholds must lie in (0, 1], got {args.thresholds!r}")
    model = segments.sentence_model()
    if model is None:
        parser.error("this install has no shipped senter (spacy_padellm/default_model/senter)")
    system = systems.padellm("parallel")
    nlp = system.nlp
    rows = read_rows(args.data, *args.lines)
    references = [joined_reference(nlp, rows[i : i + args.size]) for i in range(0, len(rows), args.size)]
    # Compared as character offsets: spaCy's tokens need not be the file's.
    gold = [{s.start_char for s in ref.sents if s.start > 0} for ref in references]
    predicted = [nlp.make_doc(ref.text) for ref in references]
    results: List[Dict[str, Any]] = []
    default_threshold = segments.SENTER_THRESHOLD
    base_f: Optional[float] = None
    if args.ner:
        singles = [joined_example(nlp, [row]) for row in rows]
        run(nlp, singles[:1], 1)  # load the model outside the timings
        alone = decode(nlp, singles, args.batch_size)
        base_f = alone["ents_f"]
        print(f"sentences one per doc: F {base_f} ({alone['seconds']:.0f} s)", file=sys.stderr, flush=True)
    for threshold in thresholds:
        found = [{doc[i].idx for i in model(doc, threshold=threshold) if i > 0} for doc in predicted]
        row: Dict[str, Any] = {"threshold": threshold, "starts": boundary_scores(found, gold)}
        if args.ner:
            segments.SENTER_THRESHOLD = threshold
            examples = [Example(nlp.make_doc(ref.text), ref) for ref in references]
            row.update(decode(nlp, examples, args.batch_size))
            row["segments"] = sum(eg.predicted._.padellm["segments"] for eg in examples)
            row["f1_vs_sentences"] = round(row["ents_f"] - base_f, 2)
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    segments.SENTER_THRESHOLD = default_threshold
    result = {
        "what": f"{'senter ' + str(args.senter) if args.senter else 'shipped senter'} thresholds on docs of {args.size} consecutive sentences joined by spaces, lines {args.lines[0]}:{args.lines[1]} of {args.data}",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "date": date.today().isoformat(),
        "command": "python benchmarks/senter_threshold.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "docs": len(references), "sentences": len(rows), "sentences_one_per_doc_f": base_f, "rows": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    lines = [f"# {result['what']}", "", f"{result['machine']}; {result['date']}; {len(references)} docs.", "", f"`{result['command']}`", ""]
    if args.ner:
        lines += [f"Span F1 of the same sentences decoded one per doc: {base_f}.", "",
                  "| threshold | start P | start R | start F | segments | P | R | F | F vs. sentences | seconds |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['threshold']} | {r['starts']['p']} | {r['starts']['r']} | {r['starts']['f']} | {r['segments']} | "
                  f"{r['ents_p']} | {r['ents_r']} | {r['ents_f']} | {r['f1_vs_sentences']:+.2f} | {r['seconds']} |" for r in results]
    else:
        lines += ["| threshold | start P | start R | start F |", "| ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['threshold']} | {r['starts']['p']} | {r['starts']['r']} | {r['starts']['f']} |" for r in results]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
