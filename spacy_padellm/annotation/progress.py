"""Progress of a long annotation run: docs/s and words/s while it runs, and
a summary (with the component's fallback counts) when it ends."""
import sys
import threading
import time
from collections import Counter
from typing import Dict, Iterable, Optional

from .shards import ShardResult


class Progress:
    """A tqdm bar over docs; thread-safe, since `--n-process` reports from a
    queue reader thread."""

    def __init__(self, total: int, done: int = 0, quiet: bool = False) -> None:
        from tqdm import tqdm

        self.lock = threading.Lock()
        self.words = 0
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, initial=done, unit="doc", disable=quiet, file=sys.stderr,
                        dynamic_ncols=True, mininterval=1.0, smoothing=0.1)

    def __call__(self, docs: int, words: int) -> None:
        with self.lock:
            self.words += words
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{self.words / elapsed:,.0f} words/s", refresh=False)
            self.bar.update(docs)

    def close(self) -> None:
        self.bar.close()


def totals(results: Iterable[ShardResult], seconds: float, skipped: int = 0) -> Dict[str, object]:
    """The run's totals; `seconds` is this run's wall time, and the rates
    count only the docs this run annotated (not those resumed from disk)."""
    results = list(results)
    fallbacks: Counter = Counter()
    for result in results:
        fallbacks.update(result.fallbacks)
    docs = sum(r.docs for r in results)
    words = sum(r.words for r in results)
    return {"docs": docs, "words": words, "errors": sum(r.errors for r in results), "seconds": round(seconds, 2),
            "docs_per_s": round(docs / seconds, 2) if seconds else None,
            "words_per_s": round(words / seconds, 1) if seconds else None,
            "shards_done": len(results), "shards_resumed": skipped,
            "fallbacks": dict(sorted(fallbacks.items()))}


def summary(numbers: Dict[str, object], errors_path: Optional[str] = None) -> str:
    lines = [f"Annotated {numbers['docs']:,} docs ({numbers['words']:,} words) in {numbers['seconds']} s: "
             f"{numbers['docs_per_s']} docs/s, {numbers['words_per_s']} words/s"]
    if numbers.get("shards_resumed"):
        lines.append(f"  {numbers['shards_resumed']} shards were already done by an earlier run and kept")
    if numbers["errors"]:
        lines.append(f"  {numbers['errors']:,} records not annotated: see {errors_path}")
    fallbacks = numbers.get("fallbacks") or {}
    if fallbacks:
        lines.append("  fallbacks: " + ", ".join(f"{k} {v:,}" for k, v in fallbacks.items()))
    else:
        lines.append("  fallbacks: none")
    return "\n".join(lines)
