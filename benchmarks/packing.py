"""Packed vs separately encoded training examples: tokens and time per epoch.

Tokens per epoch are counted exactly over the whole corpus (tokenization
only, no padding). Wall time is measured on `--batches` batches of
`--batch-size` texts, alternating the layouts on the same batches (forward +
backward through the LoRA model), and extrapolated to the epoch. Layouts:

- packed: what `PaDeLLMNER.update` does; texts share rows (up to
  `training.ROW_TOKENS`), logits only at target columns;
- packed, one text per row: each text with its branches in a row of its own,
  logits everywhere (the first implementation);
- separate: the paper's layout, the text repeated for every branch.

Writes JSON and Markdown.

    python benchmarks/packing.py ../shared/data/conll03/train.jsonl --batches 6
"""
import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import spacy
import torch

from spacy_padellm.training import loss_and_gradient, make_item, pack, separate

LABELS = ["PER", "ORG", "LOC", "MISC"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "packing_cpu")
    args = parser.parse_args()

    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"labels": LABELS})
    reader = spacy.registry.readers.get("spacy_padellm.JsonlCorpus.v1")(args.path)
    docs = [eg.reference for eg in reader(nlp)]
    nlp.initialize()
    pipe = nlp.get_pipe("padellm_ner")
    pipe.shim.prepare_for_training()
    pipe._decoder = None
    prompts = pipe._prompts()
    pad = pipe._decoder.engine.pad_id
    print(f"{len(docs)} texts; counting tokens", flush=True)
    items = [make_item(doc, prompts, LABELS, pipe.spans_key, pipe.cfg["max_count"]) for doc in docs]
    tokens_packed = sum(i.packed_length for i in items)
    tokens_separate = sum(len(i.prefix) * len(i.branches) + sum(len(b.ids) for b in i.branches) for i in items)
    branches = sum(len(i.branches) for i in items)

    model = pipe.shim.model
    model.train()
    layouts = {
        "packed": (lambda its: pack(its, pad), True),
        "packed, one text per row": (lambda its: pack(its, pad, row_tokens=1), False),
        "separate": (lambda its: separate(its, pad), False),
    }
    times = {name: [] for name in layouts}
    padded = {name: [] for name in layouts}
    for b in range(args.batches):
        batch_items = items[b * args.batch_size : (b + 1) * args.batch_size]
        for name, (build, keep_only_targets) in layouts.items():
            batch = build(batch_items)
            start = time.perf_counter()
            keep = {"logits_to_keep": batch.keep} if keep_only_targets else {}
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, **keep).logits
            targets = batch.targets
            if not keep_only_targets:  # all logits: compare them at the kept columns
                logits = logits[:, batch.keep]
            _, d_logits = loss_and_gradient(logits, targets)
            logits.backward(d_logits)
            model.zero_grad()
            times[name].append(time.perf_counter() - start)
            padded[name].append(batch.n_tokens)
        print(f"batch {b + 1}/{args.batches}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    n_batches = len(items) / args.batch_size
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "command": f"python benchmarks/packing.py {args.path} --batches {args.batches} --batch-size {args.batch_size}",
        "texts": len(items),
        "branches": branches,
        "tokens_per_epoch": {"packed": tokens_packed, "packed, one text per row": tokens_packed, "separate": tokens_separate},
        "median_tokens_per_batch_with_padding": {k: statistics.median(v) for k, v in padded.items()},
        "token_ratio": tokens_separate / tokens_packed,
        "median_seconds_per_batch": {k: statistics.median(v) for k, v in times.items()},
        "estimated_hours_per_epoch": {k: statistics.median(v) * n_batches / 3600 for k, v in times.items()},
    }
    result["time_ratio"] = result["median_seconds_per_batch"]["separate"] / result["median_seconds_per_batch"]["packed"]
    result["time_ratio_vs_one_text_per_row"] = (
        result["median_seconds_per_batch"]["packed, one text per row"] / result["median_seconds_per_batch"]["packed"]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = [
        f"# Packed vs separate training examples ({result['date']}, {result['machine']})",
        "",
        f"`{result['command']}`: SmolLM2-135M + LoRA, forward + backward, median of {args.batches} batches of {args.batch_size} texts.",
        "",
        "| layout | tokens per epoch (no padding) | tokens per batch with padding | s per batch | est. h per epoch |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for k in layouts:
        md.append(f"| {k} | {result['tokens_per_epoch'][k]:,} | {result['median_tokens_per_batch_with_padding'][k]:,.0f} | "
                  f"{result['median_seconds_per_batch'][k]:.2f} | {result['estimated_hours_per_epoch'][k]:.2f} |")
    md += ["", f"{result['texts']:,} texts, {branches:,} branches. Separate/packed: {result['token_ratio']:.2f}x tokens, {result['time_ratio']:.2f}x time; "
           f"one text per row/packed: {result['time_ratio_vs_one_text_per_row']:.2f}x time."]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
