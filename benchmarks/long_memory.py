"""Long documents behind the InfLLM memory: memory and time against length,
span F1 per method on long-document sets, and a retrieval probe.

Three parts, each writing `<out>_<part>.json` and `.md` (and a PNG):

    # memory and time against doc length (each length in a fresh process)
    python benchmarks/long_memory.py scaling --lengths 2048,8192,32768,131072 \\
        --out benchmarks/results/long_memory_cpu
    # span F1 and time of the methods on docs of consecutive dev sentences
    python benchmarks/long_memory.py accuracy ../shared/data/conll03/dev.jsonl \\
        --lines 500:900 --sizes 50,200 --out benchmarks/results/long_memory_cpu
    # an entity introduced with a cue, mentioned again much later
    python benchmarks/long_memory.py probe ../shared/data/conll03/dev.jsonl \\
        --out benchmarks/results/long_memory_cpu

`--gpu` (scaling, accuracy) runs the model on the first CUDA device, in
bfloat16; the evicted blocks then live in CPU RAM with a block cache on the
GPU, and the scaling rows add torch's peak GPU memory.

Long-document sets: the file's lines in order, cut into docs of N
consecutive sentences (the last partial doc dropped), joined by single
spaces; each doc's `doc.sents` are the file's sentences (as a senter or
parser would set them) and its gold entities are the sentences' entities
shifted into the doc. The methods:

- (a) sentences: today's default on sentence-split docs (segments of whole
  sentences, each decoded on its own);
- (b) windows: `segment_tokens = 0`, the doc decoded whole, or in windows of
  the context when longer (today's fallback);
- (c) sinks + window: the memory with `topk = 0` (StreamingLLM);
- (d) InfLLM: the memory with its defaults;
- (e) full attention: the memory with a window as long as the context
  allows (7,680 tokens of 8,192), which is full attention for every doc
  that fits in it (the rows say how many did).

Without `--trained` each method runs the default pipeline as a user gets
it: (a) and (b) with the shipped sentence-trained adapter (`adapter/`),
(c)-(e), which configure a memory, with `adapter_context/` (trained behind
preceding text). Results written before 2026-12-05 took `adapter/` for
every method; to measure it behind the memory now, pass a pipeline saved
with it as `--trained`.
"""
import argparse
import copy
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import spacy
from spacy.language import Language
from spacy.scorer import Scorer
from spacy.tokens import Doc
from spacy.training import Example

sys.path.insert(0, str(Path(__file__).parent))
from joined_docs import joined_reference, read_rows  # noqa: E402
from line_range import line_range  # noqa: E402

MEMORY = {"@misc": "spacy_padellm.InfLLMMemory.v1"}
FULL_WINDOW = 7680  # SmolLM2's 8,192 positions less one execution chunk of 512
METHODS: Dict[str, Dict[str, Any]] = {
    "(a) sentences": {"memory": None},
    "(b) windows": {"segment_tokens": 0, "memory": None},
    "(c) sinks + window": {"memory": {**MEMORY, "topk": 0}},
    "(d) InfLLM": {"memory": MEMORY},
    "(e) full attention": {"memory": {**MEMORY, "n_local": FULL_WINDOW}},
}


def selected(methods: Sequence[str], spec: str) -> List[str]:
    """The methods that `spec` ("(a),(d)") names by their letter; all of them when empty."""
    return [m for m in methods if not spec or m[:3] in spec.split(",")]


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """--methods, and --trained with the label of its rows (accuracy and probe alike)."""
    parser.add_argument("--methods", default="", help="e.g. (a),(d): a subset of the methods")
    parser.add_argument("--trained", type=Path, default=None, help="a saved pipeline (e.g. trained with preceding context) instead of the default")
    parser.add_argument("--trained-label", default="context-trained", help="how the rows of --trained are named")


def machine(gpu: bool = False) -> str:
    import os

    import torch

    if gpu:
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, bfloat16"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, torch CPU build"


def pipeline(path: Optional[Path] = None, gpu: bool = False, **config: Any) -> Language:
    """The default pipeline with `config`, or a saved one (a trained
    adapter) with `config` as load-time overrides; on GPU 0 with `gpu`."""
    if path is None:
        if gpu:
            config = {**config, "model": {"@architectures": "spacy_padellm.CausalLM.v1", "device": "cuda:0"}}
        nlp = spacy.blank("en")
        nlp.add_pipe("padellm_ner", config=config)
    else:
        if gpu:  # an override of the saved model's device only: its source stays
            config = {**config, "model": {"device": "cuda:0"}}
        nlp = spacy.load(path, config={"components": {"padellm_ner": config}} if config else {})
    nlp("Warm up .")
    return nlp


def long_doc(nlp: Language, rows: Sequence[list], end_inclusive: bool) -> Example:
    """One doc of consecutive sentences (see the module docstring); the
    predicted doc has the file's tokens and sentences."""
    reference = joined_reference(nlp, rows, end_inclusive)
    predicted = Doc(
        nlp.vocab, words=[t.text for t in reference], spaces=[bool(t.whitespace_) for t in reference],
        sent_starts=[bool(t.is_sent_start) for t in reference],
    )
    return Example(predicted, reference)


# --- accuracy -----------------------------------------------------------------

def accuracy(args: argparse.Namespace) -> None:
    rows = read_rows(args.data, *args.lines)
    sizes = [int(x) for x in args.sizes.split(",")]
    out = Path(f"{args.out}_accuracy.json")
    report = json.loads(out.read_text()) if out.exists() else {"results": {}}
    report.update({
        "date": str(date.today()), "machine": machine(args.gpu), "data": str(args.data), "lines": list(args.lines),
        "command": " ".join(sys.argv),
    })
    methods = selected(METHODS, args.methods)
    if args.trained:
        report.setdefault("trained", {})[args.trained_label] = str(args.trained)
    for method in methods:
        nlp = None
        name = f"{method}, {args.trained_label}" if args.trained else method
        for n in sizes:
            key = f"{name} | {n}"
            if key in report["results"]:
                continue
            nlp = nlp or pipeline(args.trained, args.gpu, **METHODS[method])
            pipe = nlp.get_pipe("padellm_ner")
            examples = [long_doc(nlp, rows[i : i + n], args.end_inclusive) for i in range(0, len(rows) - n + 1, n)]
            tokens = [len(pipe._decoder.engine.tokenize(eg.predicted.text)) for eg in examples]
            started = time.perf_counter()
            docs = list(nlp.pipe((eg.predicted for eg in examples), batch_size=len(examples)))
            seconds = time.perf_counter() - started
            for eg, doc in zip(examples, docs):
                eg.predicted = doc
            scores = Scorer.score_spans(examples, "spans", getter=lambda doc, key: doc.spans.get("padellm", []), has_annotation=None) \
                if args.spans else Scorer.score_spans(examples, "ents")
            prefix = "spans" if args.spans else "ents"
            memory = pipe.memory_settings and pipe._memory.settings
            report["results"][key] = {
                "method": name, "sentences_per_doc": n, "docs": len(examples), "command": " ".join(sys.argv),
                "tokens_per_doc": statistics.median(tokens),
                "fits_window": None if not memory else sum(t <= memory.n_local for t in tokens),
                "p": scores[f"{prefix}_p"], "r": scores[f"{prefix}_r"], "f": scores[f"{prefix}_f"],
                "seconds": seconds, "ms_per_word": 1000 * seconds / sum(len(eg.reference) for eg in examples),
                "fallbacks": dict(sum((Counter(d._.padellm["fallbacks"]) for d in docs), Counter())),
            }
            print(key, f"F {100 * scores[f'{prefix}_f']:.2f}", f"{seconds:.0f} s", file=sys.stderr, flush=True)
            out.write_text(json.dumps(report, indent=2))
        del nlp
    write_accuracy_md(report, Path(f"{args.out}_accuracy.md"))


def write_accuracy_md(report: Dict[str, Any], path: Path) -> None:
    lines = [
        f"# Long documents: span F1 and time per method ({report['date']}, {report['machine']})", "",
        f"Docs of consecutive sentences of `{report['data']}` lines {report['lines'][0]}:{report['lines'][1]}; "
        "the default pipeline unless the method names a trained pipeline (its CoNLL-03 adapter `adapter/`; "
        "behind a memory, (c)-(e), `adapter_context/` from 2026-12-05 on, `adapter/` before)"
        + "".join(f" ({label}: `{path}`)" for label, path in _trained(report).items()) + ". Commands: "
        + "; ".join(f"`{c}`" for c in dict.fromkeys(r.get("command", report["command"]) for r in report["results"].values())), "",
        "| method | sentences/doc | docs | tokens/doc (median) | docs within the window | P | R | **F** | s | ms/word |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"].values():
        fits = "–" if r["fits_window"] is None else f"{r['fits_window']} of {r['docs']}"
        lines.append(
            f"| {r['method']} | {r['sentences_per_doc']} | {r['docs']} | {r['tokens_per_doc']:.0f} | {fits} | "
            f"{100 * r['p']:.2f} | {100 * r['r']:.2f} | **{100 * r['f']:.2f}** | {r['seconds']:.0f} | {r['ms_per_word']:.1f} |"
        )
    for note in report.get("notes", []):  # what the figures alone do not say (machine load, selection)
        lines += ["", note]
    path.write_text("\n".join(lines) + "\n")
    plot_accuracy(report, path.with_suffix(".png"))


def _trained(report: Dict[str, Any]) -> Dict[str, str]:
    """Label -> path of each trained pipeline."""
    return report.get("trained") or {}


def plot_accuracy(report: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    results = list(report["results"].values())
    sizes = sorted({r["sentences_per_doc"] for r in results})
    methods = list(dict.fromkeys(r["method"] for r in results))
    width = 0.8 / max(1, len(methods))
    for k, method in enumerate(methods):
        xs, ys = [], []
        for j, n in enumerate(sizes):
            hit = [r for r in results if r["method"] == method and r["sentences_per_doc"] == n]
            if hit:
                xs.append(j + k * width)
                ys.append(100 * hit[0]["f"])
        ax.bar(xs, ys, width, label=method)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))], [f"{n} sentences/doc" for n in sizes])
    ax.set_ylabel("span F1")
    ax.set_title("Long documents: span F1 per method", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- probe --------------------------------------------------------------------

PROBES = [
    ("The company Jordan Ltd said on Monday it would build a new plant .", "Jordan said profits rose 10 percent .", "Jordan", "ORG"),
    ("The company Victoria Holdings reported higher sales .", "Victoria said it would cut jobs .", "Victoria", "ORG"),
    ("The company Chelsea Corp was sold to a rival .", "Chelsea said the deal was closed .", "Chelsea", "ORG"),
    ("The company Florence Group announced a merger .", "Florence said shares fell .", "Florence", "ORG"),
    ("The striker Adelaide Brown scored twice in the final .", "Adelaide said the team was tired .", "Adelaide", "PER"),
    ("The singer Georgia Miles released a new album .", "Georgia said the tour would start in May .", "Georgia", "PER"),
]


def probe(args: argparse.Namespace) -> None:
    """Label accuracy of the later mention against the distance (filler
    tokens) from its cue. Behind the memory, only the mention's sentence
    is decoded: the filler is streamed in, as the pipeline would stream its
    segments (decoding them changes nothing in the memory)."""
    from spacy_padellm.memory.engine import BehindMemories

    filler_rows = [r for r in read_rows(args.data, *args.lines) if not any(p[2] in r[0] for p in PROBES)]
    filler = " ".join(r[0] for r in filler_rows)
    distances = [int(x) for x in args.distances.split(",")]
    results: Dict[str, Dict[int, List[bool]]] = {}
    timing: Dict[str, float] = {}
    chosen = selected(("(a) sentences", "(b) windows", "(c) sinks + window", "(d) InfLLM"), args.methods)
    for method in chosen:
        nlp = pipeline(args.trained, **METHODS[method])
        pipe = nlp.get_pipe("padellm_ner")
        engine = pipe._decoder.engine
        filler_ids = engine.tokenize(" " + filler)
        if args.trained:
            method = f"{method}, {args.trained_label}"
        results[method] = {d: [] for d in distances}
        started = time.perf_counter()
        for cue, target, name, label in PROBES:
            if pipe._memory is None:
                for d in distances:
                    text = cue + engine.detokenize(filler_ids[:d]) + " " + target
                    windows = method.startswith("(b) windows")
                    doc = nlp(text if windows else target)
                    results[method][d].append(_labelled(doc, len(text) - len(target) if windows else 0, name, label))
                continue
            memory = pipe._memory
            doc_memory = memory.new()
            memory.extend(doc_memory, pipe._decoder.prompts.leading_special + engine.tokenize(cue))
            done = 0
            for d in distances:
                memory.extend(doc_memory, filler_ids[done:d])
                done = d
                view = copy.copy(pipe._decoder)
                view.engine = BehindMemories(memory, [doc_memory], pipe._decoder.prompts)
                pred = view([target])[0]
                results[method][d].append(any(m.text.strip() == name and m.label == label for m in pred.mentions))
        timing[method] = time.perf_counter() - started
        print(method, {d: sum(v) for d, v in results[method].items()}, file=sys.stderr, flush=True)
        del nlp
    out = Path(f"{args.out}_probe.json")
    report = json.loads(out.read_text()) if out.exists() else {"accuracy": {}, "seconds": {}, "commands": {}}
    if report.get("distances", distances) != distances:
        report = {"accuracy": {}, "seconds": {}, "commands": {}}  # rows of other distances do not share a table
    report.update({"date": str(date.today()), "machine": machine(), "probes": PROBES, "distances": distances})
    for method, r in results.items():  # a run of some methods keeps the other rows
        report["accuracy"][method] = {str(d): sum(v) / len(v) for d, v in r.items()}
        report["seconds"][method] = timing[method]
        report.setdefault("commands", {})[method] = " ".join(sys.argv)
    timing = report["seconds"]
    out.write_text(json.dumps(report, indent=2))
    commands = dict.fromkeys(report["commands"].get(m, report.get("command", "")) for m in report["accuracy"])
    lines = [
        f"# Retrieval probe ({report['date']}, {report['machine']})", "",
        f"{len(PROBES)} entities introduced once with a cue (\"The company Jordan Ltd ...\") and mentioned again "
        "after N tokens of CoNLL-03 dev filler without the cue (\"Jordan said ...\"). Accuracy: the later mention "
        "found with the cue's label. Commands: " + "; ".join(f"`{c}`" for c in commands), "",
        "| method | " + " | ".join(f"{d} tokens" for d in distances) + " | s |",
        "| --- |" + " ---: |" * (len(distances) + 1),
    ]
    for method, acc in report["accuracy"].items():
        lines.append(f"| {method} | " + " | ".join(f"{acc[str(d)]:.2f}" for d in distances) + f" | {timing[method]:.0f} |")
    Path(f"{args.out}_probe.md").write_text("\n".join(lines) + "\n")


def _labelled(doc: Doc, offset: int, name: str, label: str) -> bool:
    return any(e.text == name and e.label_ == label and e.start_char >= offset for e in doc.spans.get("padellm", []))


# --- scaling ------------------------------------------------------------------

def scaling(args: argparse.Namespace) -> None:
    out = Path(f"{args.out}_scaling.json")
    report = json.loads(out.read_text()) if out.exists() else {"rows": {}}
    report.update({"date": str(date.today()), "machine": machine(args.gpu), "command": " ".join(sys.argv)})
    for length in [int(x) for x in args.lengths.split(",")]:
        if str(length) in report["rows"]:
            continue
        extra = ["--max-seconds", str(args.max_seconds)] if args.max_seconds else []
        extra += ["--gpu"] if args.gpu else []
        done = subprocess.run(
            [sys.executable, __file__, "one-length", str(length), "--data", str(args.data), *extra],
            capture_output=True, text=True, check=True,
        )
        report["rows"][str(length)] = json.loads(done.stdout.strip().splitlines()[-1])
        print(length, report["rows"][str(length)], file=sys.stderr, flush=True)
        out.write_text(json.dumps(report, indent=2))
    write_scaling_md(report, Path(f"{args.out}_scaling.md"))


def one_length(args: argparse.Namespace) -> None:
    """Stream `length` tokens of dev text into one doc memory, timing each
    execution chunk, then decode three sentences behind it."""
    import psutil
    import torch

    from spacy_padellm.memory.engine import BehindMemories

    def synchronized() -> float:
        if args.gpu:
            torch.cuda.synchronize()
        return time.perf_counter()

    nlp = pipeline(gpu=args.gpu, memory=MEMORY)
    pipe = nlp.get_pipe("padellm_ner")
    memory, engine = pipe._memory, pipe._decoder.engine
    rows = read_rows(args.data, 0, 10**9)
    process = psutil.Process()
    loaded_rss = process.memory_info().rss
    ids: List[int] = []
    k = 0
    while len(ids) < args.length:
        ids.extend(engine.tokenize(" " + " ".join(r[0] for r in rows[k : k + 200])))
        k = (k + 200) % len(rows)
    ids = ids[: args.length]
    doc_memory = memory.new()
    chunk = memory.settings.exec_chunk
    chunk_seconds: List[float] = []
    chunk_rss: List[int] = []  # after each chunk: growth beyond the blocks shows here, not only in the peak
    chunk_gpu: List[int] = []  # GPU memory allocated after each chunk (with --gpu)
    if args.gpu:
        loaded_gpu = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    streamed = 0
    for begin in range(0, len(ids), chunk):
        if args.max_seconds and sum(chunk_seconds) > args.max_seconds:
            break  # the row then reports the tokens streamed so far
        started = synchronized()
        memory.extend(doc_memory, ids[begin : begin + chunk])
        chunk_seconds.append(synchronized() - started)
        chunk_rss.append(process.memory_info().rss)
        if args.gpu:
            chunk_gpu.append(torch.cuda.memory_allocated())
        streamed = begin + len(ids[begin : begin + chunk])
    segment_seconds = []
    for row in rows[3000:3003]:
        view = copy.copy(pipe._decoder)
        view.engine = BehindMemories(memory, [doc_memory], pipe._decoder.prompts)
        started = synchronized()
        view([" " + row[0]])
        segment_seconds.append(synchronized() - started)
    nbytes = doc_memory.nbytes()
    s = memory.settings
    gpu = {} if not args.gpu else {
        "gpu_loaded_mb": loaded_gpu / 2**20,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20,
        "gpu_chunk_mb": [round(x / 2**20) for x in chunk_gpu],
    }
    print(json.dumps({
        **gpu,
        "tokens": streamed,
        "target_tokens": args.length,
        "stream_seconds": sum(chunk_seconds),
        "ms_per_token": 1000 * sum(chunk_seconds) / streamed,
        "chunk_ms_first": 1000 * statistics.median(chunk_seconds[:4]),
        "chunk_ms_last": 1000 * statistics.median(chunk_seconds[-4:]),
        "chunk_ms": [round(1000 * x, 1) for x in chunk_seconds],
        "chunk_rss_mb": [round(x / 2**20) for x in chunk_rss],
        "segment_ms": 1000 * statistics.median(segment_seconds),
        "rss_loaded_mb": loaded_rss / 2**20,
        "rss_mb": process.memory_info().rss / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "block_mb": nbytes["blocks"] / 2**20,
        "other_mb": nbytes["other"] / 2**20,
        "blocks": len(doc_memory.layers[0].blocks),
        "block_bytes_per_token": nbytes["blocks"] / max(1, doc_memory.block_tokens()),
        "keys_per_query": s.n_init + s.topk * s.block_size + s.n_local + s.exec_chunk,
    }))


def write_scaling_md(report: Dict[str, Any], path: Path) -> None:
    rows = sorted(report["rows"].values(), key=lambda r: r.get("target_tokens", r["tokens"]))
    lines = [
        f"# Long-document memory against doc length ({report['date']}, {report['machine']})", "",
        "One doc of CoNLL-03 dev text streamed into the InfLLM memory (defaults: n_init 128, n_local 1,024, "
        "blocks of 128, topk 16, repr_topk 4, chunks of 512), each length in a fresh process; then three "
        f"sentences decoded behind it (PaDeLLM, default adapter). Command: `{report['command']}`", "",
    ]
    gpu = any("gpu_peak_mb" in r for r in rows)
    lines += [
        "| tokens | stream s | ms/token | chunk ms (first / last) | chunk s, median per quarter of the doc | segment ms | RSS MB (loaded / after) | peak RSS MB | blocks MB | bytes/token in blocks | keys per query |"
        + (" GPU MB (model / peak) |" if gpu else ""),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if gpu else ""),
    ]
    for r in rows:
        lines.append(
            f"| {_tokens(r)} | {r['stream_seconds']:.1f} | {r['ms_per_token']:.2f} | {r['chunk_ms_first']:.0f} / {r['chunk_ms_last']:.0f} | "
            f"{_quarters(r.get('chunk_ms'))} | "
            f"{r['segment_ms']:.0f} | {r['rss_loaded_mb']:.0f} / {r['rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['block_mb']:.0f} | "
            f"{r['block_bytes_per_token']:,.0f} | {r['keys_per_query']:,} |"
            + (f" {r.get('gpu_loaded_mb', 0):.0f} / {r.get('gpu_peak_mb', 0):.0f} |" if gpu else "")
        )
    for note in report.get("notes", []):
        lines += ["", note]
    path.write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, chunks) = plt.subplots(1, 3, figsize=(13, 3.5))
    xs = [r["tokens"] for r in rows]
    left.plot(xs, [r["peak_rss_mb"] for r in rows], "o-", label="peak RSS")
    left.plot(xs, [r["block_mb"] for r in rows], "s--", label="blocks in RAM")
    if gpu:
        left.plot(xs, [r["gpu_peak_mb"] for r in rows], "^-", label="peak GPU memory")
    for r in rows:
        if r.get("chunk_rss_mb"):  # RSS after each chunk: a leak or fragmentation shows as a steeper line
            left.plot([(k + 1) * 512 for k in range(len(r["chunk_rss_mb"]))], r["chunk_rss_mb"], ":", linewidth=1, label=f"RSS while streaming {r['tokens']:,}")
    left.set_xscale("log")
    left.set_xlabel("doc tokens")
    left.set_ylabel("MB")
    left.legend(fontsize=8)
    right.plot(xs, [r["stream_seconds"] for r in rows], "o-", label="total stream s")
    right.plot(xs, [r["chunk_ms_last"] / 1000 for r in rows], "s--", label="last chunk s")
    right.plot(xs, [r["segment_ms"] / 1000 for r in rows], "^:", label="segment s")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("doc tokens")
    right.legend(fontsize=8)
    for r in rows:
        if r.get("chunk_ms"):
            chunks.plot([(k + 1) * 512 for k in range(len(r["chunk_ms"]))], [ms / 1000 for ms in r["chunk_ms"]], ".-", label=f"{r['tokens']:,} tokens")
    chunks.set_xlabel("tokens streamed")
    chunks.set_ylabel("s per chunk of 512")
    chunks.legend(fontsize=8)
    fig.suptitle("InfLLM memory: memory and time against length", fontsize=9)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)
    plt.close(fig)


def _tokens(row: Dict[str, Any]) -> str:
    target = row.get("target_tokens", row["tokens"])
    return f"{row['tokens']:,}" if row["tokens"] >= target else f"{row['tokens']:,} of {target:,} (stopped for time)"


def _quarters(chunk_ms: Optional[List[float]]) -> str:
    """Median chunk seconds in each quarter of the doc: flat once `topk`
    blocks exist, if the working set is bounded."""
    if not chunk_ms or len(chunk_ms) < 4:
        return "–"
    q = len(chunk_ms) / 4
    parts = [chunk_ms[round(i * q) : round((i + 1) * q)] for i in range(4)]
    seconds = [statistics.median(part) / 1000 for part in parts]
    return " / ".join(f"{x:.1f}" if x >= 1 else f"{x:.3f}" for x in seconds)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    acc = sub.add_parser("accuracy")
    acc.add_argument("data", type=Path)
    acc.add_argument("--lines", type=line_range, default=(500, 900))
    acc.add_argument("--sizes", default="50,200")
    acc.add_argument("--end-exclusive", dest="end_inclusive", action="store_false", help="genia: end indices exclusive")
    acc.add_argument("--spans", action="store_true", help="score the span group (nested data) instead of doc.ents")
    acc.add_argument("--gpu", action="store_true", help="the model on CUDA device 0")
    add_method_arguments(acc)
    acc.add_argument("--out", required=True)
    pr = sub.add_parser("probe")
    pr.add_argument("data", type=Path)
    pr.add_argument("--lines", type=line_range, default=(1000, 1400))
    pr.add_argument("--distances", default="0,256,1024,4096")
    pr.add_argument("--out", required=True)
    add_method_arguments(pr)
    sc = sub.add_parser("scaling")
    sc.add_argument("--data", type=Path, default=Path("../shared/data/conll03/dev.jsonl"))
    sc.add_argument("--lengths", default="2048,8192,32768,131072")
    sc.add_argument("--max-seconds", type=float, default=None, help="stop streaming a length after this many seconds (its row says how far it got)")
    sc.add_argument("--gpu", action="store_true", help="the model on CUDA device 0 (blocks in CPU RAM, cached on the GPU)")
    sc.add_argument("--out", required=True)
    one = sub.add_parser("one-length")
    one.add_argument("length", type=int)
    one.add_argument("--data", type=Path, required=True)
    one.add_argument("--max-seconds", type=float, default=None)
    one.add_argument("--gpu", action="store_true")
    args = parser.parse_args(argv)
    {"accuracy": accuracy, "probe": probe, "scaling": scaling, "one-length": one_length}[args.part](args)


if __name__ == "__main__":
    main()
