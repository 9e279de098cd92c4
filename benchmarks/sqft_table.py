"""The SQFT comparison on CoNLL-03 with one training budget for every row:
dense LoRA r=16, the elastic super-adapter at each uniform rank, the median
and the searched sub-adapters, dense LoRA exported on 4 bits after
training, 50% Wanda + plain LoRA (unmasked, SQFT's
baseline on the same sparse base), 50% Wanda + SparsePEFT, 50% Wanda + Q8_0 +
QA-SparsePEFT, 50% Wanda + Q4_0 + QA-SparsePEFT (the peak's scales, and
fitted ones), and dense Q4_0 + QA (both scales).

Every stage writes into WORK and is skipped when its output is there, so
an interrupted run continues (`--steps`, the budget, must stay the same).
Stages: the bases (`sparsify`), training (`spacy train`, new adapters or
`--adapter` continued in every row, `--steps` optimizer steps of 8
sentences each, the last checkpoint used),
the sub-adapter search on dev lines `--select` (never reported on), then
each row on the llama.cpp backend (the adapter merged, projections on the
base's grid for the QA rows, Q4_0 for the row so named, Q8_0 otherwise) on
dev lines `--report`:
span F1, GGUF size on disk, zero share of the projections as llama.cpp
reads them, and latency per sentence at batch size 1.

    python benchmarks/sqft_table.py --work /tmp/sqft --steps 40 \
        --adapter spacy_padellm/default_model/adapter --rank-choices 16,12,8 \
        --select 0:100 --report 500:900 --budget 6 --out benchmarks/results/sqft_cpu
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from line_range import line_range  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT.parent / "shared" / "data" / "conll03" / "train.jsonl"
DEV = ROOT.parent / "shared" / "data" / "conll03" / "dev.jsonl"
PY = [sys.executable]


def measured() -> Dict[str, str]:
    """When and on what a row or a training was measured: a table built over
    several sessions mixes hosts (the CPU model varies), so each row says."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": str(date.today()), "cpu": f"{cpu}, {len(os.sched_getaffinity(0))} CPUs"}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run(command: List[str], log: Path) -> Dict[str, float]:
    """Run a command with its output in `log`; its wall time and peak RSS
    (the process and its children, sampled every 0.2 s)."""
    say(" ".join(command))
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        peak = 0
        watched = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                rss = watched.memory_info().rss + sum(c.memory_info().rss for c in watched.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.2)
    if process.returncode:
        raise SystemExit(f"failed ({process.returncode}); see {log}")
    return {"seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak / 2**20)}


def bases(work: Path, names: List[str]) -> Dict[str, Path]:
    cli = PY + ["-m", "spacy_padellm", "sparsify"]
    plan = {
        "dense": cli + ["--sparsity", "0"],
        "wanda50": cli + ["--sparsity", "0.5", "--calibration", str(TRAIN)],
        "wanda50_q8": cli + [str(work / "wanda50"), "--sparsity", "0", "--quantize", "q8_0", "--scales", "peak"],
        "wanda50_q4": cli + [str(work / "wanda50"), "--sparsity", "0", "--quantize", "q4_0", "--scales", "peak"],
        "wanda50_q4f": cli + [str(work / "wanda50"), "--sparsity", "0", "--quantize", "q4_0", "--scales", "fitted"],
        "dense_q4": cli + [str(work / "dense"), "--sparsity", "0", "--quantize", "q4_0", "--scales", "peak"],
        "dense_q4f": cli + [str(work / "dense"), "--sparsity", "0", "--quantize", "q4_0", "--scales", "fitted"],
    }
    out = {}
    needed = set(names) | {"wanda50" for n in names if n.startswith("wanda50")} | {"dense" for n in names if n.startswith("dense")}
    for name, command in plan.items():
        if name not in needed:
            continue
        out[name] = work / name
        if not (work / name / "sparsity.json").exists():
            run(command + ["--output", str(work / name)], work / f"sparsify_{name}.log")
    return out


TRAININGS = {  # name: (config, base)
    "lora16": ("configs/smollm2_sparse_cpu.cfg", "dense"),
    "elastic": ("configs/smollm2_elastic_cpu.cfg", "dense"),
    "sparse_lora": ("configs/smollm2_sparse_cpu.cfg", "wanda50"),
    "sparse": ("configs/smollm2_sparse_cpu.cfg", "wanda50"),
    "sparse_q8": ("configs/smollm2_sparse_cpu.cfg", "wanda50_q8"),
    "sparse_q4": ("configs/smollm2_sparse_cpu.cfg", "wanda50_q4"),
    "sparse_q4f": ("configs/smollm2_sparse_cpu.cfg", "wanda50_q4f"),
    "dense_q4": ("configs/smollm2_sparse_cpu.cfg", "dense_q4"),
    "dense_q4f": ("configs/smollm2_sparse_cpu.cfg", "dense_q4f"),
}
SETTINGS = {  # a training's own overrides
    "sparse_lora": ["--components.padellm_ner.model.sparse_peft=false"],  # SQFT's baseline: LoRA unmasked
}


def train(work: Path, base_dirs: Dict[str, Path], steps: int, names: List[str], adapter: Optional[str],
          choices: List[int]) -> Dict[str, Dict[str, Any]]:
    costs_path = work / "training_costs.json"
    costs = json.loads(costs_path.read_text()) if costs_path.exists() else {}
    for name in names:
        config, base = TRAININGS[name]
        out = work / f"train_{name}"
        if (out / "model-last").exists() and name in costs:
            continue
        model = [f"--components.padellm_ner.model.name={base_dirs[base]}", "--components.padellm_ner.model.package=null",
                 "--components.padellm_ner.model.gguf_file=null", f"--components.padellm_ner.model.lora_r={max(choices)}",
                 f"--components.padellm_ner.model.rank_choices={json.dumps(sorted(choices, reverse=True))}"]
        extra = model if "elastic" in config else [f"--paths.base={base_dirs[base]}"]
        if adapter:
            extra.append(f"--paths.adapter={adapter}")
        extra += SETTINGS.get(name, [])
        cost = run(PY + ["-m", "spacy", "train", config, "--output", str(out), f"--paths.train={TRAIN}",
                         f"--paths.dev={DEV}", f"--training.max_steps={steps}", f"--training.eval_frequency={steps}",
                         "--corpora.dev.limit=20", *extra], work / f"train_{name}.log")
        cost["seconds_per_step"] = round(cost["seconds"] / steps, 2)
        cost.update(measured())
        costs[name] = cost
        costs_path.write_text(json.dumps(costs, indent=1))
    return costs


def sub_adapters(work: Path, select: Tuple[int, int], budget: int, choices: List[int]) -> Dict[str, Path]:
    """Pipelines of the elastic super-adapter at each uniform rank, and the
    searched one (search-adapter on the selection lines)."""
    from spacy_padellm.cli import _load_component, write_sub_adapter

    elastic_pipeline = work / "train_elastic" / "model-last"
    out = {}
    nlp = name = shim = None
    for k, rank in enumerate(sorted(choices, reverse=True)):
        path = work / f"elastic_r{rank}"
        out[f"elastic_{k}"] = path
        if not (path / "meta.json").exists():
            if nlp is None:
                nlp, name, shim = _load_component(str(elastic_pipeline))
            write_sub_adapter(nlp, name, shim, {g: rank for g in shim.elastic.groups}, path)
    search = work / "search"
    if not (search / "search.json").exists():
        run(PY + ["-m", "spacy_padellm", "search-adapter", str(elastic_pipeline), str(DEV), "--skip", str(select[0]),
                  "--limit", str(select[1] - select[0]), "--budget", str(budget), "--output", str(search)],
            work / "search.log")
    out["searched"] = search / "pipeline"
    return out


def gguf_zero_share(path: Path) -> Tuple[float, Dict[str, str]]:
    """Share of exact zeros in the decoder projections as llama.cpp reads
    them (dequantized), and the tensor types used."""
    import numpy
    from gguf import GGUFReader
    from gguf.quants import dequantize

    zeros = total = 0
    types: Dict[str, str] = {}
    for tensor in GGUFReader(str(path)).tensors:
        if tensor.name.startswith("blk.") and tensor.name.endswith(".weight") and len(tensor.shape) == 2:
            values = dequantize(tensor.data, tensor.tensor_type)
            zeros += int(numpy.count_nonzero(values == 0))
            total += values.size
            types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
    return zeros / max(total, 1), types


def evaluate(pipeline: Path, report: Tuple[int, int], latency_docs: int, export: str = "q8_0") -> Dict[str, Any]:
    import spacy
    from spacy.scorer import Scorer
    from spacy.training import Example

    nlp = spacy.load(pipeline, config={"components": {"padellm_ner": {"model": {
        "@architectures": "spacy_padellm.LlamaCpp.v1", "export": export}}}})
    reader = spacy.registry.readers.get("spacy_padellm.JsonlCorpus.v1")(
        DEV, skip=report[0], limit=report[1] - report[0])
    refs = [eg.reference for eg in reader(nlp)]
    texts = [ref.text for ref in refs]
    nlp(texts[0])  # load (and export, once) before any timing
    latencies = []
    for text in texts[:latency_docs]:
        started = time.perf_counter()
        nlp(text)
        latencies.append(1000 * (time.perf_counter() - started))
    started = time.perf_counter()
    docs = list(nlp.pipe(texts, batch_size=8))
    batched = time.perf_counter() - started
    scores = Scorer.score_spans([Example(doc, ref) for doc, ref in zip(docs, refs)], "ents")
    shim = nlp.get_pipe("padellm_ner").shim
    zero_share, types = gguf_zero_share(shim.gguf_path)
    return {"P": round(100 * (scores["ents_p"] or 0), 2), "R": round(100 * (scores["ents_r"] or 0), 2),
            "F": round(100 * (scores["ents_f"] or 0), 2), "sentences": len(texts),
            "median_ms_bs1": round(statistics.median(latencies), 1), "mean_ms_bs1": round(statistics.mean(latencies), 1),
            "sentences_per_s_bs8": round(len(texts) / batched, 2),
            "gguf_mb": round(os.path.getsize(shim.gguf_path) / 2**20, 1), "zero_share": round(zero_share, 4),
            "tensor_types": types, **measured()}


ROWS = [  # (row, pipeline key, training whose budget it used); elastic_K: the K-th largest rank
    ("dense LoRA r=16", "lora16", "lora16"),
    ("dense LoRA r=16, exported Q4_0 after training (fitted scales, no QA)", "lora16_q4", "lora16"),
    ("elastic super-adapter, uniform r={0}", "elastic_0", "elastic"),
    ("elastic, uniform r={1} (the median)", "elastic_1", "elastic"),
    ("elastic, uniform r={2}", "elastic_2", "elastic"),
    ("elastic, searched sub-adapter", "searched", "elastic"),
    ("50% Wanda + LoRA, unmasked (merged in float32: no zeros; Q8_0 rounds some to 0)", "sparse_lora", "sparse_lora"),
    ("50% Wanda + SparsePEFT", "sparse", "sparse"),
    ("50% Wanda + Q8_0 + QA-SparsePEFT", "sparse_q8", "sparse_q8"),
    ("50% Wanda + Q4_0 (peak scales) + QA-SparsePEFT", "sparse_q4", "sparse_q4"),
    ("50% Wanda + Q4_0 (fitted scales) + QA-SparsePEFT", "sparse_q4f", "sparse_q4f"),
    ("dense Q4_0 (peak scales) + QA-LoRA", "dense_q4", "dense_q4"),
    ("dense Q4_0 (fitted scales) + QA-LoRA", "dense_q4f", "dense_q4f"),
]

EXPORTS = {"lora16_q4": "q4_0"}  # a row's llama.cpp export where it is not Q8_0 (QA rows: their grid)

# LoRA on the same base, which SQFT compares each row against (dense rows: dense LoRA).
BASELINES = {"sparse_lora": "sparse_lora", "sparse": "sparse_lora", "sparse_q8": "sparse_lora", "sparse_q4": "sparse_lora",
             "sparse_q4f": "sparse_lora"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--select", type=line_range, default=(0, 200), help="dev lines for the search (within 0-499)")
    parser.add_argument("--report", type=line_range, default=(500, 3250), help="dev lines reported on")
    parser.add_argument("--budget", type=int, default=8, help="search evaluations")
    parser.add_argument("--latency-docs", type=int, default=50)
    parser.add_argument("--rows", default="", help="comma-separated pipeline keys (default: all)")
    parser.add_argument("--adapter", default=None,
                        help="continue this rank-16 adapter in every row (default: new adapters)")
    parser.add_argument("--rank-choices", default="32,24,16", help="the elastic rows' ranks, largest first")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    choices = sorted((int(c) for c in args.rank_choices.split(",")), reverse=True)
    if len(choices) != 3:
        parser.error("--rank-choices: three ranks (the rows are the largest, the median and the smallest)")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    wanted = [r for r in ROWS if not args.rows or r[1] in args.rows.split(",")]
    results_path = work / f"rows_{args.report[0]}_{args.report[1]}.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    # A row already evaluated needs neither its base nor its training again, so
    # a table finished over several sessions only trains what it still lacks.
    todo = [r for r in wanted if r[1] not in results]
    trainings = [t for t in TRAININGS if any(r[2] == t for r in todo)]
    base_dirs = bases(work, [TRAININGS[t][1] for t in trainings])
    costs = train(work, base_dirs, args.steps, trainings, args.adapter, choices)
    pipelines = {name: work / f"train_{name}" / "model-last" for name in trainings}
    if "elastic" in trainings:
        pipelines.update(sub_adapters(work, args.select, args.budget, choices))
    for row, key, training in todo:
        say(f"evaluating {row.format(*choices)} on dev lines {args.report[0]}-{args.report[1] - 1}")
        results[key] = evaluate(pipelines.get(key, pipelines[training]), args.report, args.latency_docs,
                                EXPORTS.get(key, "q8_0"))
        results_path.write_text(json.dumps(results, indent=1))
    dense_f = results.get("lora16", {}).get("F")
    meta = {"machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs", "date": str(date.today()),
            "steps": args.steps, "batch": 8, "adapter": args.adapter, "rank_choices": choices, "select": args.select, "report": args.report, "budget": args.budget,
            "command": "python " + " ".join(sys.argv)}
    search_path = work / "search" / "search.json"
    search = json.loads(search_path.read_text()) if search_path.exists() else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "rows": results, "training": costs, "search": search}, indent=1) + "\n")
    start = f"continuing {args.adapter}" if args.adapter else "new adapters"
    lines = [f"# SQFT rows on CoNLL-03: one training budget ({args.steps} steps of 8 train sentences, {start})", "",
             f"{meta['machine']}; {meta['date']}. Sub-adapter search on dev lines {args.select[0]}-{args.select[1] - 1} "
             f"({args.budget} evaluations); every figure below on dev lines {args.report[0]}-{args.report[1] - 1}, "
             "on the llama.cpp backend (the adapter merged; QA rows on their base's grid, the row exported "
             "Q4_0 after training on Q4_0 (fitted scales), others Q8_0). "
             "Size: the GGUF file; zeros: share of exact zeros in the decoder projections as llama.cpp reads them.",
             "", f"`{meta['command']}`", "",
             "| row | span F1 | vs. dense LoRA | vs. LoRA on its base | P | R | GGUF MB | zeros | median ms (bs 1) | sentences/s (bs 8) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row, key, _ in wanted:
        r = results[key]
        row = row.format(*choices)
        delta = f"{r['F'] - dense_f:+.2f}" if dense_f is not None else "–"
        own = results.get(BASELINES.get(key, "lora16"), {}).get("F")
        own_delta = f"{r['F'] - own:+.2f}" if own is not None else "–"
        lines.append(f"| {row} | {r['F']:.2f} | {delta} | {own_delta} | {r['P']:.2f} | {r['R']:.2f} | {r['gguf_mb']:.0f} | "
                     f"{100 * r['zero_share']:.1f}% | {r['median_ms_bs1']:.0f} | {r['sentences_per_s_bs8']:.2f} |")
    lines += ["", "Training cost (the whole `spacy train` run: load, steps, a 20-sentence dev pass; peak RSS of the process):",
              "", "| training | s per step | peak RSS MB |", "| --- | ---: | ---: |"]
    for name, cost in costs.items():
        lines.append(f"| {name} | {cost['seconds_per_step']:.2f} | {cost['peak_rss_mb']} |")
    best = search["best"] if search else None
    lines += [] if not search else ["", f"Search: best F1 {100 * best['score']:.2f} on the selection lines with {best['parameters']:,} "
              f"adapter parameters (median {100 * search['median']['score']:.2f}, "
              f"{search['median']['parameters']:,}; {len(search['trials'])} configurations)."]
    def stamp(entry: Dict[str, Any]) -> Tuple[str, str]:
        return entry.get("date", "?"), entry.get("cpu", "?")

    when = sorted({stamp(results[k]) for _, k, _ in wanted} | {stamp(c) for c in costs.values()})
    if len(when) > 1:
        lines += ["", "Measured over several sessions (rows and trainings by date and CPU):", ""]
        for day, cpu in when:
            keys = [k for _, k, _ in wanted if stamp(results[k]) == (day, cpu)]
            trained = [n for n, c in costs.items() if stamp(c) == (day, cpu)]
            lines.append(f"- {day}, {cpu}: rows {', '.join(keys) or '-'}; trainings {', '.join(trained) or '-'}")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
