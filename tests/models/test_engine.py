"""The decoding engine against naive per-branch `model.generate()`."""
from typing import List, Sequence, Tuple

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spacy_padellm.decoding import ParallelDecoding, generation_text, parse_count, stop_token_ids
from spacy_padellm.engine import BranchDecoder
from spacy_padellm.prompt import PromptTemplate, PromptTokenizer

from ..conftest import MEMORIZED

LABELS = ["PER", "LOC", "MISC"]


@pytest.fixture(scope="module")
def lm(memorized_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(memorized_model_dir)
    model = AutoModelForCausalLM.from_pretrained(memorized_model_dir).eval()
    return model, tokenizer


def naive_generate(model, prompt: Sequence[int], max_new_tokens: int, stop: List[int]) -> Tuple[List[int], List[float]]:
    out = model.generate(
        torch.tensor([list(prompt)]),
        attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop,
        pad_token_id=stop[0],
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[0, len(prompt):].tolist()
    logprobs = [torch.log_softmax(l[0].float(), -1)[t].item() for l, t in zip(out.logits, tokens)]
    return tokens, logprobs


def test_engine_matches_generate_for_mixed_lengths(lm):
    model, tokenizer = lm
    stop = stop_token_ids(tokenizer)
    prompts = PromptTokenizer(tokenizer, PromptTemplate())
    texts = [text for text, _ in MEMORIZED] + ["Short ."]
    engine = BranchDecoder(model, stop, tokenizer.pad_token_id)
    prefixes = [prompts.prefix(t) for t in texts]
    assert len({len(p) for p in prefixes}) == len(texts)  # really mixed lengths
    cache = engine.encode_prefixes(prefixes)
    # Count branches and mention branches of several counts, interleaved
    # across texts so that rows of one batch have different suffix lengths.
    branches = []
    for i in range(len(texts)):
        for label in LABELS:
            branches.append((i, prompts.count_branch(label)))
            for count, n in ((1, 1), (3, 2), (3, 3)):
                branches.append((i, prompts.mention_branch(label, count, n)))
    gens = engine.decode(cache, [i for i, _ in branches], [s for _, s in branches], max_new_tokens=6)
    for (i, suffix), gen in zip(branches, gens):
        tokens, logprobs = naive_generate(model, prefixes[i] + suffix, 6, stop)
        assert gen.token_ids == tokens
        assert gen.logprobs == pytest.approx(logprobs, abs=1e-4)
        assert gen.stopped == (tokens[-1] in stop)


def test_parallel_decoding_matches_naive_two_steps(lm):
    model, tokenizer = lm
    stop = stop_token_ids(tokenizer)
    prompts = PromptTokenizer(tokenizer, PromptTemplate())
    decoding = ParallelDecoding(
        BranchDecoder(model, stop, tokenizer.pad_token_id),
        prompts,
        LABELS,
        max_count=5,
        max_count_tokens=3,
        max_mention_tokens=8,
    )
    texts = [text for text, _ in MEMORIZED]
    preds = decoding(texts)
    counts_seen = set()
    for text, pred in zip(texts, preds):
        prefix = prompts.prefix(text)
        expected = []
        for label in LABELS:
            tokens, _ = naive_generate(model, prefix + prompts.count_branch(label), 3, stop)
            count, _ = parse_count(tokenizer.decode(tokens, skip_special_tokens=True).split("\n")[0], 5)
            assert pred.counts[label] == count
            counts_seen.add(count)
            for n in range(1, count + 1):
                tokens, logprobs = naive_generate(model, prefix + prompts.mention_branch(label, count, n), 8, stop)
                if tokens[-1] in stop:
                    text_out = tokenizer.decode(tokens, skip_special_tokens=True).split("\n")[0]
                    expected.append((label, n, text_out, sum(logprobs)))
        got = [(m.label, m.n, m.text, m.score) for m in pred.mentions]
        assert [g[:3] for g in got] == [e[:3] for e in expected]
        for g, e in zip(got, expected):
            assert g[3] == pytest.approx(torch.tensor(e[3]).exp().item(), rel=1e-4)
    # The test means something only if labels got different, non-zero counts.
    assert len(counts_seen - {0}) >= 2


def test_prefix_is_encoded_once_per_text(lm):
    """No forward call after the prefill sees a text's tokens again."""
    model, tokenizer = lm
    prompts = PromptTokenizer(tokenizer, PromptTemplate())
    seen: List[torch.Tensor] = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True
    )
    try:
        decoding = ParallelDecoding(
            BranchDecoder(model, stop_token_ids(tokenizer), tokenizer.pad_token_id),
            prompts, LABELS, max_count=5, max_count_tokens=3, max_mention_tokens=8,
        )
        texts = [text for text, _ in MEMORIZED]
        preds = decoding(texts)
    finally:
        handle.remove()
    assert sum(len(p.mentions) for p in preds) > 0
    text_ids = [prompts.prefix(t) for t in texts]
    prefill, later = seen[0], seen[1:]
    assert prefill.shape[0] == len(texts)
    longest_branch = prompts.max_branch_length(LABELS, 5)
    assert all(call.shape[1] <= longest_branch for call in later)
    assert all(call.shape[1] < min(len(t) for t in text_ids) for call in later)


def test_generation_text_stops_at_newline(lm):
    from spacy_padellm.engine import Generation

    _, tokenizer = lm
    ids = tokenizer("Japan\nChina", add_special_tokens=False)["input_ids"]
    assert generation_text(tokenizer, Generation(ids, [0.0] * len(ids), True)) == "Japan"


def test_stop_tokens_include_newlines_and_eos(lm):
    _, tokenizer = lm
    stop = stop_token_ids(tokenizer)
    assert tokenizer.eos_token_id in stop
    assert all("\n" in tokenizer.decode([i]) for i in stop if i != tokenizer.eos_token_id)
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert newline[0] in stop


@pytest.mark.parametrize(
    "text,expected",
    [("3", (3, None)), (" 2 ", (2, None)), ("0", (0, None)), ("many", (0, "unparseable_counts")),
     ("-1", (0, "unparseable_counts")), ("99999", (5, "clipped_counts")), ("", (0, "unparseable_counts")),
     ("1.5", (0, "unparseable_counts"))],
)
def test_parse_count(text, expected):
    assert parse_count(text, 5) == expected
