"""Segment-level PaDeLLM behind a doc memory.

A doc is decoded segment by segment, in order. Segment j's prefix is the
memory of the doc's text before it, then the segment's prompt; its label and
mention branches read that memory and never write it (each has a private
tail). Once segment j is decoded, its text joins the memory, so segment
j + 1 reads it. Segments of different docs share the forward calls: round j
decodes the j-th segment of every doc that has one, in batches.
"""
import copy
from dataclasses import dataclass
from typing import Any, List, Sequence

from ..types import TextPrediction
from .engine import BehindMemories, TorchMemory


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
    segment is not streamed in: nothing reads it."""
    leading = decoder.prompts.leading_special
    memories = [memory.new() for _ in docs]
    out: List[List[TextPrediction]] = [[] for _ in docs]
    rounds = max((len(segments) for segments in docs), default=0)
    for j in range(rounds):
        active = [i for i, segments in enumerate(docs) if j < len(segments)]
        for begin in range(0, len(active), batch_size):
            chunk = active[begin : begin + batch_size]
            view = copy.copy(decoder)
            view.engine = BehindMemories(memory, [memories[i] for i in chunk], leading)
            for i, pred in zip(chunk, view([docs[i][j].text for i in chunk])):
                out[i].append(pred)
        for i in active:
            if j + 1 < len(docs[i]):
                ids = decoder.engine.tokenize(docs[i][j].stream)
                memory.extend(memories[i], (leading if memories[i].empty else []) + ids)
    return out
