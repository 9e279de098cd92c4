"""Training with preceding context: each text's prompt follows the lines
before it, as the long-document memory puts the text before a segment."""
import random

import pytest
from transformers import AutoTokenizer

from spacy_padellm.corpus import CONTEXT_KEY, make_jsonl_corpus
from spacy_padellm.prompt import PromptTemplate, PromptTokenizer
from spacy_padellm.training import make_item

from ..conftest import make_nlp, write_jsonl

LINES = [
    ["Japan began the defence of their Asian Cup title .", [0, 0, "Japan", "LOC"]],
    ["China beat China in Beijing on Friday .", [0, 0, "China", "LOC"], [2, 2, "China", "LOC"]],
    ["Nadim Ladki reported .", [0, 1, "Nadim Ladki", "PER"]],
]


@pytest.fixture
def corpus_file(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", LINES)


def test_reader_attaches_the_lines_before_each_text(corpus_file, tiny_model_dir):
    nlp = make_nlp(tiny_model_dir)
    examples = list(make_jsonl_corpus(corpus_file, context_sentences=1, skip=1)(nlp))
    assert [eg.reference.user_data.get(CONTEXT_KEY) for eg in examples] == [LINES[0][0], LINES[1][0]]
    two = list(make_jsonl_corpus(corpus_file, context_sentences=2)(nlp))
    assert two[0].reference.user_data.get(CONTEXT_KEY) is None
    assert two[2].reference.user_data[CONTEXT_KEY] == LINES[0][0] + " " + LINES[1][0]


def test_context_comes_before_the_prompt(corpus_file, tiny_model_dir):
    nlp = make_nlp(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = PromptTokenizer(tokenizer, PromptTemplate())
    with_context, plain = [
        list(make_jsonl_corpus(corpus_file, context_sentences=k)(nlp))[1].reference for k in (1, 0)
    ]
    item, plain_item = (make_item(doc, prompts, ["LOC", "PER"], "padellm", 16) for doc in (with_context, plain))
    context_ids = prompts.tokenize(LINES[0][0])
    assert item.prefix == context_ids + plain_item.prefix
    assert [b.ids for b in item.branches] == [b.ids for b in plain_item.branches]


def test_training_step_with_context(corpus_file, tiny_model_dir):
    nlp = make_nlp(tiny_model_dir, labels=["LOC", "PER"])
    examples = list(make_jsonl_corpus(corpus_file, context_sentences=2)(nlp))
    nlp.initialize(lambda: examples)
    losses = nlp.update(examples)
    assert losses["padellm_ner"] > 0


def test_bad_context_sentences_is_refused(corpus_file):
    with pytest.raises(ValueError, match="context_sentences"):
        make_jsonl_corpus(corpus_file, context_sentences=-1)


def test_context_share_gives_context_to_that_share_of_the_texts(tmp_path, tiny_model_dir):
    path = tmp_path / "many.jsonl"
    write_jsonl(path, [[f"Line {i} ."] for i in range(201)])
    nlp = make_nlp(tiny_model_dir)

    def with_context(share: float) -> int:
        random.seed(0)
        examples = list(make_jsonl_corpus(path, context_sentences=2, context_share=share)(nlp))
        assert len(examples) == 201  # a text without context is still trained on
        return sum(CONTEXT_KEY in eg.reference.user_data for eg in examples)

    assert with_context(1.0) == 200
    assert with_context(0.0) == 0
    assert 70 < with_context(0.5) < 130
    assert with_context(0.5) == with_context(0.5)  # `spacy train` seeds the draw


@pytest.mark.parametrize("share", [-0.1, 1.5, True, "half"])
def test_bad_context_share_is_refused(corpus_file, share):
    with pytest.raises(ValueError, match="context_share"):
        make_jsonl_corpus(corpus_file, context_sentences=2, context_share=share)
