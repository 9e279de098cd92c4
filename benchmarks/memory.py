"""Peak memory (RSS) of the default pipeline on one huge doc.

Each case runs in a fresh process, which builds one doc of W words from
consecutive dev sentences (repeated when the file is shorter), decodes it
with `nlp(doc)` and reports its peak RSS (`ru_maxrss`), the RSS after
loading the model, and a sample of the RSS every second while it decodes,
so a bound that does not hold shows as growth. Two shapes:

- `sents`: a sentencizer sets `doc.sents` (whole sentences are packed);
- `none`: no sentence boundaries and no sentence-final punctuation at
  all: the component's own split (the shipped senter for English) finds
  the sentences, and the run-ons it leaves are cut into parts.

    python benchmarks/memory.py ../shared/data/conll03/dev.jsonl --words 2000,20000,200000 \
        --out benchmarks/results/memory_cpu

`--max-seconds S` stops a case after S seconds of decoding (its row then
says how far it got): the 200,000-word doc takes about 90 minutes with one
torch thread (2-core CPU, the two shapes side by side).
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional

SENTENCE_END = {".", "!", "?"}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_text(data: Path, words: int, boundaries: bool) -> str:
    out: List[str] = []
    with data.open(encoding="utf8") as f:
        sentences = [json.loads(line)[0] for line in f if line.strip()]
    k = 0
    while len(out) < words:
        tokens = sentences[k % len(sentences)].split(" ")
        out.extend(t for t in tokens if boundaries or t not in SENTENCE_END)
        k += 1
    return " ".join(out[:words])


def case(data: Path, words: int, shape: str, max_seconds: Optional[float]) -> Dict[str, Any]:
    """One measurement, in this process (the parent starts one per case)."""
    import spacy

    nlp = spacy.blank("en")
    nlp.max_length = 10**8  # spaCy refuses texts over 1,000,000 characters by default
    if shape == "sents":
        nlp.add_pipe("sentencizer")
    nlp.add_pipe("padellm_ner")
    nlp.initialize()
    nlp("Warm up .")
    loaded = rss_mb()
    doc = nlp.make_doc(build_text(data, words, shape == "sents"))
    for _, proc in nlp.pipeline:
        if not hasattr(proc, "fallback_counts"):
            doc = proc(doc)
    built = rss_mb()
    samples: List[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            samples.append(round(rss_mb(), 1))

    threading.Thread(target=sample, daemon=True).start()
    pipe = nlp.get_pipe("padellm_ner")
    progress = {"segments_decoded": 0, "segments": len(pipe._segments(doc))}
    decode = pipe._decoder

    def counted(texts: List[str]) -> Any:
        out = decode(texts)
        progress["segments_decoded"] += len(texts)
        return out

    pipe._decoder = counted  # so a stopped case says how far it got
    started = time.perf_counter()
    timer = None
    if max_seconds:
        # When the time is up, report the peak so far and end the process.
        timer = threading.Timer(max_seconds, lambda: os._exit(_report(loaded, built, samples, words, shape, started, None, True, progress)))
        timer.daemon = True  # a finished case must not wait for it
        timer.start()
    doc = pipe(doc)
    if timer is not None:
        timer.cancel()
    done.set()
    return _result(loaded, built, samples, words, shape, started, doc, False, progress)


def _result(loaded, built, samples, words, shape, started, doc, stopped, progress) -> Dict[str, Any]:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "words": words, "shape": shape, "peak_rss_mb": round(peak, 1), "rss_after_load_mb": round(loaded, 1),
        "rss_with_doc_mb": round(built, 1), "seconds": round(time.perf_counter() - started, 1), "stopped_early": stopped,
        "rss_samples_mb": samples[:: max(1, len(samples) // 60)], **progress,
    }
    if doc is not None:
        out.update(segments=doc._.padellm["segments"], entities=len(doc.ents), fallbacks=doc._.padellm["fallbacks"])
    return out


def _report(*args: Any) -> int:
    print(json.dumps(_result(*args)), flush=True)
    return 0


def _finished(row: Dict[str, Any]) -> str:
    if not row["stopped_early"]:
        return "yes"
    if "segments_decoded" not in row:  # rows measured before progress was recorded
        return "no, stopped"
    return f"no, stopped after {row['segments_decoded']:,} of {row['segments']:,} segments"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--words", default="2000,20000,200000")
    parser.add_argument("--shapes", default="sents,none")
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--out", type=Path, help="output path without suffix (.json and .md)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # WORDS:SHAPE, in the child process
    args = parser.parse_args(argv)
    if args.case:
        words, shape = args.case.split(":")
        print(json.dumps(case(args.data, int(words), shape, args.max_seconds)), flush=True)
        return
    rows = []
    for words in [int(x) for x in args.words.split(",")]:
        for shape in args.shapes.split(","):
            command = [sys.executable, __file__, str(args.data), "--case", f"{words}:{shape}"]
            if args.max_seconds:
                command += ["--max-seconds", str(args.max_seconds)]
            proc = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if not lines:
                raise SystemExit(f"case {words}:{shape} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(lines[-1]))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "rss_samples_mb"}), file=sys.stderr, flush=True)
    import torch

    result = {
        "what": "peak RSS of one nlp(doc) call on a doc of W words (default pipeline, fresh process per case)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "date": date.today().isoformat(),
        "command": "python benchmarks/memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
        lines = [
            f"# {result['what']}", "", f"{result['machine']}; {result['date']}.", "", f"`{result['command']}`", "",
            "| words | sentence boundaries | peak RSS MB | RSS after load MB | RSS with the doc built MB | segments | entities | seconds | finished |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in rows:
            lines.append(
                f"| {r['words']:,} | {'sentencizer' if r['shape'] == 'sents' else 'none, no punctuation'} | {r['peak_rss_mb']} | "
                f"{r['rss_after_load_mb']} | {r['rss_with_doc_mb']} | {r.get('segments', '-')} | {r.get('entities', '-')} | "
                f"{r['seconds']} | {_finished(r)} |"
            )
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf8")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
