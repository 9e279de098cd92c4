"""Run-time fallbacks: garbage counts, several processes."""
import pytest

from spacy_padellm.decoding import ParallelDecoding
from spacy_padellm.prompt import PromptTemplate, PromptTokenizer
from spacy_padellm.scripted_backend import ScriptedBackend

from ..conftest import MEMORIZED, make_nlp


def garbage_engine(tokenizer, counts, mention="Japan\n"):
    """Count branches answer from `counts` by label, e.g. "many\n"; a count
    branch that already holds part of its answer (the first token, when
    counts are speculated) gets the rest. Mention branches say `mention`."""

    def script(branch):
        if "<mention" in branch:
            return mention
        label, _, already = branch.partition("\n<num>")
        return counts[label][len(already):]

    return ScriptedBackend(tokenizer, script)


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_garbage_counts_fall_back_and_are_counted(tokenizer):
    engine = garbage_engine(tokenizer, {"PER": "many\n", "LOC": "-1\n", "MISC": "99999\n", "ORG": "2\n"})
    decoding = ParallelDecoding(
        engine, PromptTokenizer(tokenizer, PromptTemplate()), ["PER", "LOC", "MISC", "ORG"],
        max_count=3, max_count_tokens=8, max_mention_tokens=8,
    )
    pred = decoding(["Japan and Japan ."])[0]
    assert pred.counts == {"PER": 0, "LOC": 0, "MISC": 3, "ORG": 2}
    assert pred.fallbacks["unparseable_counts"] == 2
    assert pred.fallbacks["clipped_counts"] == 1
    assert pred.fallbacks["possible_undercounts"] == 1  # MISC reached max_count
    assert [(m.label, m.n) for m in pred.mentions] == [("MISC", 1), ("MISC", 2), ("MISC", 3), ("ORG", 1), ("ORG", 2)]


def test_unfinished_mentions_are_dropped_and_counted(tokenizer):
    engine = garbage_engine(tokenizer, {"LOC": "1\n"}, mention="Japan began the defence of")
    decoding = ParallelDecoding(
        engine, PromptTokenizer(tokenizer, PromptTemplate()), ["LOC"],
        max_count=3, max_count_tokens=8, max_mention_tokens=3,
    )
    pred = decoding(["Japan began the defence of their title ."])[0]
    assert pred.mentions == []
    assert pred.fallbacks["truncated_generations"] == 1


def test_garbage_counts_through_the_pipe(tiny_model_dir, tokenizer):
    # resplits = 0: each doc decoded once, so each fallback counted once
    nlp = make_nlp(tiny_model_dir, labels=["PER", "LOC"], max_count=1, resplits=0)
    nlp.initialize()
    pipe = nlp.get_pipe("padellm_ner")
    pipe._ensure_loaded()
    pipe._decoder.engine = garbage_engine(tokenizer, {"PER": "many\n", "LOC": "7\n"})
    docs = list(nlp.pipe(["Japan won .", "", "Japan lost ."]))
    assert [[e.text for e in d.ents] for d in docs] == [["Japan"], [], ["Japan"]]
    assert pipe.fallback_counts["unparseable_counts"] == 2
    assert pipe.fallback_counts["clipped_counts"] == 2


def test_batches_are_split_to_the_backends_texts_per_call(tiny_model_dir, tokenizer):
    """An engine that asks for at most 2 texts per call gets 5 docs as calls
    of 2, 2 and 1, and the same entities as in one call."""
    nlp = make_nlp(tiny_model_dir, labels=["LOC"], batch_size=16)
    nlp.initialize()
    pipe = nlp.get_pipe("padellm_ner")
    pipe._ensure_loaded()
    texts = ["Japan won .", "Japan lost .", "Japan drew .", "So did Japan .", "Japan ."]
    found = {}
    for cap in (None, 2):
        engine = garbage_engine(tokenizer, {"LOC": "1\n"})
        engine.texts_per_call = cap
        pipe._decoder.engine = engine
        found[cap] = [[(e.text, e.label_) for e in d.ents] for d in nlp.pipe(texts, batch_size=8)]
        assert [n for call, n in engine.calls if call == "release"] == ([5] if cap is None else [2, 2, 1])
    assert found[2] == found[None] == [[("Japan", "LOC")]] * 5


def test_several_processes_keep_order_and_results(memorized_model_dir):
    nlp = make_nlp(memorized_model_dir)
    nlp.initialize()
    texts = [t for t, _ in MEMORIZED] * 3 + ["", "🙂"]
    single = [[(e.text, e.label_) for e in d.ents] for d in nlp.pipe(texts, batch_size=2)]
    docs = list(nlp.pipe(texts, batch_size=2, n_process=2))
    assert [d.text for d in docs] == texts
    assert [[(e.text, e.label_) for e in d.ents] for d in docs] == single
    assert all(d._.padellm is not None for d in docs)
    assert sum(map(len, single)) > 0
