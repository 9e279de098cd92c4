"""The branch layout shared by training's packing and the torch engine."""
import pytest
import torch

from spacy_padellm.branch_layout import additive_mask, lay_out_row


def expected_view(prefix_slots, branch_slots, query, key):
    """What `prefix + branch` alone would let `query` see."""
    if query in prefix_slots:
        return key in prefix_slots and key <= query
    for slots in branch_slots:
        if query in slots:
            return key in prefix_slots or (key in slots and key <= query)
    return False


@pytest.mark.parametrize("start,branches_start", [(0, -1), (2, -1), (0, 5)])
def test_each_branch_sees_its_prefix_and_itself_at_continuing_positions(start, branches_start):
    width = 12
    ids = torch.zeros(width, dtype=torch.long)
    positions = torch.zeros(width, dtype=torch.long)
    allowed = torch.zeros((width, width), dtype=torch.bool)
    prefix, branches = [11, 12, 13], [[21, 22], [31], [41, 42, 43]]
    slots = lay_out_row(prefix, branches, ids, positions, allowed, start, branches_start)
    prefix_slots = range(start, start + 3)
    first = start + 3 if branches_start < 0 else branches_start
    assert slots == [(first, first + 2), (first + 2, first + 3), (first + 3, first + 6)]
    branch_slots = [range(b, e) for b, e in slots]
    for q in range(width):
        for k in range(width):
            assert bool(allowed[q, k]) == expected_view(prefix_slots, branch_slots, q, k), (q, k)
    assert ids[list(prefix_slots)].tolist() == prefix
    for (b, e), branch in zip(slots, branches):
        assert ids[b:e].tolist() == branch
        assert positions[b:e].tolist() == list(range(3, 3 + len(branch)))
    assert positions[list(prefix_slots)].tolist() == [0, 1, 2]
    mask = additive_mask(allowed[None], torch.float32)
    assert mask.shape == (1, 1, width, width)
    assert bool((mask[0, 0][allowed] == 0).all()) and bool((mask[0, 0][~allowed] < -1e30).all())
