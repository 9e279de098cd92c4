"""Throughput of `python -m spacy_padellm annotate` on CoNLL-03 train
sentences: one process, `--n-process 2`, Ray with 1 and 2 actors, and Ray
with 2 actors where one actor is killed after the first shard is done
(the cost of recovering from it).

Every run is the command a user types, timed from start to exit (imports,
model loads and Ray start-up included), with the default pipeline unless
--pipeline is given. Runs alternate between variants when --repeats > 1;
the medians are reported.

    python benchmarks/annotate_throughput.py ../shared/data/conll03/train.jsonl --limit 2000 \
        --out benchmarks/results/annotate_cpu
"""
import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional

from spacy_padellm.annotation.ray_runner import actor_pids

VARIANTS = {
    "single process": [],
    "n-process 2": ["--n-process", "2"],
    "Ray 1 actor": ["--ray", "local[{cpus}]", "--actors", "1"],
    "Ray 2 actors": ["--ray", "local[{cpus}]", "--actors", "2"],
    "Ray 2 actors one killed": ["--ray", "local[{cpus}]", "--actors", "2"],
}


def write_input(source: Path, limit: int, path: Path) -> int:
    """The first `limit` sentences of a ../shared/data JSONL file (a list per
    line: text, then spans) as `{"id", "text"}` records."""
    n = 0
    with source.open(encoding="utf8") as f, path.open("w", encoding="utf8") as out:
        for line in f:
            if n == limit:
                break
            row = json.loads(line)
            out.write(json.dumps({"id": f"train-{n}", "text": row[0]}) + "\n")
            n += 1
    return n


def killer(out: Path, events: Dict[str, float], started: float) -> None:
    """Kill one actor once the first shard is done; note when a replacement
    actor process appears and when the next shard after the kill is done."""
    while time.time() - started < 3600:
        markers = list((out / ".state").glob("part-*.json"))
        pids = actor_pids()
        if markers and pids:
            before = set(pids)
            os.kill(pids[0], signal.SIGKILL)
            events["kill"] = time.time() - started
            events["shards_done_at_kill"] = len(markers)
            while time.time() - started < 3600:
                now = set(actor_pids())
                if "replacement" not in events and now - before:
                    events["replacement"] = time.time() - started
                if "replacement" in events:
                    return
                time.sleep(0.05)
        time.sleep(0.05)


def run_once(name: str, args: List[str], input_path: Path, work: Path, base: List[str]) -> Dict[str, Any]:
    out = work / name.replace(" ", "_").replace(",", "").replace("-", "")
    command = [sys.executable, "-m", "spacy_padellm", "annotate", str(input_path), str(out), "--quiet",
               "--overwrite", *base, *args]
    events: Dict[str, float] = {}
    started = time.time()
    thread = None
    if "killed" in name:
        thread = threading.Thread(target=killer, args=(out, events, started), daemon=True)
        thread.start()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    ids = [json.loads(line)["id"] for part in sorted(out.glob("part-*.jsonl"))
           for line in part.read_text(encoding="utf8").splitlines()]
    result = {"variant": name, "command": " ".join(command[1:]), "wall_s": round(wall, 2),
              "docs": manifest["totals"]["docs"], "words": manifest["totals"]["words"],
              "ids_unique": len(set(ids)), "ids_written": len(ids), **events}
    result["docs_per_s"] = round(result["docs"] / wall, 3)
    result["words_per_s"] = round(result["words"] / wall, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    names = [n.strip() for n in args.variants.split(",")]
    base = ["--shard-size", str(args.shard_size), "--batch-size", str(args.batch_size)]
    if args.pipeline:
        base += ["--pipeline", args.pipeline]
    with tempfile.TemporaryDirectory(prefix="annotate-bench-") as tmp:
        work = Path(tmp)
        input_path = work / "input.jsonl"
        docs = write_input(args.source, args.limit, input_path)
        runs: List[Dict[str, Any]] = []
        for repeat in range(args.repeats):
            for name in names:
                extra = [a.format(cpus=cpus) for a in VARIANTS[name]]
                result = run_once(name, extra, input_path, work, base)
                result["repeat"] = repeat
                print(json.dumps(result), file=sys.stderr, flush=True)
                runs.append(result)
    rows = []
    single: Optional[float] = None
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        wall = statistics.median(r["wall_s"] for r in mine)
        if name == "single process":
            single = wall
        row = {"variant": name, "wall_s": wall, "docs_per_s": round(docs / wall, 3),
               "words_per_s": round(statistics.median(r["words_per_s"] for r in mine), 1),
               "vs_single": round(wall / single, 3) if single else None,
               "exactly_once": all(r["ids_unique"] == r["ids_written"] == docs for r in mine)}
        if "killed" in name:
            row["kill_s"] = statistics.median(r.get("kill", float("nan")) for r in mine)
            row["replacement_s"] = statistics.median(r.get("replacement", float("nan")) - r.get("kill", 0.0)
                                                     for r in mine)
        rows.append(row)
    meta = {"machine": f"{platform.machine()}, {cpus} CPUs", "date": str(date.today()), "docs": docs,
            "source": str(args.source), "pipeline": args.pipeline or "the default",
            "shard_size": args.shard_size, "batch_size": args.batch_size, "repeats": args.repeats,
            "command": "python " + " ".join(sys.argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=1) + "\n")
    lines = [f"# `annotate` throughput: {docs} sentences of {args.source.name} (lines 1-{docs})", "",
             f"{meta['machine']}; {meta['date']}; pipeline: {meta['pipeline']}; shards of {args.shard_size}, "
             f"nlp.pipe batches of {args.batch_size}; wall time of the whole command (start-up included), "
             f"median of {args.repeats}.", "", f"`{meta['command']}`", "",
             "| variant | wall s | docs/s | words/s | wall time / single process's | every id exactly once |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['wall_s']:.1f} | {row['docs_per_s']:.2f} | {row['words_per_s']:.0f} | "
                     f"{row['vs_single']:.2f}x | {'yes' if row['exactly_once'] else 'NO'} |")
    for row in rows:
        if "kill_s" in row:
            calm = next((r["wall_s"] for r in rows if r["variant"] == "Ray 2 actors"), None)
            extra = f" The run took {row['wall_s'] - calm:.1f} s longer than without the kill." if calm else ""
            lines += ["", f"Killed run: one actor was killed at {row['kill_s']:.1f} s (after the first shard); "
                      f"a replacement actor process was up {row['replacement_s']:.1f} s later.{extra}"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
