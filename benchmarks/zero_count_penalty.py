"""Tune `zero_count_penalty` of a trained pipeline on one part of dev and
report it on another.

The fine-tuned models lose their recall in the count step (README: counts
too low). The penalty is a decoding setting, so it is chosen like any other
hyper-parameter: on the selection part of dev (the one `spacy train` picked
model-best on), then reported once, against penalty 0, on dev sentences used
for neither.

    python benchmarks/zero_count_penalty.py ../shared/data/conll03/dev.jsonl \\
        --penalties 0 0.5 1 2 3 --select 0:200 --report 200:700
"""
import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from spacy_padellm.corpus import make_jsonl_corpus

sys.path.insert(0, str(Path(__file__).parent))
import systems  # noqa: E402
from line_range import line_range  # noqa: E402

KEYS = ("ents_p", "ents_r", "ents_f", "spans_padellm_p", "spans_padellm_r", "spans_padellm_f")


def evaluate(nlp: Any, examples: List[Any], penalty: float) -> Dict[str, Any]:
    pipe = nlp.get_pipe("padellm_ner")
    pipe.cfg["zero_count_penalty"] = penalty
    pipe._decoder = None  # rebuilt with the new setting
    start = time.perf_counter()
    scores = nlp.evaluate(examples)
    result = {key: scores.get(key) for key in KEYS if scores.get(key) is not None}
    result["seconds"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="JSONL dev file")
    parser.add_argument("--pipeline", default=None, help="a saved pipeline (default: the shipped default model)")
    parser.add_argument("--lang", default="en")
    parser.add_argument("--end", default="inclusive")
    parser.add_argument("--penalties", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 3.0])
    parser.add_argument("--select", type=line_range, default=(0, 200), help="lines START:STOP to choose on")
    parser.add_argument("--report", type=line_range, default=(200, 700), help="lines START:STOP to report on")
    parser.add_argument("--key", default="ents_f", help="score the choice maximizes")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "zero_count_penalty_cpu")
    args = parser.parse_args()

    nlp = systems.padellm("parallel", args.pipeline, lang=args.lang).nlp

    def read(part: Tuple[int, int]) -> List[Any]:
        corpus = make_jsonl_corpus(args.path, end=args.end, skip=part[0], limit=part[1] - part[0])
        return list(corpus(nlp))

    selection: Dict[float, Dict[str, Any]] = {}
    for penalty in args.penalties:
        selection[penalty] = evaluate(nlp, read(args.select), penalty)
        print(f"select {args.select}: penalty {penalty}: {selection[penalty]}", flush=True)
    best = max(args.penalties, key=lambda p: (selection[p][args.key], -p))
    report: Dict[float, Dict[str, Any]] = {}
    for penalty in sorted({0.0, best}):
        report[penalty] = evaluate(nlp, read(args.report), penalty)
        print(f"report {args.report}: penalty {penalty}: {report[penalty]}", flush=True)

    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "pipeline": args.pipeline or "shipped default",
        "data": str(args.path),
        "select": args.select,
        "report": args.report,
        "key": args.key,
        "best": best,
        "selection": selection,
        "reported": report,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def pct(value: Optional[float]) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def markdown(result: Dict[str, Any]) -> str:
    lines = [
        f"# zero_count_penalty, {result['pipeline']} ({result['date']}, {result['machine']})",
        "",
        f"Chosen on {result['data']} lines {result['select'][0]}-{result['select'][1]} by {result['key']}: "
        f"**{result['best']}**. Reported on lines {result['report'][0]}-{result['report'][1]}.",
        "",
        "| part | penalty | ents P | ents R | ents F | spans F | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for part, rows in (("select", result["selection"]), ("report", result["reported"])):
        for penalty, s in rows.items():
            lines.append(
                f"| {part} | {penalty} | {pct(s.get('ents_p'))} | {pct(s.get('ents_r'))} | {pct(s.get('ents_f'))} "
                f"| {pct(s.get('spans_padellm_f'))} | {s['seconds']:.0f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
