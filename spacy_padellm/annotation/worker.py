"""What every worker of `annotate` does (the one process, each of
`--n-process`, each Ray actor): load the pipeline once, then annotate whole
shards and write them (see shards.py).

A doc that makes the pipeline raise goes to the errors file with its line
and the exception; the others of its batch are annotated one by one, so one
bad doc costs neither the run nor its neighbours.
"""
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .records import BadRecord, Record, output_record
from .shards import OutputDir, Shard, ShardResult, read_shard

Progress = Callable[[int, int], None]
DEFAULT_CONFIG = """
[nlp]
lang = "en"
pipeline = ["padellm_ner"]

[components]

[components.padellm_ner]
factory = "padellm_ner"
"""


@dataclass
class Job:
    """Everything a worker needs; plain data, so it pickles to processes and
    Ray actors."""

    input: str
    input_format: str
    output: str
    output_format: str
    text_field: str = "text"
    id_field: str = "id"
    pipeline: Optional[str] = None
    overrides: Dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    drop_text: bool = False
    code: Optional[str] = None
    threads: Optional[int] = None
    use_gpu: bool = False

    def settings(self) -> Dict[str, Any]:
        """The settings that decide the output; a resume must match them."""
        return {"input": str(Path(self.input).resolve()), "input_format": self.input_format,
                "output_format": self.output_format, "text_field": self.text_field, "id_field": self.id_field,
                "pipeline": pipeline_name(self.pipeline), "overrides": {k: repr(v) for k, v in sorted(self.overrides.items())},
                "drop_text": self.drop_text}


def pipeline_name(pipeline: Optional[str]) -> Optional[str]:
    """A pipeline directory as an absolute path, a package as its name."""
    if pipeline is not None and Path(pipeline).exists():
        return str(Path(pipeline).resolve())
    return pipeline


def check_pipeline(pipeline: Optional[str]) -> None:
    """Fail in the driver, before any worker starts, on a pipeline that is
    neither a directory nor an installed package."""
    from spacy import util

    if pipeline is not None and not Path(pipeline).exists() and not util.is_package(pipeline):
        raise SystemExit(f"--pipeline {pipeline}: no such directory or installed package")


def load_pipeline(pipeline: Optional[str], overrides: Dict[str, Any], code: Optional[str] = None) -> Any:
    """A pipeline path or package, or (None) the default: `padellm_ner` on a
    blank English pipeline, as `nlp.add_pipe("padellm_ner")` builds it.
    `overrides` are spaCy's dotted config overrides."""
    import spacy
    from spacy import util
    from thinc.api import Config, ConfigValidationError

    if code:
        util.import_file("annotate_code", code)
    try:
        if pipeline is None:
            config = Config().from_str(DEFAULT_CONFIG, overrides=overrides)
            nlp = util.load_model_from_config(config, auto_fill=True, validate=True)
        else:
            nlp = spacy.load(pipeline, config=overrides)
    except OSError as err:
        raise SystemExit(f"--pipeline {pipeline}: {err}") from None
    except ConfigValidationError as err:
        raise SystemExit(f"The config overrides do not fit the pipeline: {err}") from None
    for _, component in nlp.pipeline:
        ensure = getattr(component, "_ensure_loaded", None)
        if ensure is not None:
            ensure()  # load now: a missing model fails before any shard starts
    return nlp


def spans_key_of(nlp: Any) -> Optional[str]:
    for _, component in nlp.pipeline:
        key = getattr(component, "spans_key", None)
        if isinstance(key, str):
            return key
    return None


def _failed(record: Record, err: Exception) -> BadRecord:
    return BadRecord(record.position, f"the pipeline raised {type(err).__name__}: {err}", id=record.id)


class ShardAnnotator:
    """A worker's loaded pipeline; called with a shard, it annotates and
    writes it, and reports docs and words done per batch to `progress`."""

    def __init__(self, job: Job) -> None:
        if job.threads:
            import torch

            torch.set_num_threads(job.threads)
        if job.use_gpu:
            import spacy

            spacy.require_gpu()
        self.job = job
        self.nlp = load_pipeline(job.pipeline, job.overrides, job.code)
        self.spans_key = spans_key_of(self.nlp)
        self.out = OutputDir(Path(job.output), job.output_format)

    def _annotate(self, records: List[Record]) -> Tuple[List[Tuple[Record, Any]], List[BadRecord]]:
        """A batch through `nlp.pipe`; when it raises, its docs one by one,
        so that only the docs that raise go to the errors file."""
        try:
            return list(zip(records, self.nlp.pipe([r.text for r in records], batch_size=self.job.batch_size))), []
        except Exception as err:
            if len(records) == 1:
                return [], [_failed(records[0], err)]
        done, failed = [], []
        for record in records:
            try:
                done.append((record, self.nlp(record.text)))
            except Exception as err:
                failed.append(_failed(record, err))
        return done, failed

    def __call__(self, shard: Shard, progress: Optional[Progress] = None) -> ShardResult:
        started = time.perf_counter()
        job = self.job
        items = list(read_shard(Path(job.input), job.input_format, shard, job.text_field, job.id_field))
        bad = [item for item in items if isinstance(item, BadRecord)]
        good = [item for item in items if isinstance(item, Record)]
        annotated: List[Tuple[Record, Any]] = []
        words = 0
        if progress is not None and bad:
            progress(len(bad), 0)
        for begin in range(0, len(good), job.batch_size):
            batch = good[begin:begin + job.batch_size]
            done, failed = self._annotate(batch)
            annotated.extend(done)
            bad.extend(failed)
            batch_words = sum(len(record.text.split()) for record, _ in done)
            words += batch_words
            if progress is not None:
                progress(len(batch), batch_words)
        annotated.sort(key=lambda pair: pair[0].position)
        bad.sort(key=lambda item: item.position)
        fallbacks: Counter = Counter()
        drop = job.text_field if job.drop_text else None
        records, docs = [], []
        for record, doc in annotated:
            info = doc._.get("padellm") if doc.has_extension("padellm") else None
            if info:
                fallbacks.update(info.get("fallbacks", {}))
            if job.output_format == "spacy":
                for key, value in record.fields.items():
                    if key != job.text_field:
                        doc.user_data[key] = value
                docs.append(doc)
            else:
                records.append(output_record(doc, record, self.spans_key, drop))
        result = ShardResult(shard.index, shard.checksum, len(annotated), words, len(bad),
                             round(time.perf_counter() - started, 3), dict(fallbacks))
        self.out.write_shard(shard, records, docs, bad, result)
        return result
