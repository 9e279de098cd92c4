"""Whole documents against their sentences: span F1 and time per word.

Users feed articles, not sentences. This joins consecutive sentences of a
dev file into docs of N sentences (10, 50, 200 by default), runs the
default pipeline on them, and compares with the same sentences decoded one
doc per sentence: the figures the segmenting must match (F1 within 1 point,
time per word within 20%).

The lines are cut into blocks of the largest N sentences; every system
decodes every block, in an order that rotates from block to block, so the
machine's noise falls on all of them alike. Times are the sums over blocks;
the ratios are also given as the median of the per-block ratios.

    python benchmarks/long_docs.py ../shared/data/conll03/dev.jsonl --lines 500:1300 \
        --out benchmarks/results/long_docs_cpu

`--segment-tokens 20,42,64` compares segment budgets (the selection of
the default was made that way on lines 0:500). `--sents` says where the
sentences come from: `data` (the file's sentences as `doc.sents`, as a
senter or parser would set them), `auto` (no `doc.sents`: the component's
default split, the shipped senter) or `rules` (no `doc.sents`, and
`sentence_split = "rules"`). `--join newline` joins the sentences by line
breaks instead of spaces, as a text that keeps its lines. `--pipeline PATH` measures a saved pipeline
(a model trained otherwise) instead of the default one.
"""
import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from spacy.language import Language
from spacy.scorer import Scorer
from spacy.tokens import Doc
from spacy.training import Example

sys.path.insert(0, str(Path(__file__).parent))
import systems  # noqa: E402
from joined_docs import joined_reference, read_rows  # noqa: E402
from line_range import line_range  # noqa: E402

SOURCES = {"data": "data", "auto": "the senter", "rules": "the rules"}


def joined_example(nlp: Language, rows: Sequence[list], data_sents: bool = False, separator: str = " ") -> Example:
    """One doc of the rows' sentences joined by `separator` (spaces or line
    breaks), tokenized by the pipeline. data_sents: the doc's `doc.sents`
    are the file's sentences (as a senter or parser would set them);
    otherwise it has none and the component splits it itself."""
    reference = joined_reference(nlp, rows, separator=separator)
    predicted = nlp.make_doc(reference.text)
    if data_sents:
        starts = {sent.start_char for sent in reference.sents}
        for token in predicted:
            token.is_sent_start = token.idx in starts
    return Example(predicted, reference)


def run(nlp: Language, examples: List[Example], batch_size: int) -> Tuple[float, List[Doc]]:
    started = time.perf_counter()
    docs = list(nlp.pipe((eg.predicted.copy() for eg in examples), batch_size=batch_size))
    return time.perf_counter() - started, docs


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="JSONL file in the format of ../shared/data")
    parser.add_argument("--lines", type=line_range, default=(500, 1300), help="START:STOP of the data file")
    parser.add_argument("--sizes", default="10,50,200", help="sentences per doc, comma-separated")
    parser.add_argument("--segment-tokens", default="", help="segment budgets to compare (default: the pipeline's)")
    parser.add_argument("--sents", default="auto", help="comma-separated: 'data' (the file's sentences as doc.sents), 'auto' (none: the component splits them) and/or 'rules' (none, and sentence_split = 'rules')")
    parser.add_argument("--batch-size", type=int, default=64, help="nlp.pipe batch size (docs per call)")
    parser.add_argument("--join", choices=["space", "newline"], default="space", help="what joins the sentences of a doc: a space (no trace of the lines) or a line break (as a text that keeps its lines)")
    parser.add_argument("--pipeline", default=None, help="a saved pipeline to measure instead of the default one")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .md)")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    budgets: List[Optional[int]] = [int(x) for x in args.segment_tokens.split(",") if x] or [None]
    system = systems.padellm("parallel", path=args.pipeline)
    separator = "\n" if args.join == "newline" else " "
    nlp, pipe = system.nlp, system.padellm_pipe()
    sentences = read_rows(args.data, *args.lines)
    block = max(sizes)
    blocks = [sentences[i : i + block] for i in range(0, len(sentences) - block + 1, block)]
    if not blocks:
        parser.error(f"--lines holds {len(sentences)} sentences, fewer than the largest size {block}")
    # The reference: one doc per sentence, each decoded whole (no segments).
    modes = args.sents.split(",")
    if set(modes) - {"data", "auto", "rules"}:
        parser.error(f"--sents takes data, auto and rules, not {args.sents!r}")
    variants: List[Tuple[str, int, Optional[int], str]] = [("sentences", 1, 0, "data")] + [
        (f"{n} per doc" + (f", segment_tokens {b}" if b else "") + f", sentences from {SOURCES[mode]}", n, b, mode)
        for mode in modes for b in budgets for n in sizes
    ]
    totals: Dict[str, Dict[str, Any]] = {v[0]: {"seconds": 0.0, "examples": [], "segments": 0, "docs": 0, "block_seconds": []} for v in variants}
    words = sum(len(row[0].split(" ")) for b in blocks for row in b)
    configured = pipe.cfg["segment_tokens"]
    run(nlp, [joined_example(nlp, blocks[0][:2])], args.batch_size)  # load the model outside the timings
    for k, sents in enumerate(blocks):
        order = variants[k % len(variants) :] + variants[: k % len(variants)]
        for name, n, budget, mode in order:
            pipe.cfg["segment_tokens"] = budget if budget is not None else configured
            pipe.cfg["sentence_split"] = "rules" if mode == "rules" else "auto"
            examples = [joined_example(nlp, sents[i : i + n], mode == "data", separator) for i in range(0, len(sents), n)]
            seconds, docs = run(nlp, examples, args.batch_size)
            for eg, doc in zip(examples, docs):
                eg.predicted = doc
            entry = totals[name]
            entry["seconds"] += seconds
            entry["block_seconds"].append(seconds)
            entry["examples"].extend(examples)
            entry["segments"] += sum(d._.padellm["segments"] for d in docs)
            entry["docs"] += len(docs)
            print(f"block {k + 1}/{len(blocks)} {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    pipe.cfg["segment_tokens"] = configured
    pipe.cfg["sentence_split"] = "auto"
    scorer = Scorer(nlp)
    base = totals["sentences"]
    rows = []
    for name, n, budget, _ in variants:
        entry = totals[name]
        scores = scorer.score(entry["examples"])
        per_block = [s / b for s, b in zip(entry["block_seconds"], base["block_seconds"])]
        rows.append({
            "system": name, "sentences_per_doc": n, "segment_tokens": budget if budget is not None else pipe.segment_budget,
            "docs": entry["docs"], "segments": entry["segments"],
            "ents_p": round(100 * scores["ents_p"], 2), "ents_r": round(100 * scores["ents_r"], 2), "ents_f": round(100 * scores["ents_f"], 2),
            "seconds": round(entry["seconds"], 1), "ms_per_word": round(1000 * entry["seconds"] / words, 2),
            "time_vs_sentences": round(entry["seconds"] / base["seconds"], 3),
            "median_block_time_vs_sentences": round(statistics.median(per_block), 3),
        })
    base_f = rows[0]["ents_f"]
    for row in rows:
        row["f1_vs_sentences"] = round(row["ents_f"] - base_f, 2)
    result = {
        "what": f"docs of consecutive sentences{' joined by line breaks' if args.join == 'newline' else ''} vs. the same sentences one per doc, lines {args.lines[0]}:{args.lines[1]} of {args.data}",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "date": date.today().isoformat(),
        "command": "python benchmarks/long_docs.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "blocks": len(blocks), "sentences": len(blocks) * block, "words": words, "batch_size": args.batch_size,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    lines = [
        f"# {result['what']}", "", f"{result['machine']}; {result['date']}; {result['blocks']} blocks of {block} sentences "
        f"({words} words), systems rotated per block; nlp.pipe batch size {args.batch_size}.", "",
        f"`{result['command']}`", "",
        "| system | segment tokens | docs | segments | P | R | F | F vs. sentences | ms/word | time vs. sentences (sum / median block) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['segment_tokens']} | {r['docs']} | {r['segments']} | {r['ents_p']} | {r['ents_r']} | {r['ents_f']} | "
            f"{r['f1_vs_sentences']:+.2f} | {r['ms_per_word']} | {r['time_vs_sentences']:.2f} / {r['median_block_time_vs_sentences']:.2f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
