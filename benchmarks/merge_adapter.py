"""Decoding with the LoRA adapter merged into the base weights, and unmerged.

`padellm_ner` merges its adapter before it first predicts (see
`CausalLMShim.merge_for_inference`). This times both on the same docs with
the default pipeline (SmolLM2-135M + the shipped CoNLL-03 adapter), the
variants alternating in each repeat, and reports median seconds per doc,
the speed-up, and how many docs got the same entities from both.

    python benchmarks/merge_adapter.py ../shared/data/conll03/dev.jsonl --skip 200 --limit 64

Add `--gpu` to run on the first CUDA device (bfloat16: each unmerge leaves
the base a rounding off, so there the unmerged runs after the first are
approximate). Writes Markdown and JSON.
"""
import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Dict, List

import spacy
import torch

VARIANTS = ("merged", "unmerged")


def set_variant(nlp: spacy.Language, variant: str) -> None:
    shim = nlp.get_pipe("padellm_ner").shim
    shim.merge_when_predicting = variant == "merged"
    if variant == "merged":
        shim.merge_for_inference()
    else:
        shim.unmerge()


def run(nlp: spacy.Language, texts: List[str], batch_size: int) -> tuple:
    start = time.perf_counter()
    docs = list(nlp.pipe(texts, batch_size=batch_size))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return elapsed, [[(e.start, e.end, e.label_) for e in doc.ents] for doc in docs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--skip", type=int, default=200)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="docs per decoding batch")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="default: results/merge_adapter_cpu or _gpu")
    args = parser.parse_args()

    if args.gpu:
        spacy.require_gpu(0)
    if args.out is None:
        args.out = Path(__file__).parent / "results" / ("merge_adapter_gpu" if args.gpu else "merge_adapter_cpu")
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"batch_size": args.batch_size})
    with args.path.open(encoding="utf8") as f:
        lines = f.readlines()[args.skip : args.skip + args.limit]
    texts = [json.loads(line)[0] for line in lines]
    nlp.get_pipe("padellm_ner")._ensure_loaded()
    run(nlp, texts[:4], args.batch_size)  # warm-up
    times: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    ents: Dict[str, list] = {}
    for rep in range(args.repeats):
        for variant in VARIANTS if rep % 2 == 0 else VARIANTS[::-1]:
            set_variant(nlp, variant)
            elapsed, ents[variant] = run(nlp, texts, args.batch_size)
            times[variant].append(elapsed / len(texts))
            print(f"repeat {rep} {variant}: {elapsed:.1f}s", flush=True)
    same = sum(a == b for a, b in zip(ents["merged"], ents["unmerged"]))
    median = {v: statistics.median(t) for v, t in times.items()}
    device = torch.cuda.get_device_name(0) if args.gpu else f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    command = "python benchmarks/merge_adapter.py " + " ".join(
        [str(args.path), f"--skip {args.skip}", f"--limit {args.limit}", f"--repeats {args.repeats}",
         f"--batch-size {args.batch_size}"] + (["--gpu"] if args.gpu else [])
    )
    result = {
        "date": date.today().isoformat(), "device": device, "command": command, "docs": len(texts),
        "seconds_per_doc": times, "median_ms_per_doc": {v: 1000 * m for v, m in median.items()},
        "speedup": median["unmerged"] / median["merged"], "same_entities": same,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    md = [
        f"# Merged vs unmerged LoRA adapter ({result['date']}, {device})", "",
        f"{len(texts)} docs, batch size {args.batch_size}, {args.repeats} repeats alternating the variants. "
        f"Command: `{command}`", "",
        "| variant | median ms per doc |", "| --- | ---: |",
        *[f"| {v} | {1000 * median[v]:.1f} |" for v in VARIANTS], "",
        f"Speed-up from merging: **{result['speedup']:.2f}x**; same entities on {same} of {len(texts)} docs.", "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(md), encoding="utf8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
