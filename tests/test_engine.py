"""The decoding engine against naive per-branch `model.generate()`."""
from typing import List, Sequence, Tuple

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spacy_padellm.decoding import (
    ParallelDecoding,
    generation_text,
    parse_count,
    start_branches,
    stop_token_ids,
    zero_count_token_ids,
)
from spacy_padellm.engine import BranchDecoder
from spacy_padellm.prompt import PromptTemplate, PromptTokenizer

from .conftest import MEMORIZED

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


@pytest.mark.parametrize("fused", [True, False])
def test_zero_count_penalty_never_starts_a_count_with_zero(lm, fused, memorized_model_dir):
    model, tokenizer = lm
    stop = stop_token_ids(tokenizer)
    prompts = PromptTokenizer(tokenizer, PromptTemplate())
    zeros = zero_count_token_ids(tokenizer)
    assert zeros and all(tokenizer.decode([i]).strip() == "0" for i in zeros)
    engine = BranchDecoder(model, stop, tokenizer.pad_token_id)
    prefixes = [prompts.prefix(text) for text, _ in MEMORIZED]
    suffixes = [prompts.count_branch(label) for label in LABELS]
    _, plain = start_branches(engine, prefixes, suffixes, 3, fused=fused)
    _, biased = start_branches(engine, prefixes, suffixes, 3, fused=fused, first_token_bias={i: -1000.0 for i in zeros})
    branches = [(i, s) for i in range(len(prefixes)) for s in suffixes]
    started_with_zero = 0
    for (i, suffix), before, after in zip(branches, plain, biased):
        assert after.token_ids[0] not in zeros
        if before.token_ids[0] not in zeros:
            assert after == before  # only count 0 is touched
            continue
        started_with_zero += 1
        # the runner-up token, with the model's own log-probability
        with torch.no_grad():
            log_p = torch.log_softmax(model(torch.tensor([prefixes[i] + suffix])).logits[0, -1].float(), -1)
        log_p[zeros] = float("-inf")
        assert after.token_ids[0] == int(log_p.argmax())
        assert after.logprobs[0] == pytest.approx(float(log_p.max()), abs=1e-4)
    assert started_with_zero  # the memorized model predicts count 0 somewhere
    # the component's setting reaches the count step as this bias
    from .conftest import make_nlp

    nlp = make_nlp(memorized_model_dir, zero_count_penalty=2.5)
    nlp.initialize()
    pipe = nlp.get_pipe("padellm_ner")
    pipe._prompts()  # builds the decoder
    assert pipe._decoder.count_bias == {i: -2.5 for i in zeros}


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


def first_step_setup(model, tokenizer):
    """An engine, texts of mixed lengths and first-step branches of both kinds."""
    stop = stop_token_ids(tokenizer)
    prompts = PromptTokenizer(tokenizer, PromptTemplate())
    engine = BranchDecoder(model, stop, tokenizer.pad_token_id)
    texts = [text for text, _ in MEMORIZED] + ["Short ."]
    prefixes = [prompts.prefix(t) for t in texts]
    suffixes = [prompts.count_branch(label) for label in LABELS] + [prompts.mention_branch("LOC", 3, 2)]
    return stop, prompts, engine, texts, prefixes, suffixes


def test_fused_prefill_matches_generate_and_saves_a_forward_call(lm):
    model, tokenizer = lm
    stop, prompts, engine, texts, prefixes, suffixes = first_step_setup(model, tokenizer)
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        cache, gens = engine.encode_with_branches(prefixes, suffixes, max_new_tokens=6)
        fused_calls = len(calls)
        calls.clear()
        engine.decode(engine.encode_prefixes(prefixes), [i for i in range(len(texts)) for _ in suffixes],
                      [s for _ in texts for s in suffixes], max_new_tokens=6)
        unfused_calls = len(calls)
    finally:
        handle.remove()
    assert fused_calls == unfused_calls - 1
    branches = [(i, s) for i in range(len(texts)) for s in suffixes]
    for (i, suffix), gen in zip(branches, gens):
        tokens, logprobs = naive_generate(model, prefixes[i] + suffix, 6, stop)
        assert gen.token_ids == tokens
        assert gen.logprobs == pytest.approx(logprobs, abs=1e-4)
    # The returned cache serves later steps with the prefix only.
    later = engine.decode(cache, [0, 3], [prompts.mention_branch("LOC", 1, 1)] * 2, max_new_tokens=6)
    for i, gen in zip([0, 3], later):
        assert gen.token_ids == naive_generate(model, prefixes[i] + prompts.mention_branch("LOC", 1, 1), 6, stop)[0]


def test_autoregressive_decoding_matches_generate(lm):
    from spacy_padellm.autoregressive import AutoregressiveDecoding, parse_pairs

    model, tokenizer = lm
    stop = stop_token_ids(tokenizer)
    prompts = PromptTokenizer(tokenizer, PromptTemplate())
    decoding = AutoregressiveDecoding(BranchDecoder(model, stop, tokenizer.pad_token_id), prompts, LABELS, max_new_tokens=12)
    texts = [text for text, _ in MEMORIZED]
    for text, pred in zip(texts, decoding(texts)):
        tokens, _ = naive_generate(model, prompts.prefix(text) + prompts.structured_branch(), 12, stop)
        assert pred.generated_tokens == pred.decoding_steps == len(tokens)
        if tokens[-1] in stop:
            pairs, _ = parse_pairs(tokenizer.decode(tokens, skip_special_tokens=True).split("\n")[0], LABELS)
            assert [(m.label, m.text) for m in pred.mentions] == pairs


@pytest.mark.parametrize("fork", [True, False])
def test_speculated_mentions_are_redone_when_the_count_goes_on(lm, fork):
    """First count tokens "1" and "0"; the "1" continues with "2\\n", so the
    count is 12: the mention decoded for count 1 is dropped and twelve
    mentions of count 12 are decoded in a further call, behind the prefix.
    With forks, the count is finished and the mention speculated in a fork
    of the count branch's first token; without, behind the prefix."""
    from spacy_padellm.scripted_backend import ScriptedBackend

    _, tokenizer = lm
    prompts = PromptTokenizer(tokenizer, PromptTemplate())

    def script(branch):
        if "<mention" in branch:
            return "x\n"
        label, _, already = branch.partition("\n<num>")
        first = "1" if label == "PER" else "0"
        return first if not already else "2\n"

    engine = ScriptedBackend(tokenizer, script)
    decoding = ParallelDecoding(engine, prompts, ["PER", "LOC"], max_count=16, max_count_tokens=3, max_mention_tokens=8)
    decoding.speculative_counts, decoding.fork_mentions = True, fork
    (pred,) = decoding(["Some text ."])
    assert pred.counts == {"PER": 12, "LOC": 2}  # "0" then "2\n" is 02 = 2 as well
    finish = "fork" if fork else "decode"
    assert engine.calls == [("first", 2), (finish, 2 + 1), ("decode", 12 + 2), ("release", 1)]
    assert [m.n for m in pred.mentions] == list(range(1, 13)) + [1, 2]
    assert engine.live == {}


def test_speculative_counts_save_a_forward_call_and_change_nothing(lm):
    model, tokenizer = lm
    stop = stop_token_ids(tokenizer)
    decoding = ParallelDecoding(BranchDecoder(model, stop, tokenizer.pad_token_id), PromptTokenizer(tokenizer, PromptTemplate()),
                                LABELS, max_count=5, max_count_tokens=3, max_mention_tokens=8)
    texts = [text for text, _ in MEMORIZED]
    results, calls = {}, []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        for speculate in (True, False):
            decoding.speculative_counts = speculate
            calls.clear()
            preds = decoding(texts)
            results[speculate] = ([(p.counts, [(m.label, m.n, m.text) for m in p.mentions]) for p in preds], len(calls))
    finally:
        handle.remove()
    assert results[True][0] == results[False][0]
    assert any(mentions for _, mentions in results[True][0])
    assert results[True][1] == results[False][1] - 1


def test_long_prefixes_are_not_fused(lm, monkeypatch):
    """The fused call's 4D mask grows with the square of the length: long
    texts take the unfused path, with the same results."""
    import spacy_padellm.decoding as decoding_module

    model, tokenizer = lm
    decoding = ParallelDecoding(BranchDecoder(model, stop_token_ids(tokenizer), tokenizer.pad_token_id),
                                PromptTokenizer(tokenizer, PromptTemplate()), LABELS,
                                max_count=5, max_count_tokens=3, max_mention_tokens=8)
    texts = [text for text, _ in MEMORIZED]
    fused = [(p.counts, [m.text for m in p.mentions]) for p in decoding(texts)]
    monkeypatch.setattr(decoding_module, "FUSED_MASK_LIMIT", 1)
    monkeypatch.setattr(BranchDecoder, "encode_with_branches", None)  # would fail if called
    assert [(p.counts, [m.text for m in p.mentions]) for p in decoding(texts)] == fused


def test_sliding_window_model_decodes_exactly_within_its_window(tiny_gemma3_dir):
    """Gemma 3 (the Chinese base) mixes sliding-window and global layers; the
    engine's masks are exact while sequences fit the window, and the pipe
    counts its context only up to the window."""
    from .conftest import TINY_SLIDING_WINDOW, make_nlp

    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma3_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir).eval()
    assert model.config.max_position_embeddings > TINY_SLIDING_WINDOW
    stop, _, engine, texts, prefixes, suffixes = first_step_setup(model, tokenizer)
    _, fused = engine.encode_with_branches(prefixes, suffixes, max_new_tokens=6)
    unfused = engine.decode(engine.encode_prefixes(prefixes), [i for i in range(len(texts)) for _ in suffixes],
                            [s for _ in texts for s in suffixes], max_new_tokens=6)
    branches = [(i, s) for i in range(len(texts)) for s in suffixes]
    for (i, suffix), a, b in zip(branches, fused, unfused):
        assert len(prefixes[i] + suffix) + 6 <= TINY_SLIDING_WINDOW
        tokens, logprobs = naive_generate(model, prefixes[i] + suffix, 6, stop)
        assert a.token_ids == b.token_ids == tokens
        assert a.logprobs == pytest.approx(logprobs, abs=1e-4)
        assert b.logprobs == pytest.approx(logprobs, abs=1e-4)
    nlp = make_nlp(tiny_gemma3_dir)
    nlp.initialize()
    assert nlp.get_pipe("padellm_ner").context_length() == TINY_SLIDING_WINDOW


@pytest.mark.parametrize("fused", [True, False])
def test_forks_of_kept_branches_match_generate_on_the_whole_prompt(lm, fused):
    """A kept branch continues as if its prefix, its suffix, its generated
    tokens (stop token, or the token at its bound, included) and the fork's
    suffix were one prompt; an empty suffix continues the branch itself."""
    model, tokenizer = lm
    stop, prompts, engine, texts, prefixes, suffixes = first_step_setup(model, tokenizer)
    if fused:
        cache, gens = engine.encode_with_branches(prefixes, suffixes, max_new_tokens=4, keep=True)
    else:
        cache = engine.encode_prefixes(prefixes)
        gens = engine.decode(cache, [i for i in range(len(texts)) for _ in suffixes],
                             [s for _ in texts for s in suffixes], max_new_tokens=4, keep=True)
    rows = [(i, s) for i in range(len(texts)) for s in suffixes]
    kept = list(zip(rows, gens))
    assert all(gen.branch is not None for gen in gens)
    headers = [prompts.mention_header(1 + k % 2) if k % 3 else [] for k in range(len(kept))]
    forks = engine.fork([gen.branch for _, gen in kept], headers, max_new_tokens=6)
    for ((i, suffix), gen), header, fork in zip(kept, headers, forks):
        tokens, logprobs = naive_generate(model, prefixes[i] + suffix + gen.token_ids + header, 6, stop)
        assert fork.token_ids == tokens
        assert fork.logprobs == pytest.approx(logprobs, abs=1e-4)
    # The kept branches are left as they were: forking again gives the same.
    again = engine.fork([gen.branch for _, gen in kept], headers, max_new_tokens=6)
    assert [g.token_ids for g in again] == [g.token_ids for g in forks]
    # Releasing some compacts their cache to the others' rows, which fork as before.
    engine.release_branches([gen.branch for _, gen in kept[::2]])
    rest = kept[1::2]
    assert rest and all(gen.branch.cache.mask.shape[0] == len(rest) for _, gen in rest)
    after = engine.fork([gen.branch for _, gen in rest], headers[1::2], max_new_tokens=6)
    assert [g.token_ids for g in after] == [g.token_ids for g in forks[1::2]]


def test_forked_mentions_change_nothing_and_evaluate_fewer_tokens(lm):
    model, tokenizer = lm
    stop = stop_token_ids(tokenizer)
    engine = BranchDecoder(model, stop, tokenizer.pad_token_id)
    decoding = ParallelDecoding(engine, PromptTokenizer(tokenizer, PromptTemplate()), LABELS,
                                max_count=5, max_count_tokens=3, max_mention_tokens=8)
    texts = [text for text, _ in MEMORIZED]
    results, evaluated = {}, {}
    for fork in (True, False):
        decoding.fork_mentions = fork
        before = engine.tokens_evaluated
        preds = decoding(texts)
        evaluated[fork] = engine.tokens_evaluated - before
        results[fork] = [(p.counts, [(m.label, m.n, m.text, round(m.score, 4)) for m in p.mentions]) for p in preds]
    assert results[True] == results[False]
    assert any(mentions for _, mentions in results[True])
    assert evaluated[True] < evaluated[False]


def _count_script(counts):
    def script(branch):
        if "<mention" in branch:
            return "x\n"
        label, _, already = branch.partition("\n<num>")
        return counts[label][len(already) :]  # what follows the count's tokens so far

    return script


def test_counts_in_other_tokens_are_re_encoded_and_all_branches_released(lm):
    """LOC's count "02" parses as 2 but is not the canonical "2\\n" that
    training saw, so its mentions are decoded behind the prefix; PER's are
    forked from its count branch, speculated from its first token "2" in
    the call that finishes the counts; nothing stays live."""
    from spacy_padellm.scripted_backend import ScriptedBackend

    _, tokenizer = lm
    engine = ScriptedBackend(tokenizer, _count_script({"PER": "2\n", "LOC": "02\n", "MISC": "0\n"}))
    decoding = ParallelDecoding(engine, PromptTokenizer(tokenizer, PromptTemplate()), LABELS,
                                max_count=5, max_count_tokens=3, max_mention_tokens=8)
    (pred,) = decoding(["Some text ."])
    assert pred.counts == {"PER": 2, "LOC": 2, "MISC": 0}
    assert [(m.label, m.n) for m in pred.mentions] == [("PER", 1), ("PER", 2), ("LOC", 1), ("LOC", 2)]
    assert engine.calls == [("first", 3), ("fork", 3 + 2), ("decode", 2), ("release", 1)]
    assert engine.live == {}


def test_speculated_mentions_are_forked_in_groups_under_the_branch_token_limit(lm, monkeypatch):
    """The call that finishes the counts and decodes the speculated
    mentions is split, as the mention step is, so that no call holds more
    than BRANCH_TOKEN_LIMIT cache slots, whatever the counts; the entities
    stay the same."""
    from spacy_padellm import decoding as decoding_module
    from spacy_padellm.scripted_backend import ScriptedBackend

    _, tokenizer = lm
    results = {}
    for limit in (decoding_module.BRANCH_TOKEN_LIMIT, 40):
        monkeypatch.setattr(decoding_module, "BRANCH_TOKEN_LIMIT", limit)
        engine = ScriptedBackend(tokenizer, _count_script({"PER": "3\n", "LOC": "2\n", "MISC": "0\n"}))
        decoding = ParallelDecoding(engine, PromptTokenizer(tokenizer, PromptTemplate()), LABELS,
                                    max_count=5, max_count_tokens=3, max_mention_tokens=8)
        (pred,) = decoding(["Some text ."])
        forks = [n for kind, n in engine.calls if kind == "fork"]
        results[limit] = (pred.counts, [(m.label, m.n, m.text) for m in pred.mentions], forks)
        assert engine.live == {}
    (counts, mentions, whole), (small_counts, small_mentions, split) = results.values()
    assert (small_counts, small_mentions) == (counts, mentions) and counts == {"PER": 3, "LOC": 2, "MISC": 0}
    assert whole == [3 + 3 + 2] and len(split) > 1 and sum(split) == 3 + 3 + 2
