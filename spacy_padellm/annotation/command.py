"""`python -m spacy_padellm annotate INPUT OUTPUT` (also `spacy-padellm
annotate`): its arguments, and the step from them to `run.annotate`."""
import argparse
import sys
from pathlib import Path
from typing import List

from .records import INPUT_FORMATS, input_format
from .run import DEFAULT_SHARD_SIZE, annotate
from .shards import OUTPUT_FORMATS
from .worker import Job

EPILOG = """\
Config overrides as in spaCy's CLI follow the options, e.g.
  --components.padellm_ner.batch_size 32
  --components.padellm_ner.model.device cuda:0

Resume: run the same command again; finished shards are kept and never
written twice. Records that cannot be read or annotated go to the errors
file (OUTPUT/errors.jsonl, or OUT.errors.jsonl beside an OUT.jsonl) with
their line numbers.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    ap = commands.add_parser(
        "annotate", help="annotate a corpus (JSONL, text or .spacy) into JSONL, Parquet or .spacy shards",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", type=Path, help="JSONL (one object per line), plain text (one doc per line) or .spacy")
    ap.add_argument("output", type=Path, help="a directory of shards, or one .jsonl / .spacy file")
    ap.add_argument("--pipeline", default=None,
                    help="a saved pipeline (path or package); default: the padellm_ner default model")
    ap.add_argument("--text-field", default="text", help="the JSONL field with the text (default: text)")
    ap.add_argument("--id-field", default="id", help="the JSONL field with the id (default: id; "
                    "a record without one gets its line number)")
    ap.add_argument("--input-format", default=None, choices=INPUT_FORMATS,
                    help="default: from the suffix (.jsonl/.ndjson/.json, .spacy; anything else is text)")
    ap.add_argument("--output-format", default=None, choices=OUTPUT_FORMATS,
                    help="default: from OUTPUT's suffix; jsonl for a directory")
    ap.add_argument("--batch-size", type=int, default=32, help="docs per nlp.pipe batch (default: 32)")
    ap.add_argument("--n-process", type=int, default=1, help="processes on this machine, each with its pipeline")
    ap.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                    help=f"docs per output shard, the unit of resume and of Ray tasks (default: {DEFAULT_SHARD_SIZE})")
    ap.add_argument("--drop-text", action="store_true", help="leave the text field out of the output records")
    ap.add_argument("--code", default=None, help="a Python file to import first (custom components)")
    ap.add_argument("--overwrite", action="store_true", help="discard an earlier run's output instead of resuming it")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ray = ap.add_argument_group("Ray (pip install 'spacy-padellm[ray]')")
    ray.add_argument("--ray", default=None, metavar="ADDRESS",
                     help="run on Ray Data: auto, HOST:PORT, ray://HOST:PORT, or local[N] for a local cluster of N CPUs")
    ray.add_argument("--actors", type=int, default=1, help="Ray actors, each with one loaded pipeline (default: 1)")
    ray.add_argument("--gpus-per-actor", type=float, default=None,
                     help="default: 1 when the cluster has GPUs, else 0")
    ap.set_defaults(run=run_command)


def run_command(args: argparse.Namespace, extra: List[str]) -> None:
    from spacy.cli._util import parse_config_overrides

    try:
        overrides = parse_config_overrides(extra)
    except Exception as err:  # spaCy exits through typer; say what was wrong in our terms
        raise SystemExit(f"Unrecognised arguments {' '.join(extra)}: config overrides look like "
                         f"--components.padellm_ner.batch_size 32 ({err})") from None
    if args.batch_size < 1 or args.n_process < 1:
        raise SystemExit("--batch-size and --n-process must be at least 1")
    if args.ray and args.n_process > 1:
        raise SystemExit("--ray and --n-process do not combine: with Ray, use --actors")
    try:
        fmt = input_format(args.input, args.input_format)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if args.input_format is None and fmt == "text" and args.input.suffix.lower() not in (".txt", ".text", ""):
        print(f"Reading {args.input} as plain text, one doc per line (--input-format to change)", file=sys.stderr)
    job = Job(input=str(args.input), input_format=fmt, output=str(args.output), output_format=args.output_format or "",
              text_field=args.text_field, id_field=args.id_field, pipeline=args.pipeline, overrides=overrides,
              batch_size=args.batch_size, drop_text=args.drop_text, code=args.code)
    try:
        annotate(job, shard_size=args.shard_size, n_process=args.n_process, ray=args.ray, actors=args.actors,
                 gpus_per_actor=args.gpus_per_actor, overwrite=args.overwrite, quiet=args.quiet,
                 say=lambda text: print(text, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        raise SystemExit("\nInterrupted. The shards already written are kept: run the same command again "
                         "to resume.") from None
