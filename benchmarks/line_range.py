"""`START:STOP` arguments of the benchmark scripts: a range of lines of a
data file, 0-based with STOP excluded as in a Python slice, so the parts a
script selects or reports on are written as they would be sliced."""
import argparse
from typing import Tuple


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
