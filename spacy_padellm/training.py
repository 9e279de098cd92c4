"""Training targets from spaCy Examples, packed so each text is encoded once.

The paper's reformulation makes one sequence per (text, label, mention index):
the whole text repeated for every branch. Here every text appears once per
batch row, its branches packed behind it:

    [prefix][branch 1][branch 2]...[padding]

An attention mask lets each branch see the prefix and itself only, and each
branch's positions continue the prefix's, so every branch computes what it
would alone behind the prefix: the same loss, far fewer tokens. Segments are
those of `prompt.PromptTokenizer`, exactly what inference feeds the model.
"""
from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

import torch
from spacy.tokens import Doc, Span

from .prompt import PromptTokenizer


@dataclass
class Branch:
    """Token ids behind the prefix, and which of them carry the loss."""

    ids: List[int]
    is_target: List[bool]


@dataclass
class TrainingItem:
    """One text: its prefix and the branches of all its labels."""

    prefix: List[int]
    branches: List[Branch]

    @property
    def packed_length(self) -> int:
        return len(self.prefix) + sum(len(b.ids) for b in self.branches)

    @property
    def max_position(self) -> int:
        """Positions the model must support: branches share the prefix's
        positions, so this is the prefix plus the longest branch."""
        return len(self.prefix) + max((len(b.ids) for b in self.branches), default=0)


@dataclass
class Batch:
    """Model inputs and next-token targets (-100 where there is no loss)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())


def gold_mentions(doc: Doc, spans_key: str, labels: Sequence[str]) -> Dict[str, List[Span]]:
    """Gold spans per label in textual order: the span group when the doc has
    it (nested entities), `doc.ents` otherwise."""
    spans = list(doc.spans[spans_key]) if spans_key in doc.spans else list(doc.ents)
    by_label: Dict[str, List[Span]] = {label: [] for label in labels}
    for span in sorted(spans, key=lambda s: (s.start, s.end)):
        if span.label_ in by_label:
            by_label[span.label_].append(span)
    return by_label


def _segments(*parts: Tuple[List[int], bool]) -> Branch:
    ids: List[int] = []
    is_target: List[bool] = []
    for segment, target in parts:
        ids.extend(segment)
        is_target.extend([target] * len(segment))
    return Branch(ids, is_target)


def make_item(doc: Doc, prompts: PromptTokenizer, labels: Sequence[str], spans_key: str, max_count: int) -> TrainingItem:
    """One branch per (label, mention index), target: count then mention;
    one count-0 branch per label without mentions. Mentions beyond
    `max_count` are not trained on (inference clips counts there too)."""
    branches = []
    for label, spans in gold_mentions(doc, spans_key, labels).items():
        count = min(len(spans), max_count)
        label_ids = prompts.label(label)
        if count == 0:
            branches.append(_segments((label_ids, False), (prompts.count(0), True)))
        for n, span in enumerate(spans[:count], 1):
            branches.append(
                _segments(
                    (label_ids, False),
                    (prompts.count(count), True),
                    (prompts.mention_header(n), False),
                    (prompts.mention(span.text), True),
                )
            )
    return TrainingItem(prompts.prefix(doc.text), branches)


def pack(items: Sequence[TrainingItem], pad_id: int, dtype: torch.dtype = torch.float32) -> Batch:
    """One row per text, branches behind the prefix, with a 4D additive mask."""
    width = max(item.packed_length for item in items)
    n = len(items)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    targets = torch.full((n, width), -100, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    allowed = torch.zeros((n, width, width), dtype=torch.bool)
    for row, item in enumerate(items):
        p = len(item.prefix)
        ids[row, :p] = torch.tensor(item.prefix)
        positions[row, :p] = torch.arange(p)
        allowed[row, :p, :p] = torch.ones((p, p), dtype=torch.bool).tril()
        start = p
        for branch in item.branches:
            b = len(branch.ids)
            end = start + b
            ids[row, start:end] = torch.tensor(branch.ids)
            positions[row, start:end] = torch.arange(p, p + b)
            allowed[row, start:end, :p] = True
            allowed[row, start:end, start:end] = torch.ones((b, b), dtype=torch.bool).tril()
            _set_targets(targets[row], start, branch)
            start = end
        allowed[row, start:, 0] = True  # padding attends somewhere: no empty softmax
    mask = torch.zeros((n, 1, width, width), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return Batch(ids, mask, positions, targets)


def separate(items: Sequence[TrainingItem], pad_id: int) -> Batch:
    """The paper's layout, one row per branch with the prefix repeated. Kept
    as the reference for the packed layout and for the benchmark."""
    rows = [(item.prefix, branch) for item in items for branch in item.branches]
    width = max(len(prefix) + len(branch.ids) for prefix, branch in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (prefix, branch) in enumerate(rows):
        seq = prefix + branch.ids
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        _set_targets(targets[row], len(prefix), branch)
    positions = torch.arange(width).expand(len(rows), width).clone()
    return Batch(ids, mask, positions, targets)


def _set_targets(row_targets: torch.Tensor, start: int, branch: Branch) -> None:
    """Logits at position j predict token j+1: a target token at j is scored
    at j-1. A branch starts with non-target label tokens, so j-1 is always in
    the same branch."""
    for offset, (token, is_target) in enumerate(zip(branch.ids, branch.is_target)):
        if is_target:
            assert offset > 0, "a branch must start with a non-target token"
            row_targets[start + offset - 1] = token


def loss_and_gradient(logits: torch.Tensor, targets: torch.Tensor) -> Tuple[float, torch.Tensor]:
    """Mean cross-entropy over target tokens, and its gradient w.r.t. the logits."""
    detached = logits.detach().float().requires_grad_()
    selected = targets != -100
    n = int(selected.sum())
    if n == 0:
        return 0.0, torch.zeros_like(logits)
    loss = torch.nn.functional.cross_entropy(detached[selected], targets[selected], reduction="sum") / n
    loss.backward()
    return float(loss.detach()), detached.grad.to(logits.dtype)


def items_for(docs: Iterable[Doc], prompts: PromptTokenizer, labels: Sequence[str], spans_key: str, max_count: int) -> List[TrainingItem]:
    return [make_item(doc, prompts, labels, spans_key, max_count) for doc in docs]
