"""`annotate --ray`: the same shards, done by a pool of Ray Data actors.

The dataset is the list of shards still to do, one block each. An actor
loads the pipeline once (`ShardAnnotator`) and maps shards to their results,
writing each shard itself, as every worker does. Ray Data restarts a dead
actor and retries its task, and a retried shard replaces its own files, so
every input doc appears exactly once in the output however many times its
shard ran. Workers read INPUT and write OUTPUT by path: on a cluster both
must be on storage that every node sees under the same path.
"""
import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, List, Optional

from .progress import Progress
from .shards import Shard, ShardResult
from .worker import Job, ShardAnnotator

RAY_INSTALL = "pip install 'spacy-padellm[ray]'"
LOCAL = re.compile(r"local(?:\[(\d+)\])?")


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"--ray needs Ray Data, which is not installed here ({err}). "
                         f"Install it with: {RAY_INSTALL}") from None
    return ray


def connect(ray: Any, address: str) -> bool:
    """Start a local cluster (`local` or `local[N]`, N CPUs) or join one
    (`auto`, `HOST:PORT`, `ray://HOST:PORT`). True when we started it."""
    if ray.is_initialized():
        return False
    match = LOCAL.fullmatch(address)
    if match:
        cpus = int(match.group(1)) if match.group(1) else None
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="warning", log_to_driver=False)
        return True
    try:
        ray.init(address=address, logging_level="warning", log_to_driver=False)
    except ConnectionError as err:
        raise SystemExit(f"--ray {address}: no Ray cluster there ({err}). Start one with `ray start --head` "
                         "(see the README, \"Annotating a corpus\"), or use --ray local[N].") from None
    return False


class ShardActor:
    """A Ray Data actor: one loaded pipeline, shards in, results out."""

    def __init__(self, job: Job) -> None:
        self.annotator = ShardAnnotator(job)

    def __call__(self, batch: Any) -> Any:
        results = []
        for k in range(len(batch["index"])):
            shard = Shard(int(batch["index"][k]), int(batch["first"][k]), int(batch["count"][k]),
                          int(batch["start"][k]), int(batch["end"][k]), str(batch["checksum"][k]))
            results.append(json.dumps(asdict(self.annotator(shard))))
        return {"result": results}


def actor_pids() -> List[int]:
    """This machine's processes of `ShardActor`s (Ray titles an actor's
    process `ray::<class>...`; read from /proc, so Linux only): what the
    test and the benchmark of a killed actor kill."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode("utf8", "replace")
            except OSError:
                continue
            if cmdline.startswith("ray::") and ShardActor.__name__ in cmdline:
                pids.append(int(entry.name))
    return pids


def run_on_ray(job: Job, todo: List[Shard], address: str, actors: int, gpus_per_actor: Optional[float],
               progress: Progress, say: Callable[[str], None]) -> List[ShardResult]:
    ray = import_ray()
    if actors < 1:
        raise SystemExit(f"--actors must be at least 1, got {actors}")
    started_here = connect(ray, address)
    try:
        resources = ray.cluster_resources()
        if gpus_per_actor is None:
            gpus_per_actor = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        cpus = max(1, int(resources.get("CPU", 1) // actors))
        job.threads = job.threads or cpus
        job.use_gpu = gpus_per_actor > 0
        say(f"Ray: {actors} actor(s), {cpus} CPU(s) and {gpus_per_actor:g} GPU(s) each, on a cluster of "
            f"{resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs")
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts docs and words
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        dataset = ray.data.from_items([asdict(shard) for shard in todo], override_num_blocks=len(todo))
        mapped = dataset.map_batches(
            ShardActor, fn_constructor_kwargs={"job": job}, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus_per_actor,
        )  # Ray Data's defaults restart a dead actor and retry its task without limit
        results = []
        for row in mapped.iter_rows():
            result = ShardResult(**json.loads(row["result"]))
            progress(result.docs + result.errors, result.words)
            results.append(result)
        return results
    finally:
        if started_here:
            ray.shutdown()
