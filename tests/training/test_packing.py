"""Packed branches give the loss of separately encoded examples."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spacy_padellm.prompt import PromptTemplate, PromptTokenizer
from spacy_padellm.training import loss_and_gradient, make_item, pack, separate

from ..conftest import memorized_gold_docs

LABELS = ["LOC", "MISC", "PER", "ORG"]


def gold_docs():
    return memorized_gold_docs()


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def any_lm(request, tiny_model_dir, tiny_gemma3_dir):
    """Llama, and Gemma 3 (sliding-window layers: the Chinese base)."""
    path = tiny_gemma3_dir if request.param == "gemma3" else tiny_model_dir
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_branches_follow_the_reformulation(lm):
    _, tokenizer = lm
    prompts = PromptTokenizer(tokenizer, PromptTemplate())
    item = make_item(gold_docs()[1], prompts, LABELS, "padellm", max_count=16)
    decoded = [tokenizer.decode(b.ids) for b in item.branches]
    # LOC: three mentions (China, China, Beijing) in textual order; others count 0.
    assert decoded == [
        "LOC\n<num>3\n<mention 1>China\n",
        "LOC\n<num>3\n<mention 2>China\n",
        "LOC\n<num>3\n<mention 3>Beijing\n",
        "MISC\n<num>0\n",
        "PER\n<num>0\n",
        "ORG\n<num>0\n",
    ]
    targets = ["".join(tokenizer.decode([i]) for i, t in zip(b.ids, b.is_target) if t) for b in item.branches]
    assert targets[0] == "3\nChina\n" and targets[3] == "0\n"


@pytest.mark.parametrize("row_tokens", [1, 1024], ids=["one-text-per-row", "texts-share-rows"])
def test_packed_loss_equals_separate_loss(any_lm, row_tokens):
    model, tokenizer = any_lm
    prompts = PromptTokenizer(tokenizer, PromptTemplate())
    items = [make_item(doc, prompts, LABELS, "padellm", 16) for doc in gold_docs()]
    packed = pack(items, tokenizer.pad_token_id, row_tokens=row_tokens)
    naive = separate(items, tokenizer.pad_token_id)
    assert packed.input_ids.shape[0] == (len(items) if row_tokens == 1 else 1)
    assert packed.n_tokens < naive.n_tokens
    results = []
    for batch in (packed, naive):
        model.zero_grad()
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, logits_to_keep=batch.keep).logits
        loss, d_logits = loss_and_gradient(logits, batch.targets)
        logits.backward(d_logits)
        results.append((loss, model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    assert (packed.targets != -100).sum() == (naive.targets != -100).sum()
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6, rtol=1e-4)


def test_max_count_limits_trained_mentions(lm):
    _, tokenizer = lm
    prompts = PromptTokenizer(tokenizer, PromptTemplate())
    item = make_item(gold_docs()[1], prompts, ["LOC"], "padellm", max_count=2)
    assert [tokenizer.decode(b.ids) for b in item.branches] == ["LOC\n<num>2\n<mention 1>China\n", "LOC\n<num>2\n<mention 2>China\n"]


def test_rows_are_filled_longest_first():
    from spacy_padellm.training import Branch, TrainingItem, fill_rows

    items = [TrainingItem([0] * n, [Branch([1], [False])]) for n in (5, 2, 7, 3, 1)]
    rows = fill_rows(items, row_tokens=10)  # packed lengths 6, 3, 8, 4, 2
    assert [[len(i.prefix) for i in row] for row in rows] == [[7, 1], [5, 3], [2]]
    # A text longer than the row budget gets a row of its own.
    assert [len(row) for row in fill_rows(items, row_tokens=2)] == [1] * 5
