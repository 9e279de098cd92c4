"""Variants of one component config, side by side on the same sentences:
latency at batch size 1 (mean, median; the variants alternated sentence by
sentence, so drift on a shared machine hits all alike), span P/R/F against
the gold entities, identical spans against the first variant, and tokens
evaluated per sentence where the engine counts them.

    python benchmarks/variants.py ../shared/data/conll03/dev.jsonl --lines 500:800 \
        --variant 'merged={"model": {"@architectures": "spacy_padellm.LlamaCpp.v1"}}' \
        --variant 'runtime={"model": {"@architectures": "spacy_padellm.LlamaCpp.v1", "lora": "runtime"}}' \
        --title "llama.cpp: LoRA merged or at run time" --out benchmarks/results/llama_cpp_lora_cpu

Each variant is `NAME=JSON`, the JSON being `padellm_ner`'s config (as
`add_pipe(..., config=...)` takes it) on `spacy.blank("en")`.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import spacy
from spacy.scorer import Scorer
from spacy.training import Example

sys.path.insert(0, str(Path(__file__).parent))
from line_range import line_range  # noqa: E402


def variant(text: str) -> Tuple[str, Dict[str, Any]]:
    name, sep, config = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=JSON, got {text!r}")
    try:
        return name, json.loads(config)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"the config of {name!r} is not JSON: {err}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--lines", type=line_range, default=(500, 800))
    parser.add_argument("--variant", type=variant, action="append", required=True)
    parser.add_argument("--title", default="Component variants")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    reader = spacy.registry.readers.get("spacy_padellm.JsonlCorpus.v1")(args.data)
    references = [eg.reference for eg in reader(spacy.blank("en"))][args.lines[0] : args.lines[1]]
    pipelines = {}
    for name, config in args.variant:
        nlp = spacy.blank("en")
        nlp.add_pipe("padellm_ner", config=config)
        started = time.perf_counter()
        nlp("Warm up .")
        print(f"{name}: first call {time.perf_counter() - started:.1f} s", flush=True)
        pipelines[name] = nlp
    names = list(pipelines)
    ms: Dict[str, List[float]] = {n: [] for n in names}
    docs: Dict[str, List[Any]] = {n: [] for n in names}
    tokens: Dict[str, List[int]] = {n: [] for n in names}
    for k, ref in enumerate(references):
        for j in range(len(names)):
            name = names[(k + j) % len(names)]
            nlp = pipelines[name]
            engine = getattr(nlp.get_pipe("padellm_ner")._decoder, "engine", None)
            before = getattr(engine, "tokens_evaluated", None)
            started = time.perf_counter()
            doc = nlp(ref.text)
            ms[name].append(1000 * (time.perf_counter() - started))
            docs[name].append(doc)
            if before is not None:
                tokens[name].append(engine.tokens_evaluated - before)
        if (k + 1) % 50 == 0:
            print(f"  {k + 1}/{len(references)}", flush=True)
    spans = {n: [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in docs[n]] for n in names}
    rows = {}
    for name in names:
        scores = Scorer.score_spans([Example(d, r) for d, r in zip(docs[name], references)], "ents")
        rows[name] = {
            "config": dict(args.variant)[name],
            "ents_p": round(100 * scores["ents_p"], 2), "ents_r": round(100 * scores["ents_r"], 2),
            "ents_f": round(100 * scores["ents_f"], 2),
            "mean_ms": round(statistics.mean(ms[name]), 1), "median_ms": round(statistics.median(ms[name]), 1),
            "identical_to_first": round(100 * sum(a == b for a, b in zip(spans[name], spans[names[0]])) / len(references), 2),
            "tokens_evaluated": round(statistics.mean(tokens[name]), 1) if tokens[name] else None,
        }
    command = "python benchmarks/variants.py " + " ".join(repr(a) if " " in a else a for a in (argv or sys.argv[1:]))
    result = {"what": f"{args.title}, lines {args.lines[0]}:{args.lines[1]} of {args.data}",
              "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs",
              "date": date.today().isoformat(), "command": command, "sentences": len(references), "variants": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    lines = [f"# {result['what']}", "", f"{result['machine']}; {result['date']}; batch size 1, variants alternated per sentence.", "",
             f"`{command}`", "",
             "| variant | P | R | F | mean ms | median ms | identical to the first | tokens evaluated |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        evaluated = "–" if r["tokens_evaluated"] is None else r["tokens_evaluated"]
        lines.append(f"| {name} | {r['ents_p']} | {r['ents_r']} | {r['ents_f']} | {r['mean_ms']} | {r['median_ms']} | "
                     f"{r['identical_to_first']}% | {evaluated} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
