"""llama.cpp threads: the component's default (the CPUs the process may
use) against llama.cpp's own default of 4, on the same sentences, the two
pipelines alternated sentence by sentence (batch size 1).

    python benchmarks/llama_cpp_threads.py ../shared/data/conll03/dev.jsonl --lines 500:540 \
        --out benchmarks/results/llama_cpp_threads_cpu
"""
import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import spacy

sys.path.insert(0, str(Path(__file__).parent))
from line_range import line_range  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--lines", type=line_range, default=(500, 540))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with args.data.open(encoding="utf8") as f:
        texts = [json.loads(line)[0] for i, line in enumerate(f) if args.lines[0] <= i < args.lines[1]]
    variants = {"default (CPUs available)": None, "4 (llama.cpp's default)": 4}
    pipelines = {}
    for name, threads in variants.items():
        nlp = spacy.blank("en")
        model = {"@architectures": "spacy_padellm.LlamaCpp.v1", "n_threads": threads}
        nlp.add_pipe("padellm_ner", config={"model": model})
        nlp("Warm up .")
        pipelines[name] = nlp
    times = {name: [] for name in variants}
    for k, text in enumerate(texts):
        order = list(pipelines.items())[k % 2 :] + list(pipelines.items())[: k % 2]
        for name, nlp in order:
            started = time.perf_counter()
            nlp(text)
            times[name].append(1000 * (time.perf_counter() - started))
    threads = pipelines["default (CPUs available)"].get_pipe("padellm_ner")._decoder.engine.n_threads
    lines = [f"# llama.cpp threads, batch size 1, lines {args.lines[0]}:{args.lines[1]} of {args.data}", "",
             f"{date.today().isoformat()}; the default resolved to {threads} threads; pipelines alternated per sentence.", "",
             "`python benchmarks/llama_cpp_threads.py " + " ".join(sys.argv[1:]) + "`", "",
             "| n_threads | mean ms | median ms |", "| --- | ---: | ---: |"]
    for name, values in times.items():
        lines.append(f"| {name} | {statistics.mean(values):.1f} | {statistics.median(values):.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
