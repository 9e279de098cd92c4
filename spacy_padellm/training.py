"""Training targets from spaCy Examples, packed so each text is encoded once.

The paper's reformulation makes one sequence per (text, label, mention index):
the whole text repeated for every branch. Here every text appears once, its
branches packed behind it, and several texts share a row:

    [prefix A][A's branch 1][A's branch 2]...[prefix B][B's branches]...[padding]

An attention mask lets each branch see its own prefix and itself only, and
each branch's positions continue its prefix's, so every branch computes what
it would alone behind the prefix: the same loss, far fewer tokens. Filling
rows with several texts leaves little padding (CoNLL sentences range from one
word to over a hundred), and the vocabulary projection runs only at the
columns that carry a target (`Batch.keep`). Segments are those of
`prompt.PromptTokenizer`, exactly what inference feeds the model.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from spacy.tokens import Doc, Span

from .branch_layout import additive_mask, lay_out_row
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


# Texts share a row up to this many tokens (a longer text gets a row of its
# own). Attention over a row costs its length squared, so rows are not made
# longer than the padding they save is worth.
ROW_TOKENS = 1024


@dataclass
class Batch:
    """Model inputs, and next-token targets at the columns in `keep` (-100
    where a row has no loss at that column). Pass `keep` to the model as
    `logits_to_keep` so that logits are computed at those columns only."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    keep: torch.Tensor

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
    return TrainingItem(training_prefix(doc, prompts), branches)


def training_prefix(doc: Doc, prompts: PromptTokenizer) -> List[int]:
    """The doc's prompt prefix; with preceding context (a reader's
    `context_sentences`), that context first, as a long-document memory
    puts the text before a segment (`memory/documents.py`): the
    tokenizer's leading special tokens, the context, then the prompt
    without them."""
    from .corpus import CONTEXT_KEY

    prefix = prompts.prefix(doc.text)
    context = doc.user_data.get(CONTEXT_KEY) if doc.user_data else None
    if not context:
        return prefix
    return prompts.leading_special + prompts.tokenize(context) + prompts.after_context(prefix)


def fill_rows(items: Sequence[TrainingItem], row_tokens: int = ROW_TOKENS) -> List[List[TrainingItem]]:
    """First-fit decreasing: longest texts first, each into the first row with
    room, so rows end up about equally full. A text longer than
    `row_tokens` gets a row of its own."""
    rows: List[List[TrainingItem]] = []
    used: List[int] = []
    for item in sorted(items, key=lambda i: -i.packed_length):
        for r, length in enumerate(used):
            if length + item.packed_length <= row_tokens:
                rows[r].append(item)
                used[r] += item.packed_length
                break
        else:
            rows.append([item])
            used.append(item.packed_length)
    return rows


def make_structured_item(doc: Doc, prompts: PromptTokenizer, labels: Sequence[str], spans_key: str, max_count: int) -> TrainingItem:
    """The autoregressive baseline's single branch: the header, then every
    (label, mention) pair in textual order on one line."""
    from .autoregressive import format_pairs, gold_pairs

    line = format_pairs(gold_pairs(gold_mentions(doc, spans_key, labels), max_count))
    branch = _segments((prompts.structured_branch(), False), (prompts.structured_line(line), True))
    return TrainingItem(prompts.prefix(doc.text), [branch])


def pack(items: Sequence[TrainingItem], pad_id: int, dtype: torch.dtype = torch.float32, row_tokens: int = ROW_TOKENS) -> Batch:
    """Texts with their branches, several per row, with a 4D additive mask."""
    rows = fill_rows(items, row_tokens)
    width = max(sum(item.packed_length for item in row) for row in rows)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    targets = torch.full((n, width), -100, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    allowed = torch.zeros((n, width, width), dtype=torch.bool)
    for r, row in enumerate(rows):
        start = 0
        for item in row:
            start = _place(item, start, ids[r], targets[r], positions[r], allowed[r])
        allowed[r, start:, 0] = True  # padding attends somewhere: no empty softmax
    return _with_kept_columns(ids, additive_mask(allowed, dtype), positions, targets)


def _place(item: TrainingItem, start: int, ids: torch.Tensor, targets: torch.Tensor,
           positions: torch.Tensor, allowed: torch.Tensor) -> int:
    """Write one text and its branches into a row from `start` (the layout
    of `branch_layout`); returns where the next text starts."""
    slots = lay_out_row(item.prefix, [b.ids for b in item.branches], ids, positions, allowed, start)
    for branch, (begin, _) in zip(item.branches, slots):
        _set_targets(targets, begin, branch)
    return slots[-1][1] if slots else start + len(item.prefix)


def _with_kept_columns(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> Batch:
    keep = (targets != -100).any(dim=0).nonzero()[:, 0]
    return Batch(ids, mask, positions, targets[:, keep], keep)


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
    return _with_kept_columns(ids, mask, positions, targets)


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
