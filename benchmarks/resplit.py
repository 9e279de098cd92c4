"""Which segments to decode again in halves: `resplits` and `resplit_below`.

A list of names or a results table that the sentence split leaves whole
reads to the model like one sentence with too many entities: it stops
early, repeats a mention, or is unsure of a count. The component then cuts
the segment in two and decodes the halves again (`pipe.py`, CROWDED). This
runs the default pipeline on the same dev sentences one per doc and joined
by spaces into docs of N sentences without `doc.sents` (so the shipped
senter splits them), under each setting, and reports span P/R/F, how many
segments were decoded again, and the seconds.

Choose on one part of dev (0-499 for the shipped defaults), report on
another (`long_docs.py` on 500-1099):

    python benchmarks/resplit.py ../shared/data/conll03/dev.jsonl --lines 0:500 \\
        --settings 0:0,2:0,2:0.5,2:0.8,2:0.9 --out benchmarks/results/resplit_selection_cpu
"""
import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from spacy.scorer import Scorer

sys.path.insert(0, str(Path(__file__).parent))
import systems  # noqa: E402
from joined_docs import read_rows  # noqa: E402
from line_range import line_range  # noqa: E402
from long_docs import joined_example, run  # noqa: E402


def setting(text: str) -> Tuple[int, float]:
    """"RESPLITS:RESPLIT_BELOW", e.g. "2:0.8"."""
    resplits, _, below = text.partition(":")
    return int(resplits), float(below or 0.0)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="JSONL file in the format of ../shared/data")
    parser.add_argument("--lines", type=line_range, default=(0, 500), help="START:STOP of the data file")
    parser.add_argument("--sizes", default="50", help="sentences per joined doc, comma-separated")
    parser.add_argument("--settings", default="0:0,2:0,2:0.8", help="comma-separated RESPLITS:RESPLIT_BELOW")
    parser.add_argument("--batch-size", type=int, default=64, help="nlp.pipe batch size (docs per call)")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .md)")
    args = parser.parse_args(argv)
    sizes = [1] + [int(x) for x in args.sizes.split(",")]
    settings = [setting(x) for x in args.settings.split(",")]
    system = systems.padellm("parallel")
    nlp, pipe = system.nlp, system.padellm_pipe()
    rows = read_rows(args.data, *args.lines)
    run(nlp, [joined_example(nlp, rows[:2])], args.batch_size)  # load the model outside the timings
    results: List[Dict[str, Any]] = []
    for resplits, below in settings:
        pipe.cfg["resplits"], pipe.cfg["resplit_below"] = resplits, below
        for n in sizes:
            examples = [joined_example(nlp, rows[k : k + n], data_sents=n == 1) for k in range(0, len(rows), n)]
            started = time.perf_counter()
            _, docs = run(nlp, examples, args.batch_size)
            seconds = time.perf_counter() - started
            for eg, doc in zip(examples, docs):
                eg.predicted = doc
            scores = Scorer(nlp).score(examples)
            results.append({
                "resplits": resplits, "resplit_below": below, "sentences_per_doc": n,
                "ents_p": round(100 * scores["ents_p"], 2), "ents_r": round(100 * scores["ents_r"], 2),
                "ents_f": round(100 * scores["ents_f"], 2),
                "resplit_segments": sum(d._.padellm["fallbacks"].get("resplit_segments", 0) for d in docs),
                "seconds": round(seconds, 1),
            })
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    by_setting: Dict[Tuple[int, float], Dict[int, Dict[str, Any]]] = {}
    for r in results:
        by_setting.setdefault((r["resplits"], r["resplit_below"]), {})[r["sentences_per_doc"]] = r
    for per_size in by_setting.values():
        for r in per_size.values():
            r["f1_vs_sentences"] = round(r["ents_f"] - per_size[1]["ents_f"], 2)
    result = {
        "what": f"resplit settings on lines {args.lines[0]}:{args.lines[1]} of {args.data}, one sentence per doc "
                "and docs of N sentences joined by spaces without doc.sents",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "date": date.today().isoformat(),
        "command": "python benchmarks/resplit.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    lines = [
        f"# {result['what']}", "", f"{result['machine']}; {result['date']}; nlp.pipe batch size {args.batch_size}.", "",
        f"`{result['command']}`", "",
        "| resplits | resplit_below | sentences per doc | P | R | F | F vs. sentences | segments decoded again | seconds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['resplits']} | {r['resplit_below']} | {r['sentences_per_doc']} | {r['ents_p']} | {r['ents_r']} | "
            f"{r['ents_f']} | {r['f1_vs_sentences']:+.2f} | {r['resplit_segments']} | {r['seconds']} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
