"""How many texts one decoding call should carry on a backend: the same
sentences through `nlp.pipe`, with the component's calls capped at each
size in turn (`Backend.texts_per_call`), the sizes rotated round by round
on one pipeline. Reports sentences per second (median of the rounds) and
whether the entities equal those of the first size.

    python benchmarks/texts_per_call.py ../shared/data/conll03/dev.jsonl --lines 500:596 \
        --backend llama.cpp --sizes 16,8,4 --out benchmarks/results/llama_cpp_texts_per_call_cpu
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

import spacy

sys.path.insert(0, str(Path(__file__).parent))
from line_range import line_range, read_texts  # noqa: E402
from mention_forks import BACKENDS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--lines", type=line_range, default=(500, 596))
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="llama.cpp")
    parser.add_argument("--sizes", default="16,8,4", help="texts per call to compare; the first is the reference for the entities")
    parser.add_argument("--batch-size", type=int, default=32, help="nlp.pipe batch size (docs per component call)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    texts = read_texts(args.data, args.lines)
    sizes = [int(x) for x in args.sizes.split(",")]
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": {"@architectures": BACKENDS[args.backend]}, "batch_size": max(sizes)})
    nlp("Warm up .")
    engine = nlp.get_pipe("padellm_ner")._decoder.engine
    rates = {n: [] for n in sizes}
    ents = {}
    for r in range(args.rounds):
        order = sizes[r % len(sizes):] + sizes[: r % len(sizes)]
        for n in order:
            engine.texts_per_call = n
            started = time.perf_counter()
            docs = list(nlp.pipe(texts, batch_size=args.batch_size))
            rates[n].append(len(texts) / (time.perf_counter() - started))
            ents.setdefault(n, [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in docs])
            print(f"round {r}: {n} texts per call, {rates[n][-1]:.2f} sentences/s", flush=True)
    rows = [{
        "texts_per_call": n, "sentences_per_s": statistics.median(rates[n]), "rounds": rates[n],
        "same_entities": sum(a == b for a, b in zip(ents[n], ents[sizes[0]])) / len(texts),
    } for n in sizes]
    report = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "backend": args.backend, "data": str(args.data), "lines": list(args.lines), "batch_size": args.batch_size,
        "command": " ".join(sys.argv), "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Texts per decoding call on {args.backend}, lines {args.lines[0]}:{args.lines[1]} of {args.data}", "",
        f"{report['date']}, {report['machine']}; default pipeline, `nlp.pipe(batch_size={args.batch_size})`; "
        f"the sizes rotated over {args.rounds} rounds on one pipeline.", "",
        f"`{report['command']}`", "",
        "| texts per call | sentences/s (median) | rounds | entities as with the first size |",
        "| ---: | ---: | --- | ---: |",
    ]
    for row in rows:
        lines.append(f"| {row['texts_per_call']} | {row['sentences_per_s']:.2f} | "
                     f"{' / '.join(f'{x:.2f}' for x in row['rounds'])} | {100 * row['same_entities']:.1f}% |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
