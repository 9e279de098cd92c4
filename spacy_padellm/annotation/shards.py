"""Shards: how `annotate` cuts its input, and how it writes output so that
an interrupted run resumes and no doc is ever written twice.

The input is cut into shards of `shard_size` consecutive docs (byte ranges
of a line file, or slices of a DocBin), each with a checksum of its bytes.
A shard is annotated whole, by one worker, and its output goes to
`part-NNNNN.<format>` through a temporary file and an atomic rename; a
marker `.state/part-NNNNN.json` written last says the shard is done. A
worker that dies leaves at most temporary files, and the shard is done
again from the start; a rename replaces, so a shard done twice (a retried
Ray task) still appears once. On resume the shards with a marker whose
checksum matches the input are skipped.

`manifest.json` records the settings that decide the output (input,
fields, format, pipeline, shard size): a resume with other settings is
refused, so one output never mixes two configurations.
"""
import json
import os
import shutil
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Union

from .records import BadRecord, Record, count_docbin, docbin_records, parse_line

MANIFEST = "manifest.json"
STATE = ".state"
ERRORS = "errors.jsonl"
OUTPUT_FORMATS = ("jsonl", "parquet", "spacy")
FILE_FORMATS = ("jsonl", "spacy")  # those that join into one file
MANIFEST_VERSION = 1


@dataclass
class Shard:
    """Docs `first` to `first + count - 1` (1-based lines or DocBin
    positions); `start`/`end` are byte offsets in a line file."""

    index: int
    first: int
    count: int
    start: int
    end: int
    checksum: str

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"


def lay_out(path: Path, fmt: str, shard_size: int) -> List[Shard]:
    """Cut the input into shards; reads it once (for the checksums)."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    if fmt == "spacy":
        total = count_docbin(path)
        digest = f"{zlib.crc32(path.read_bytes()):08x}"
        return [Shard(k, first + 1, min(shard_size, total - first), first, min(first + shard_size, total), digest)
                for k, first in enumerate(range(0, total, shard_size))]
    shards: List[Shard] = []
    with path.open("rb") as f:
        offset, line_no, begin, crc, count = 0, 0, 0, 0, 0
        for line in f:
            line_no += 1
            count += 1
            crc = zlib.crc32(line, crc)
            offset += len(line)
            if count == shard_size:
                shards.append(Shard(len(shards), line_no - count + 1, count, begin, offset, f"{crc:08x}"))
                begin, crc, count = offset, 0, 0
        if count:
            shards.append(Shard(len(shards), line_no - count + 1, count, begin, offset, f"{crc:08x}"))
    return shards


def read_shard(path: Path, fmt: str, shard: Shard, text_field: str, id_field: str) -> Iterator[Union[Record, BadRecord]]:
    """The records of one shard, in input order; a line that is not UTF-8 is
    a `BadRecord`, and so is every line `parse_line` rejects."""
    if fmt == "spacy":
        yield from docbin_records(path, shard.start, shard.end, text_field, id_field)
        return
    with path.open("rb") as f:
        f.seek(shard.start)
        data = f.read(shard.end - shard.start)
    if f"{zlib.crc32(data):08x}" != shard.checksum:
        raise InputChanged(f"{path} changed while it was being annotated (lines {shard.first}-"
                           f"{shard.first + shard.count - 1} differ from when the run started)")
    lines = data.split(b"\n")  # as lay_out counted them: "\n" ends a line, a lone "\r" does not
    if lines and not lines[-1]:
        lines.pop()
    for k, raw in enumerate(lines):
        position = shard.first + k
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            line = raw.decode("utf8")
        except UnicodeDecodeError as err:
            yield BadRecord(position, f"not UTF-8: {err}", raw.decode("utf8", errors="replace"))
            continue
        yield parse_line(line, position, fmt, text_field, id_field)


class InputChanged(RuntimeError):
    pass


@dataclass
class ShardResult:
    """What a worker reports for a done shard (also its marker's content)."""

    index: int
    checksum: str
    docs: int
    words: int
    errors: int
    seconds: float
    fallbacks: Dict[str, int] = field(default_factory=dict)


@contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write, renamed onto
    `path` when the block ends: readers see the old file or the whole new
    one. A block that raises leaves its temporary file (`*.tmp-PID`) for
    `OutputDir.remove_stale`."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    yield tmp
    os.replace(tmp, path)


class OutputDir:
    """The directory that holds the parts, the manifest and the state."""

    def __init__(self, root: Path, fmt: str) -> None:
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
        self.root = Path(root)
        self.fmt = fmt

    @property
    def state(self) -> Path:
        return self.root / STATE

    def part(self, shard: Shard) -> Path:
        return self.root / f"{shard.name}.{self.fmt}"

    def marker(self, index: int) -> Path:
        return self.state / f"part-{index:05d}.json"

    def shard_errors(self, index: int) -> Path:
        return self.state / f"errors-{index:05d}.jsonl"

    # --- the driver ---------------------------------------------------------
    def open(self, settings: Dict[str, Any], shards: List[Shard]) -> Dict[int, ShardResult]:
        """Create the directory, or check that it belongs to a run with the
        same settings and input; return the shards already done."""
        manifest = self.root / MANIFEST
        if manifest.exists():
            old = json.loads(manifest.read_text(encoding="utf8")).get("settings", {})
            differ = [key for key in sorted(set(settings) | set(old)) if old.get(key) != settings.get(key)]
            if differ:
                details = "; ".join(f"{k}: {old.get(k)!r} before, {settings.get(k)!r} now" for k in differ)
                raise SystemExit(f"{self.root} holds a run with other settings ({details}). Pass the same "
                                 "options to resume it, another OUTPUT, or --overwrite to start again.")
        elif self.root.exists() and any(self.root.iterdir()):
            raise SystemExit(f"{self.root} exists and is not the output of an annotate run (no {MANIFEST}). "
                             "Choose another OUTPUT, or --overwrite to replace it.")
        self.state.mkdir(parents=True, exist_ok=True)
        self.remove_stale()
        done: Dict[int, ShardResult] = {}
        by_index = {shard.index: shard for shard in shards}
        for marker in sorted(self.state.glob("part-*.json")):
            result = ShardResult(**json.loads(marker.read_text(encoding="utf8")))
            shard = by_index.get(result.index)
            if shard is None or shard.checksum != result.checksum:
                raise SystemExit(f"The input changed since {self.root} was written: docs of shard "
                                 f"{result.index} differ. Annotate it into another OUTPUT, or --overwrite.")
            if self.part(shard).exists():  # else the shard is done again
                done[result.index] = result
        self.write_manifest(settings, shards, complete=False)
        return done

    def remove_stale(self) -> None:
        """Temporary files of workers that died while writing."""
        for stale in list(self.root.glob("*.tmp-*")) + list(self.state.glob("*.tmp-*")):
            stale.unlink()

    def write_manifest(self, settings: Dict[str, Any], shards: List[Shard], complete: bool,
                       totals: Optional[Dict[str, Any]] = None) -> None:
        body = {"version": MANIFEST_VERSION, "settings": settings, "complete": complete,
                "shards": [{"part": self.part(s).name, "first": s.first, "count": s.count, "checksum": s.checksum}
                           for s in shards]}
        if totals is not None:
            body["totals"] = totals
        with written_whole(self.root / MANIFEST) as tmp:
            tmp.write_text(json.dumps(body, indent=1), encoding="utf8")

    def finish(self, shards: List[Shard]) -> int:
        """Gather the shards' errors into errors.jsonl; return their number.
        Temporary files of killed workers go."""
        self.remove_stale()
        count = 0
        with written_whole(self.root / ERRORS) as tmp, tmp.open("w", encoding="utf8") as out:
            for shard in shards:
                part = self.shard_errors(shard.index)
                if part.exists():
                    for line in part.read_text(encoding="utf8").splitlines():
                        out.write(line + "\n")
                        count += 1
        return count

    # --- a worker -----------------------------------------------------------
    def write_shard(self, shard: Shard, records: List[Any], docs: List[Any], errors: Iterable[BadRecord],
                    result: ShardResult) -> None:
        """Write a done shard: errors, then the part, then the marker."""
        with written_whole(self.shard_errors(shard.index)) as tmp, tmp.open("w", encoding="utf8") as out:
            for bad in errors:
                out.write(json.dumps(bad.to_json(), ensure_ascii=False) + "\n")
        with written_whole(self.part(shard)) as tmp:
            if self.fmt == "jsonl":
                with tmp.open("w", encoding="utf8") as out:
                    for record in records:
                        out.write(json.dumps(record, ensure_ascii=False) + "\n")
            elif self.fmt == "parquet":
                import pyarrow
                import pyarrow.parquet

                pyarrow.parquet.write_table(pyarrow.Table.from_pylist(records), tmp)
            else:
                from spacy.tokens import DocBin

                DocBin(docs=docs, store_user_data=True).to_disk(tmp)
        with written_whole(self.marker(shard.index)) as tmp:
            tmp.write_text(json.dumps(asdict(result)), encoding="utf8")


def merge_into_file(work: OutputDir, shards: List[Shard], target: Path) -> None:
    """Join the parts of a finished run into one file (the OUTPUT the user
    named), with the errors beside it, then remove the work directory."""
    if work.fmt not in FILE_FORMATS:
        raise ValueError("Parquet output goes to a directory: give an OUTPUT without a suffix")
    with written_whole(target) as tmp:
        if work.fmt == "jsonl":
            with tmp.open("wb") as out:
                for shard in shards:
                    with work.part(shard).open("rb") as part:
                        shutil.copyfileobj(part, out)
        else:
            from spacy.tokens import DocBin

            merged = DocBin(store_user_data=True)
            for shard in shards:
                merged.merge(DocBin(store_user_data=True).from_disk(work.part(shard)))
            merged.to_disk(tmp)
    shutil.copyfile(work.root / ERRORS, errors_file(target))
    shutil.rmtree(work.root)


def errors_file(target: Path) -> Path:
    """Where a one-file output's errors go: `out.jsonl` -> `out.errors.jsonl`."""
    return target.with_name(f"{target.stem}.errors.jsonl")
