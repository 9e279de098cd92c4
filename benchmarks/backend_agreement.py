"""Do the torch and llama.cpp backends find the same entities?

llama.cpp runs the same adapter merged into a Q8_0 GGUF file (and computes
attention its own way), so its greedy outputs can differ where two tokens
are nearly tied. This decodes the same dev sentences with both backends
(default pipeline, one `nlp.pipe` run each) and reports the share of
sentences with identical spans, the span F1 of each, and their difference.

    python benchmarks/backend_agreement.py ../shared/data/conll03/dev.jsonl --lines 500:1500 \
        --out benchmarks/results/backend_agreement_cpu
"""
import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import List, Optional

import spacy
from spacy.scorer import Scorer
from spacy.training import Example

sys.path.insert(0, str(Path(__file__).parent))
import systems  # noqa: E402
from line_range import line_range  # noqa: E402


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--lines", type=line_range, default=(500, 1500))
    parser.add_argument("--mode", default="parallel", choices=["parallel", "autoregressive"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    reader = spacy.registry.readers.get("spacy_padellm.JsonlCorpus.v1")(args.data)
    nlp = spacy.blank("en")
    references = [eg.reference for eg in reader(nlp)][args.lines[0] : args.lines[1]]
    rows, spans = {}, {}
    for backend in ("torch", "llama.cpp"):
        system = systems.padellm(args.mode, backend=backend)
        system.set_batch_size(args.batch_size)
        system.nlp("Warm up .")
        started = time.perf_counter()
        docs = list(system.nlp.pipe((r.text for r in references), batch_size=args.batch_size))
        seconds = time.perf_counter() - started
        scores = Scorer(system.nlp).score([Example(d, r) for d, r in zip(docs, references)])
        spans[backend] = [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in docs]
        rows[backend] = {
            "ents_p": round(100 * scores["ents_p"], 2), "ents_r": round(100 * scores["ents_r"], 2),
            "ents_f": round(100 * scores["ents_f"], 2), "seconds": round(seconds, 1),
            "sentences_per_second": round(len(docs) / seconds, 2),
        }
        print(backend, rows[backend], file=sys.stderr, flush=True)
        del system
    same = sum(a == b for a, b in zip(spans["torch"], spans["llama.cpp"]))
    result = {
        "what": f"torch vs. llama.cpp backend, {args.mode}, lines {args.lines[0]}:{args.lines[1]} of {args.data}",
        "machine": f"{platform.machine()}, 2-core CPU", "date": date.today().isoformat(),
        "command": "python benchmarks/backend_agreement.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "sentences": len(references), "identical_sentences": same,
        "identical_share": round(100 * same / len(references), 2),
        "f1_difference": round(rows["llama.cpp"]["ents_f"] - rows["torch"]["ents_f"], 2),
        "backends": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    lines = [f"# {result['what']}", "", f"{result['machine']}; {result['date']}; nlp.pipe batch size {args.batch_size}.", "",
             f"`{result['command']}`", "",
             f"Identical spans in {same} of {len(references)} sentences ({result['identical_share']}%); "
             f"span F1 difference (llama.cpp - torch) {result['f1_difference']:+.2f}.", "",
             "| backend | P | R | F | seconds | sentences/s |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['ents_p']} | {r['ents_r']} | {r['ents_f']} | {r['seconds']} | {r['sentences_per_second']} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
