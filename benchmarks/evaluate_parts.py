"""Accuracy of a PaDeLLM pipeline on a whole dev file and on parts of it, from one pass.

`spacy evaluate` gives one figure for the whole file. Which dev sentences a
model was selected on matters when reading that figure (the configs select
on dev sentences 0-499), so this scores the same predictions over line
ranges as well, without decoding the file once per range. The whole-file
scores should equal what `spacy evaluate` reports on a `.spacy` file
converted from the same JSONL (they did for the shipped adapter on
CoNLL-03 dev). Span-group scores (`spans_padellm_*`, overlaps allowed) are
kept too, for nested data such as GENIA (`--end exclusive`).

    python benchmarks/evaluate_parts.py ../shared/data/conll03/dev.jsonl \
        --pipeline training/conll03/model-last --part 0:500 --part 500:1500 \
        --out benchmarks/results/my_eval.json

`--thresholds 0,0.3,0.5` also scores `doc.ents` at each value of the
component's `threshold` setting, from the same pass.
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
from spacy.language import Language
from spacy.scorer import Scorer
from spacy.training import Example

from spacy_padellm.corpus import make_jsonl_corpus

sys.path.insert(0, str(Path(__file__).parent))
import systems  # noqa: E402
from line_range import line_range  # noqa: E402

SCORE_KEYS = ("ents_p", "ents_r", "ents_f", "ents_per_type", "spans_padellm_p", "spans_padellm_r", "spans_padellm_f")
PROGRESS_EVERY = 250


def evaluate(nlp: Language, examples: List[Example], parts: List[Tuple[int, int]]) -> Dict[str, Any]:
    """Decode every example once (as `nlp.evaluate` does), then score the
    whole list and each part with the pipeline's own scorers."""
    started = time.perf_counter()
    for i, (eg, doc) in enumerate(zip(examples, nlp.pipe(eg.predicted for eg in examples)), 1):
        eg.predicted = doc
        if i % PROGRESS_EVERY == 0 or i == len(examples):
            print(f"decoded {i}/{len(examples)} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    scorer = Scorer(nlp)
    result: Dict[str, Any] = {k: v for k, v in scorer.score(examples).items() if k in SCORE_KEYS}
    result["seconds"] = round(seconds, 1)
    result["parts"] = {}
    for start, stop in parts:
        scores = scorer.score(examples[start:stop])
        result["parts"][f"{start}-{min(stop, len(examples))}"] = {
            k: v for k, v in scores.items() if k in SCORE_KEYS and not k.endswith("_per_type")
        }
    return result


def threshold_scores(nlp: Language, examples: List[Example], thresholds: List[float],
                     parts: List[Tuple[int, int]]) -> Dict[str, Any]:
    """P/R/F of `doc.ents` at each threshold, from the one decoding pass: the
    ents the component would set with `threshold = t` (the span group's
    spans of probability >= t, selected as the component selects)."""
    from spacy_padellm.resolve import select_flat

    pipe = next(p for _, p in nlp.pipeline if hasattr(p, "fallback_counts"))
    groups = []
    for eg in examples:
        group = eg.predicted.spans.get(pipe.spans_key, [])
        scores = [float(x) for x in group.attrs["scores"]] if len(group) else []
        groups.append((list(group), scores))
    scorer = Scorer(nlp)
    out: Dict[str, Any] = {}
    for t in thresholds:
        for eg, (spans, scores) in zip(examples, groups):
            kept = [k for k, score in enumerate(scores) if score >= t]
            eg.predicted.ents = select_flat([spans[k] for k in kept], [scores[k] for k in kept])
        row = {}
        for start, stop in [(0, len(examples))] + parts:
            scores_ = scorer.score(examples[start:stop])
            row[f"{start}-{min(stop, len(examples))}"] = {k: round(100 * scores_[k], 2) for k in ("ents_p", "ents_r", "ents_f")}
        out[str(t)] = row
    for eg, (spans, scores) in zip(examples, groups):  # back to what the pipeline set
        eg.predicted.ents = select_flat(spans, scores)
    return out


def main(argv: Optional[List[str]] = None) -> None:
    """Read the file, check the parts against it, then decode it once: the
    check comes first because decoding a dev file takes minutes on CPU."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="JSONL file in the format of ../shared/data")
    parser.add_argument("--pipeline", help="saved pipeline (default: the shipped default model)")
    parser.add_argument("--end", choices=["inclusive", "exclusive"], default="inclusive")
    parser.add_argument("--lang", default="en", help="language of the default pipeline (zh: character tokens)")
    parser.add_argument("--part", type=line_range, action="append", default=[], help="START:STOP, repeatable")
    parser.add_argument("--thresholds", default="", help="comma-separated `threshold` values to score from the same pass")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    system = systems.padellm("parallel", args.pipeline, lang=args.lang)
    examples = list(make_jsonl_corpus(args.data, end=args.end)(system.nlp))
    for start, stop in args.part:
        if start >= len(examples):  # before decoding, which takes minutes
            parser.error(f"--part {start}:{stop} starts past the file's {len(examples)} examples")
    result = {
        "what": f"one nlp.pipe pass over {args.data} ({len(examples)} examples), scored whole and by part",
        "pipeline": args.pipeline or f"shipped default (spacy.blank({args.lang!r}) + add_pipe('padellm_ner'))",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "date": date.today().isoformat(),
        "parts_note": "parts are 0-based line ranges of the data file, START-STOP with STOP excluded",
        **evaluate(system.nlp, examples, args.part),
    }
    if args.thresholds:
        thresholds = [float(x) for x in args.thresholds.split(",")]
        result["thresholds"] = threshold_scores(system.nlp, examples, thresholds, args.part)
        for t, row in result["thresholds"].items():
            print(f"threshold {t}: " + "; ".join(f"{part} P {v['ents_p']} R {v['ents_r']} F {v['ents_f']}" for part, v in row.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("ents_p", "ents_r", "ents_f", "parts", "seconds")}, indent=2))


if __name__ == "__main__":
    main()
