"""Segment-level PaDeLLM behind a doc memory.

A doc is decoded segment by segment, in order. Segment j's prefix is the
memory of the doc's text before it, then the segment's prompt; its label and
mention branches read that memory and never write it (each has a private
tail). Segment j's text then joins the memory, so segment j + 1 reads it.
Segments share the forward calls: those of different docs, and the next
segments of the same doc, each behind a snapshot of its doc's memory.
"""
import copy
from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple

from ..types import TextPrediction
from .engine import BehindMemories, TorchMemory
from .store import DocMemory


@dataclass(frozen=True)
class StreamedSegment:
    """A segment's text as its prompt shows it, and the text that joins the
    memory after it (from the end of the previous one, whitespace
    included, so the memory reads the doc as written)."""

    text: str
    stream: str


def decode_behind_memory(
    decoder: Any, memory: TorchMemory, docs: Sequence[Sequence[StreamedSegment]], batch_size: int
) -> List[List[TextPrediction]]:
    """One `TextPrediction` per segment of every doc, in order. A doc's last
    segment is not streamed in: nothing reads it.

    Each doc streams on ahead of its decoding: segment j is queued with a
    snapshot of the memory before it, then its text joins the memory, so
    one long doc fills a batch with its own next segments instead of
    decoding one segment per forward call. Docs take turns (the j-th
    segments of all docs, then the (j + 1)-th), so a batch of many docs
    holds one segment of each. A batch is all first segments (which read
    nothing and run on the plain engine) or none.
    """
    prompts = decoder.prompts
    live = [memory.new() for _ in docs]
    out: List[List[TextPrediction]] = [[] for _ in docs]
    pending: List[Tuple[int, DocMemory, str]] = []  # doc, the memory before the segment, its text

    def flush() -> None:
        view = copy.copy(decoder)
        view.engine = BehindMemories(memory, [m for _, m, _ in pending], prompts)
        for (i, _, _), pred in zip(pending, view([text for _, _, text in pending])):
            out[i].append(pred)
        pending.clear()

    rounds = max((len(segments) for segments in docs), default=0)
    for j in range(rounds):
        for i, segments in enumerate(docs):
            if j >= len(segments):
                continue
            before = live[i].snapshot()
            if pending and (len(pending) == batch_size or pending[0][1].empty != before.empty):
                flush()
            pending.append((i, before, segments[j].text))
            if j + 1 < len(segments):
                ids = decoder.engine.tokenize(segments[j].stream)
                memory.extend(live[i], (prompts.leading_special if live[i].empty else []) + ids)
    if pending:
        flush()
    return out
