"""`START:STOP` arguments of the benchmark scripts: a range of lines of a
data file, 0-based with STOP excluded as in a Python slice, so the parts a
script selects or reports on are written as they would be sliced."""
import argparse
import json
from pathlib import Path
from typing import List, Tuple


def line_range(text: str) -> Tuple[int, int]:
    """argparse type; a malformed or empty range is an argparse error, not a
    silently empty part found after minutes of decoding."""
    try:
        start, stop = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP (0-based lines, STOP excluded), got {text!r}")
    if not 0 <= start < stop:
        raise argparse.ArgumentTypeError(f"expected 0 <= START < STOP, got {text!r}")
    return start, stop


def read_texts(path: Path, lines: Tuple[int, int]) -> List[str]:
    """The texts of lines [start, stop) of a JSONL file of ../shared/data."""
    with path.open(encoding="utf8") as f:
        return [json.loads(line)[0] for i, line in enumerate(f) if lines[0] <= i < lines[1]]
