"""The driver of `annotate`: lay out the shards, skip those an earlier run
finished, hand the rest to workers (this process, `--n-process` processes,
or Ray actors), then gather errors and write the summary.

The workers write their shards themselves; the driver only reads their
results. So with Ray the driver holds no docs, and a driver that dies
loses nothing that a worker finished.
"""
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from .progress import Progress, summary, totals
from .shards import MANIFEST, OutputDir, Shard, ShardResult, errors_file, lay_out, merge_into_file
from .worker import Job, ShardAnnotator, check_pipeline, pipeline_name

DEFAULT_SHARD_SIZE = 1000
FILE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".spacy": "spacy"}


def output_target(output: Path, fmt: Optional[str]) -> tuple:
    """(work directory, output format, the one file to merge into or None).
    OUTPUT with a `.jsonl`/`.spacy` suffix is one file, built in
    `OUTPUT.parts/`; anything else is a directory of shards."""
    suffix = output.suffix.lower()
    if suffix in FILE_SUFFIXES and not output.is_dir():
        file_fmt = FILE_SUFFIXES[suffix]
        if fmt and fmt != file_fmt:
            raise SystemExit(f"OUTPUT {output} is a {file_fmt} file but --output-format is {fmt}: "
                             "drop one, or give a directory")
        return output.with_name(output.name + ".parts"), file_fmt, output
    if suffix == ".parquet":
        raise SystemExit("Parquet output goes into a directory of shards: give an OUTPUT without a suffix "
                         "and --output-format parquet")
    return output, fmt or "jsonl", None


def annotate(job: Job, *, shard_size: int = DEFAULT_SHARD_SIZE, n_process: int = 1, ray: Optional[str] = None,
             actors: int = 1, gpus_per_actor: Optional[float] = None, overwrite: bool = False,
             quiet: bool = False, say=print) -> Dict[str, Any]:
    """Annotate `job.input` into `job.output`; return the run's totals."""
    started = time.perf_counter()
    source = Path(job.input)
    if not source.is_file():
        raise SystemExit(f"INPUT {source} is not a file")
    check_pipeline(job.pipeline)
    job.pipeline = pipeline_name(job.pipeline)  # workers may run elsewhere (another cwd)
    work_root, fmt, target = output_target(Path(job.output), job.output_format or None)
    if overwrite:
        if work_root.is_dir():
            if any(work_root.iterdir()) and not (work_root / MANIFEST).exists():
                raise SystemExit(f"--overwrite: {work_root} is not the output of an annotate run (no {MANIFEST}); "
                                 "not deleting it. Choose another OUTPUT.")
            shutil.rmtree(work_root)
        if target is not None and target.is_file():
            target.unlink()
    if target is not None and target.exists() and not work_root.exists():
        raise SystemExit(f"{target} exists (a finished run?). Pass --overwrite to annotate again, or another OUTPUT.")
    job.output, job.output_format = str(work_root), fmt
    shards = lay_out(source, job.input_format, shard_size)
    settings = {**job.settings(), "shard_size": shard_size}
    out = OutputDir(work_root, fmt)
    done = out.open(settings, shards)
    todo = [shard for shard in shards if shard.index not in done]
    total_docs = sum(s.count for s in shards)
    if done:
        say(f"Resuming {work_root}: {len(done)} of {len(shards)} shards are done, {len(todo)} to go")
    if not shards:
        say(f"{source} holds no docs")
    progress = Progress(total_docs, sum(s.count for s in shards if s.index in done), quiet)
    try:
        if not todo:
            results: List[ShardResult] = []
        elif ray:
            from .ray_runner import run_on_ray

            results = run_on_ray(job, todo, ray, actors, gpus_per_actor, progress, say)
        elif n_process > 1:
            results = _run_processes(job, todo, n_process, progress)
        else:
            annotator = ShardAnnotator(job)
            results = [annotator(shard, progress) for shard in todo]
    finally:
        progress.close()
    numbers = totals(results, time.perf_counter() - started, len(done))
    errors = out.finish(shards)
    every = list(done.values()) + list(results)
    out.write_manifest(settings, shards, complete=True, totals={**totals(every, 0.0), **{
        k: numbers[k] for k in ("seconds", "docs_per_s", "words_per_s")}, "errors": errors})
    errors_path = str(work_root / "errors.jsonl")
    if target is not None:
        merge_into_file(out, shards, target)
        errors_path = str(errors_file(target))
    numbers["errors_total"] = errors
    say(summary(numbers, errors_path))
    say(f"Wrote {target or work_root}")
    return numbers


# --- `--n-process` ---------------------------------------------------------
_WORKER: Dict[str, Any] = {}


def _init_process(job: Job, queue: Any) -> None:
    _WORKER["annotator"] = ShardAnnotator(job)
    _WORKER["queue"] = queue


def _process_shard(shard: Shard) -> ShardResult:
    queue = _WORKER["queue"]
    return _WORKER["annotator"](shard, lambda docs, words: queue.put((docs, words)))


def _run_processes(job: Job, todo: List[Shard], n_process: int, progress: Progress) -> List[ShardResult]:
    """Each process loads the pipeline once and takes whole shards; torch
    threads are split between them so they do not fight for cores."""
    if job.threads is None:
        job.threads = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) // n_process)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    reader = threading.Thread(target=_drain, args=(queue, progress), daemon=True)
    reader.start()
    results = []
    try:
        with ProcessPoolExecutor(n_process, mp_context=context, initializer=_init_process, initargs=(job, queue)) as pool:
            for future in as_completed([pool.submit(_process_shard, shard) for shard in todo]):
                results.append(future.result())
    except BrokenProcessPool as err:
        raise SystemExit(f"A worker process died ({err}). The shards finished so far ({len(results)} in this run) "
                         "are kept: run the same command again to resume.") from None
    finally:
        queue.put(None)
        reader.join(timeout=5)
    return results


def _drain(queue: Any, progress: Progress) -> None:
    while True:
        item = queue.get()
        if item is None:
            return
        progress(*item)
