"""PaDeLLM vs. the autoregressive baseline (and context rows), side by side.

    python benchmarks/decoding.py ../shared/data/conll03/dev.jsonl --limit 300 \
        --pipeline "spaCy ner (CNN)=training/spacy_ner/model-best" --spacy-llm

For each system: span-level P/R/F (spaCy's scorer, `ents`), string-level
micro-F1 over (label, mention) pairs (the paper's metric), latency per doc at
batch size 1 (mean, p50, p90), throughput with `nlp.pipe` at batch sizes 1, 8
and 32, generated tokens and sequential decoding steps per doc, peak memory,
and for the LLM rows a profile of where the time goes. Systems are
alternated doc by doc (latency) and run by run (throughput), so drift on a
shared machine hits all of them alike; ratios are against the autoregressive
baseline. Writes <out>.json, <out>.md and PNG plots next to them.

The input is a JSONL file of ../shared/data (read with
spacy_padellm.JsonlCorpus.v1; pass --end for the span convention) or a
`.spacy` DocBin.
"""
import argparse
import json
import statistics
import sys
import threading
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import spacy
import torch
from spacy.scorer import Scorer
from spacy.tokens import Doc, DocBin
from spacy.training import Example

sys.path.insert(0, str(Path(__file__).parent))
import plots  # noqa: E402
from cpu import cpu_description  # noqa: E402
import systems as rows  # noqa: E402

def read_docs(path: Path, end: str, limit: int) -> List[Doc]:
    nlp = spacy.blank("en")
    if path.suffix == ".spacy":
        docs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
    else:
        reader = spacy.registry.readers.get("spacy_padellm.JsonlCorpus.v1")(path, end=end)
        docs = [eg.reference for eg in reader(nlp)]
    return docs[:limit] if limit else docs


class PeakMemory:
    """Peak memory while a block runs: resident set size sampled every 5 ms on
    CPU, torch's allocator peak on GPU. Reported above the level at entry."""

    def __init__(self, cuda: bool) -> None:
        import psutil

        self.process = psutil.Process()
        self.cuda = cuda
        self.peak_mb = 0.0

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
        else:
            self.running = False
            self.thread.join()
            peak = self.peak
        self.peak_mb = max(self.peak_mb, (peak - self.start) / 2**20)


def memory_in_use(cuda: bool) -> int:
    import psutil

    return torch.cuda.memory_allocated() if cuda else psutil.Process().memory_info().rss


def string_f1(golds: Sequence[Doc], preds: Sequence[Doc]) -> Dict[str, float]:
    """Micro P/R/F over (label, mention string) pairs per doc, as multisets."""
    tp = n_pred = n_gold = 0
    for gold, pred in zip(golds, preds):
        g = Counter((e.label_, e.text) for e in gold.ents)
        p = Counter((e.label_, e.text) for e in pred.ents)
        tp += sum((g & p).values())
        n_pred += sum(p.values())
        n_gold += sum(g.values())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"p": precision, "r": recall, "f": f}


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def progress(label: str, done: int, total: int, every: int = 25) -> None:
    if done == total or done % every == 0:
        print(f"  {label}: {done}/{total}", flush=True)


def measure_latency(systems: List[rows.System], docs: List[Doc]) -> Dict[str, Dict[str, Any]]:
    """Batch size 1, one doc at a time, the systems' order rotated per doc."""
    out = {s.name: {"seconds": [], "docs": [], "n_ents": []} for s in systems}
    for s in systems:
        s.set_batch_size(1)
    for i, gold in enumerate(docs):
        for k in range(len(systems)):
            system = systems[(i + k) % len(systems)]
            if system.limit is not None and i >= system.limit:
                continue
            start = time.perf_counter()
            doc = system.nlp(gold.text)
            out[system.name]["seconds"].append(time.perf_counter() - start)
            out[system.name]["docs"].append(doc)
            out[system.name]["n_ents"].append(len(gold.ents))
        progress("latency", i + 1, len(docs))
    return out


def measure_throughput(systems: List[rows.System], docs: List[Doc], cuda: bool) -> Dict[str, Dict[int, Dict[str, float]]]:
    out: Dict[str, Dict[int, Dict[str, float]]] = {s.name: {} for s in systems}
    for r, size in enumerate(plots.BATCH_SIZES):
        for k in range(len(systems)):
            system = systems[(r + k) % len(systems)]
            texts = [d.text for d in docs[: system.limit or len(docs)]]
            system.set_batch_size(size)
            memory = PeakMemory(cuda)
            with memory:
                start = time.perf_counter()
                for _ in system.nlp.pipe(texts, batch_size=size):
                    pass
                seconds = time.perf_counter() - start
            words = sum(len(t.split()) for t in texts)
            out[system.name][size] = {"docs_per_s": len(texts) / seconds, "words_per_s": words / seconds,
                                      "seconds": seconds, "peak_memory_mb": memory.peak_mb}
            print(f"  throughput bs={size} {system.name}: {len(texts) / seconds:.2f} docs/s", flush=True)
    return out


class PhaseTimer:
    """Where a PaDeLLM component's time goes at batch size 1, by engine call:
    the fused prefill (text plus the first step's branches, one forward
    call), the generation that follows inside it (the autoregressive line;
    nothing for PaDeLLM, whose first step yields one count token there), and
    each later `decode` call (PaDeLLM: 1 = counts finished with the
    speculated mentions, or the count step without speculation; 2 = the
    mention step). Within each, the time in the model's forward calls; the
    rest of a doc's latency is tokenization, alignment, annotation, spaCy."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.totals: Counter = Counter()
        self.forward = 0.0

    def install(self) -> Callable[[], None]:
        pipe = self.pipe
        pipe._ensure_loaded()
        engine, model = pipe._decoder.engine, pipe.shim.model
        state: Dict[str, Any] = {"phase": None, "decodes": 0}
        originals = {name: getattr(engine, name) for name in ("encode_with_branches", "encode_prefixes", "decode", "_greedy")}

        def timed(name: str, fn: Callable) -> Callable:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                outer, state["phase"] = state["phase"], name
                before, start = self.forward, time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    spent, in_model = time.perf_counter() - start, self.forward - before
                    self.totals[name] += spent
                    self.totals[name + " (model forward)"] += in_model
                    if outer is not None:  # nested: count it once, in the inner phase
                        self.totals[outer] -= spent
                        self.totals[outer + " (model forward)"] -= in_model
                    state["phase"] = outer
            return wrapper

        def phase_of(kind: str) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                if kind == "prefill":
                    state["decodes"] = 0
                    return timed("prefill (fused)", originals["encode_with_branches"])(*args, **kwargs)
                if kind == "prefill-unfused":
                    state["decodes"] = 0
                    return timed("prefill (unfused)", originals["encode_prefixes"])(*args, **kwargs)
                if kind == "greedy" and state["phase"] == "prefill (fused)":
                    return timed("generation inside the fused call", originals["_greedy"])(*args, **kwargs)
                if kind == "greedy":
                    return originals["_greedy"](*args, **kwargs)
                state["decodes"] += 1
                return timed(f"decode call {state['decodes']}", originals["decode"])(*args, **kwargs)
            return call

        engine.encode_with_branches = phase_of("prefill")
        engine.encode_prefixes = phase_of("prefill-unfused")
        engine.decode = phase_of("decode")
        engine._greedy = phase_of("greedy")
        stamps: List[float] = []

        def post_hook(*_: Any) -> None:
            self.forward += time.perf_counter() - stamps.pop()

        pre = model.register_forward_pre_hook(lambda *_: stamps.append(time.perf_counter()))
        post = model.register_forward_hook(post_hook)

        def uninstall() -> None:
            for name in originals:
                delattr(engine, name)  # back to the class's methods
            pre.remove()
            post.remove()

        return uninstall


def profile(system: rows.System, docs: List[Doc]) -> Dict[str, float]:
    """Milliseconds per doc in each phase, at batch size 1."""
    pipe = system.padellm_pipe()
    timer = PhaseTimer(pipe)
    uninstall = timer.install()
    system.set_batch_size(1)
    start = time.perf_counter()
    try:
        for doc in docs:
            system.nlp(doc.text)
    finally:
        uninstall()
    total = time.perf_counter() - start
    result = {name: 1000 * seconds / len(docs) for name, seconds in sorted(timer.totals.items())}
    phases = [k for k in timer.totals if "(model forward)" not in k]  # disjoint after nesting is subtracted
    result["outside decoding (tokenize, align, annotate)"] = 1000 * (total - sum(timer.totals[k] for k in phases)) / len(docs)
    result["total"] = 1000 * total / len(docs)
    return result


def ablation(system: rows.System, docs: List[Doc]) -> Dict[str, float]:
    """Mean latency (ms) at batch size 1 with the decoding shortcuts switched
    off one by one, variants rotated doc by doc. Every variant gives the same
    entities; only the sequential forward calls and the tokens evaluated differ."""
    pipe = system.padellm_pipe()
    pipe._ensure_loaded()
    decoder = pipe._decoder
    switches = ("fused_prefill", "speculative_counts", "fork_mentions")
    if pipe.cfg["decoding"] == "parallel":
        variants = {"fused + forked mentions + speculative counts": (True, True, True),
                    "fused + forked mentions": (True, False, True),
                    "fused + speculative counts (label re-encoded)": (True, True, False),
                    "fused": (True, False, False), "neither": (False, False, False)}
    else:
        variants = {"fused": (True,), "not fused": (False,)}
    default = tuple(getattr(decoder, name) for name in switches[: len(next(iter(variants.values())))])
    system.set_batch_size(1)
    seconds: Dict[str, List[float]] = {name: [] for name in variants}
    names = list(variants)
    try:
        for i, doc in enumerate(docs):
            for k in range(len(names)):
                name = names[(i + k) % len(names)]
                for switch, value in zip(switches, variants[name]):
                    setattr(decoder, switch, value)
                start = time.perf_counter()
                system.nlp(doc.text)
                seconds[name].append(time.perf_counter() - start)
    finally:
        for switch, value in zip(switches, default):
            setattr(decoder, switch, value)
    result = {name: 1000 * statistics.mean(v) for name, v in seconds.items()}
    result["default here"] = next((name for name, v in variants.items() if v == default), "other")
    return result


def summarize(system: rows.System, golds: List[Doc], latency: Dict[str, Any], throughput: Dict[int, Dict[str, float]],
              tokens_before: Optional[int]) -> Dict[str, Any]:
    preds = latency["docs"]
    golds = golds[: len(preds)]
    scores = Scorer.score_spans([Example(p, g) for p, g in zip(preds, golds)], "ents")
    seconds = latency["seconds"]
    result: Dict[str, Any] = {
        "kind": system.kind,
        "notes": system.notes,
        "docs": len(preds),
        "span": {"p": scores["ents_p"], "r": scores["ents_r"], "f": scores["ents_f"]},
        "string": string_f1(golds, preds),
        "latency_ms": {"mean": 1000 * statistics.mean(seconds), "p50": 1000 * percentile(seconds, 0.5),
                       "p90": 1000 * percentile(seconds, 0.9)},
        "throughput": throughput,
        "latency_by_doc": [{"n_ents": n, "ms": 1000 * s} for n, s in zip(latency["n_ents"], seconds)],
    }
    stats = [d._.padellm for d in preds if d.has_extension("padellm") and d._.padellm]
    if system.kind == "padellm" and stats:
        result["generated_tokens_per_doc"] = statistics.mean(s["generated_tokens"] for s in stats)
        result["decoding_steps_per_doc"] = statistics.mean(s["decoding_steps"] for s in stats)
    elif system.kind == "spacy-llm" and tokens_before is not None:
        per_doc = (system.generated_tokens() - tokens_before) / len(preds)
        result["generated_tokens_per_doc"] = per_doc
        result["decoding_steps_per_doc"] = per_doc  # one sequence per doc
    return result


def device_name(gpu: bool) -> str:
    if gpu:
        return torch.cuda.get_device_name(0)
    return f"{cpu_description()}, {torch.get_num_threads()} torch threads"


def write_profile(systems: List[rows.System], docs: List[Doc], args: argparse.Namespace) -> None:
    report = {"date": date.today().isoformat(), "device": device_name(args.gpu), "command": "python " + " ".join(sys.argv),
              "data": str(args.path), "docs": len(docs), "systems": {}}
    for s in systems:
        if s.kind == "padellm":
            report["systems"][s.name] = {"profile_ms_per_doc": profile(s, docs), "ablation_ms_per_doc": ablation(s, docs)}
    out = args.out.with_name(args.out.name + "_profile")
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(plots.profile_markdown(report))
    print(plots.profile_markdown(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="JSONL of ../shared/data or a .spacy DocBin")
    parser.add_argument("--end", default="inclusive", help="span end convention of a JSONL file")
    parser.add_argument("--limit", type=int, default=300, help="docs to use (0: all)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first docs (e.g. those used for selection)")
    parser.add_argument("--parallel", help="saved PaDeLLM pipeline (default: add_pipe with the shipped adapter)")
    parser.add_argument("--autoregressive", help="saved autoregressive pipeline (default: add_pipe)")
    parser.add_argument("--pipeline", action="append", default=[], metavar="NAME=PATH", help="extra spaCy pipeline row")
    parser.add_argument("--spacy-llm", action="store_true", help="add spacy-llm's NER.v3 on the same base model")
    parser.add_argument("--spacy-llm-limit", type=int, default=40, help="docs for the (slow) spacy-llm row")
    parser.add_argument("--spacy-llm-shots", type=int, default=3)
    parser.add_argument("--train", type=Path, default=None, help="JSONL with the few-shot examples for spacy-llm")
    parser.add_argument("--profile-docs", type=int, default=50)
    parser.add_argument("--gpu", action="store_true", help="run the LLM rows on GPU 0")
    parser.add_argument("--llama-cpp", action="store_true", help="add both modes on the llama.cpp backend (LlamaCpp.v1)")
    parser.add_argument("--no-throughput", action="store_true", help="skip the nlp.pipe throughput runs")
    parser.add_argument("--profile-only", action="store_true",
                        help="only the profile and the ablation of the two PaDeLLM modes (writes <out>_profile.*)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "decoding_cpu")
    args = parser.parse_args()

    device = "cuda:0" if args.gpu else None
    docs = read_docs(args.path, args.end, args.limit + args.skip if args.limit else 0)[args.skip :]
    print(f"{len(docs)} docs from {args.path}", flush=True)
    builders = [lambda: rows.padellm("parallel", args.parallel, device),
                lambda: rows.padellm("autoregressive", args.autoregressive, device)]
    if args.llama_cpp:
        builders += [lambda: rows.padellm("parallel", args.parallel, backend="llama.cpp"),
                     lambda: rows.padellm("autoregressive", args.autoregressive, backend="llama.cpp")]
    for spec in args.pipeline:
        name, _, path = spec.partition("=")
        builders.append(lambda name=name, path=path: rows.spacy_pipeline(name, path))
    if args.spacy_llm:
        train = read_docs(args.train, args.end, 50) if args.train else docs[:0]
        shots = args.spacy_llm_shots if args.train else 0
        builders.append(lambda: rows.spacy_llm(train, shots, args.spacy_llm_limit, 256, device))
    systems, loaded_mb = [], {}
    for build in builders:
        before = memory_in_use(args.gpu)
        system = build()
        system.nlp(docs[0].text)  # warm-up: lazy loads, first-call allocations
        loaded_mb[system.name] = (memory_in_use(args.gpu) - before) / 2**20
        systems.append(system)

    if args.profile_only:
        write_profile(systems, docs[: args.profile_docs], args)
        return
    print("latency at batch size 1", flush=True)
    tokens_before = {s.name: s.generated_tokens() for s in systems}
    evaluated_before = {s.name: s.tokens_evaluated() for s in systems}
    latency = measure_latency(systems, docs)
    evaluated = {s.name: s.tokens_evaluated() for s in systems}
    print("throughput", flush=True)
    throughput = {s.name: {} for s in systems} if args.no_throughput else measure_throughput(systems, docs, cuda=args.gpu)
    results = {s.name: summarize(s, docs, latency[s.name], throughput[s.name], tokens_before[s.name]) for s in systems}
    for name, mb in loaded_mb.items():
        results[name]["loaded_memory_mb"] = mb
    for name, before in evaluated_before.items():
        if before is not None:
            results[name]["tokens_evaluated_per_doc"] = (evaluated[name] - before) / len(docs)
    print("profile", flush=True)
    for s in systems:
        if s.kind == "padellm" and s.on_torch():  # the profile hooks into torch
            results[s.name]["profile_ms_per_doc"] = profile(s, docs[: args.profile_docs])
            results[s.name]["ablation_ms_per_doc"] = ablation(s, docs[: args.profile_docs])

    base = results["autoregressive"]
    for r in results.values():
        r["latency_speedup_vs_autoregressive"] = base["latency_ms"]["mean"] / r["latency_ms"]["mean"]
    device_label = device_name(args.gpu)
    report = {
        "date": date.today().isoformat(),
        "device": device_label,
        "command": "python " + " ".join(sys.argv),
        "data": str(args.path),
        "docs": len(docs),
        "versions": {"torch": torch.__version__, "spacy": spacy.__version__},
        "systems": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(plots.markdown(report))
    plots.draw(report, args.out)
    print(plots.markdown(report))


if __name__ == "__main__":
    main()
