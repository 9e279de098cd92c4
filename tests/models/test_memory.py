"""The InfLLM long-document memory on a tiny Llama.

Equivalence: while everything streamed fits the local window, decoding
behind the memory is full attention over the streamed text and the prompt,
so the generated tokens equal the plain engine's on the concatenation.
"""
import copy

import pytest
import spacy
import torch
from spacy.tokens import Doc
from transformers import AutoModelForCausalLM, AutoTokenizer

from spacy_padellm.decoding import stop_token_ids
from spacy_padellm.engine import BranchDecoder
from spacy_padellm.errors import Errors
from spacy_padellm.memory.settings import InfLLMSettings, make_infllm_memory

from ..conftest import MEMORIZED, make_nlp

SMALL = dict(n_init=4, block_size=8, repr_topk=2, exec_chunk=8)


def build_engine(model_dir, device: str = "cpu") -> BranchDecoder:
    """The plain torch engine on the tiny model, in float32 on `device`."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    return BranchDecoder(model, stop_token_ids(tokenizer), tokenizer.pad_token_id, tokenizer, 256)


@pytest.fixture(scope="module")
def engine(memorized_model_dir):
    return build_engine(memorized_model_dir)


def _random_ids(n: int, seed: int):
    return torch.randint(5, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _flat(gens):
    return [lp for g in gens for lp in g.logprobs]


def _decode(engine, cache, suffixes):
    return engine.decode(cache, [0] * len(suffixes), suffixes, 6)


def test_memory_within_the_window_is_full_attention(engine):
    past, prefix = _random_ids(70, 1), _random_ids(9, 2)
    suffixes = [_random_ids(3, 3), _random_ids(5, 4)]
    full = _decode(engine, engine.encode_prefixes([past + prefix]), suffixes)
    memory = engine.memory(InfLLMSettings(n_local=128, topk=2, **SMALL))
    doc = memory.new()
    memory.extend(doc, past)  # 9 execution chunks of 8
    assert doc.tokens == 70 and not doc.layers[0].blocks
    behind = _decode(engine, memory.encode_behind([doc], [prefix]), suffixes)
    assert [g.token_ids for g in behind] == [g.token_ids for g in full]
    assert _flat(behind) == pytest.approx(_flat(full), abs=1e-4)


def test_evicted_tokens_form_blocks_and_sinks(engine):
    settings = InfLLMSettings(n_local=16, topk=2, **SMALL)
    memory = engine.memory(settings)
    doc = memory.new()
    memory.extend(doc, _random_ids(100, 5))
    for layer in doc.layers:
        assert layer.init_k.shape[-2] == settings.n_init
        # 100 = 4 sinks + 10 blocks of 8 + 16 in the window
        assert len(layer.blocks) == 10 and layer.buffered == 16
        assert layer.stored == 100
        assert torch.stack(layer.reprs).shape[0] == 10
    nbytes = doc.nbytes()
    per_block_token = nbytes["blocks"] / (10 * settings.block_size) / len(doc.layers)
    kv_heads, head_dim = doc.layers[0].blocks[0][0].shape[0], doc.layers[0].blocks[0][0].shape[-1]
    assert per_block_token == 2 * kv_heads * head_dim * 4  # keys and values, float32


def test_streaming_in_query_pieces_changes_nothing(engine, monkeypatch):
    """Chunks of 8 queries taken 3 at a time: the same blocks, representative
    keys and window scores, and the same outputs behind the memory, as whole."""
    from spacy_padellm.memory import attention

    settings = InfLLMSettings(n_local=16, topk=2, **SMALL)
    past, prefix = _random_ids(100, 7), _random_ids(9, 8)

    def run():
        memory = engine.memory(settings)
        doc = memory.new()
        memory.extend(doc, past)
        return doc, _decode(engine, memory.encode_behind([doc], [prefix]), [_random_ids(3, 9)])

    whole_doc, whole = run()
    monkeypatch.setattr(attention, "QUERY_PIECE", 3)
    piece_doc, pieces = run()
    for a, b in zip(whole_doc.layers, piece_doc.layers):
        assert len(a.blocks) == len(b.blocks) == 10
        assert torch.allclose(torch.stack(a.reprs), torch.stack(b.reprs), atol=1e-5)
        assert torch.allclose(a.buf_score, b.buf_score, atol=1e-5)
    assert [g.token_ids for g in pieces] == [g.token_ids for g in whole]
    assert _flat(pieces) == pytest.approx(_flat(whole), abs=1e-4)


def test_retrieval_changes_what_a_prefix_reads(engine):
    """Behind a memory longer than the window, the retrieved blocks matter:
    topk = 0 (sinks and window only) decodes differently from topk = 2, and
    neither is full attention."""
    past, prefix = _random_ids(90, 6), _random_ids(9, 7)
    suffixes = [_random_ids(3, 8)]
    full = _decode(engine, engine.encode_prefixes([past + prefix]), suffixes)
    logprobs = {}
    for topk in (0, 2):
        memory = engine.memory(InfLLMSettings(n_local=16, topk=topk, **SMALL))
        doc = memory.new()
        memory.extend(doc, past)
        logprobs[topk] = _decode(engine, memory.encode_behind([doc], [prefix]), suffixes)[0].logprobs
    assert logprobs[0] != pytest.approx(logprobs[2], abs=1e-4)
    assert logprobs[2] != pytest.approx(full[0].logprobs, abs=1e-4)


def test_branches_read_the_memory_without_writing_it(engine):
    memory = engine.memory(InfLLMSettings(n_local=16, topk=2, **SMALL))
    doc = memory.new()
    memory.extend(doc, _random_ids(60, 9))
    before = [(l.buffered, len(l.blocks), l.buf_score.clone()) for l in doc.layers]
    cache = memory.encode_behind([doc], [_random_ids(9, 10)])
    gens = engine.decode(cache, [0, 0, 0], [_random_ids(3, s) for s in (11, 12, 13)], 8, keep=True)
    kept = [g.branch for g in gens if g.branch is not None]
    engine.fork(kept, [_random_ids(2, 14)] * len(kept), 4)
    engine.release_branches(kept)
    for layer, (buffered, blocks, score) in zip(doc.layers, before):
        assert layer.buffered == buffered and len(layer.blocks) == blocks
        assert torch.equal(layer.buf_score, score)
    assert doc.tokens == 60


def test_rows_of_different_docs_read_their_own_memory(engine):
    """A batch of prefixes behind two memories equals each decoded alone."""
    settings = InfLLMSettings(n_local=16, topk=2, **SMALL)
    memory = engine.memory(settings)
    docs = [memory.new(), memory.new()]
    memory.extend(docs[0], _random_ids(50, 14))
    memory.extend(docs[1], _random_ids(30, 15))
    prefixes = [_random_ids(9, 16), _random_ids(5, 17)]
    suffixes = [_random_ids(3, 18), _random_ids(4, 19)]
    together = engine.decode(memory.encode_behind(docs, prefixes), [0, 1, 1, 0], suffixes * 2, 6)
    alone = [engine.decode(memory.encode_behind([d], [p]), [0, 0], suffixes, 6) for d, p in zip(docs, prefixes)]
    expected = [alone[0][0], alone[1][1], alone[1][0], alone[0][1]]
    assert [g.token_ids for g in together] == [g.token_ids for g in expected]
    assert _flat(together) == pytest.approx(_flat(expected), abs=1e-4)


def test_plain_decoding_is_unchanged_after_memory_is_enabled(engine):
    prefix, suffixes = _random_ids(12, 20), [_random_ids(3, 21)]
    before = _decode(engine, engine.encode_prefixes([prefix]), suffixes)
    engine.memory(InfLLMSettings(n_local=16, topk=2, **SMALL))
    after = _decode(engine, engine.encode_prefixes([prefix]), suffixes)
    assert [g.token_ids for g in after] == [g.token_ids for g in before]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"block_size": 0}, "memory.block_size"),
        ({"topk": -1}, "memory.topk"),
        ({"repr_topk": 9, "block_size": 8}, "memory.repr_topk"),
        ({"n_local": 2.5}, "memory.n_local"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_infllm_memory(**kwargs)


def test_window_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match="context"):
        InfLLMSettings(n_local=250, exec_chunk=16).for_context(256)
    with pytest.raises(ValueError, match="exec_chunk"):
        InfLLMSettings(n_local=16, exec_chunk=32).for_context(256)
    assert InfLLMSettings().for_context(8192).n_local == 1024
    assert InfLLMSettings().for_context(256).n_local == 32


# --- the pipeline -----------------------------------------------------------

def _article(nlp, n: int = 3) -> Doc:
    """MEMORIZED sentences as one doc with sentence boundaries."""
    words, spaces, starts = [], [], []
    for text, _ in MEMORIZED[:n]:
        tokens = text.split(" ")
        starts.append(len(words))
        words.extend(tokens)
        spaces.extend([True] * len(tokens))
    doc = Doc(nlp.vocab, words=words, spaces=spaces, sent_starts=[i in starts for i in range(len(words))])
    return doc


def _memory_nlp(model_dir, **memory):
    config = {"memory": {"@misc": "spacy_padellm.InfLLMMemory.v1", **memory}, "segment_tokens": 8}
    return make_nlp(model_dir, labels=["LOC", "MISC", "PER"], **config)


def test_pipeline_decodes_segments_behind_memory(memorized_model_dir):
    nlp = _memory_nlp(memorized_model_dir, n_local=200, exec_chunk=16)
    plain = make_nlp(memorized_model_dir, labels=["LOC", "MISC", "PER"], segment_tokens=8)
    pipe = nlp.get_pipe("padellm_ner")
    doc = nlp(_article(nlp))
    stats = doc._.padellm
    assert stats["segments"] == 3 and stats["fallbacks"].get("memory_docs") == 1
    # Segment 1 is decoded as it is without memory (nothing before it).
    first = plain(_article(plain, 1))
    assert [(e.text, e.label_) for e in first.ents] == [
        (e.text, e.label_) for e in doc.ents if e.end_char <= len(MEMORIZED[0][0])
    ]
    assert pipe.fallback_counts["memory_docs"] == 1


def test_segments_behind_memory_are_full_attention_within_the_window(memorized_model_dir):
    """Each segment's counts, mentions and scores behind the memory equal
    the plain decoder's with the streamed text put before that segment's
    prompt (full attention over the doc so far)."""
    from spacy_padellm.memory.documents import StreamedSegment, decode_behind_memory

    nlp = _memory_nlp(memorized_model_dir, n_local=200, exec_chunk=16)
    pipe = nlp.get_pipe("padellm_ner")
    nlp("warm up")  # builds the decoder and its memory
    decoder = pipe._decoder
    texts = [text for text, _ in MEMORIZED]
    segments = [StreamedSegment(t, (" " if k else "") + t) for k, t in enumerate(texts)]
    behind = decode_behind_memory(decoder, pipe._memory, [segments], batch_size=4)[0]
    streamed = []
    for segment, got in zip(segments, behind):
        view = copy.copy(decoder)
        view.prefix_ids = lambda text, before=list(streamed): before + decoder.prompts.prefix(text)
        want = view([segment.text])[0]
        assert got.counts == want.counts
        assert [(m.label, m.n, m.text) for m in got.mentions] == [(m.label, m.n, m.text) for m in want.mentions]
        assert [m.score for m in got.mentions] == pytest.approx([m.score for m in want.mentions], rel=1e-3)
        streamed += decoder.engine.tokenize(segment.stream)
    assert any(pred.mentions for pred in behind)  # the comparison saw mentions


def test_memory_on_an_engine_without_it_is_refused(tiny_model_dir):
    from spacy_padellm.scripted_backend import ScriptedBackend

    nlp = _memory_nlp(tiny_model_dir)
    pipe = nlp.get_pipe("padellm_ner")
    with pytest.raises(ValueError, match="ScriptedBackend backend has no memory"):
        pipe._memory_on(ScriptedBackend(AutoTokenizer.from_pretrained(tiny_model_dir), {}))


def test_memory_needs_parallel_decoding(tiny_model_dir):
    with pytest.raises(ValueError, match="parallel"):
        make_nlp(tiny_model_dir, decoding="autoregressive", memory={"@misc": "spacy_padellm.InfLLMMemory.v1"})


def test_memory_on_gemma3_is_refused_with_the_reason(tiny_gemma3_dir):
    nlp = make_nlp(tiny_gemma3_dir, memory={"@misc": "spacy_padellm.InfLLMMemory.v1", "n_local": 32, "exec_chunk": 16})
    with pytest.raises(ValueError, match=r"model type 'gemma3_text'"):
        nlp("Peter Blackburn visited Brussels . He liked it .")


def test_error_messages_exist():
    assert "memory" in Errors.E2103 and "parallel" in Errors.E2104


def test_blocks_off_the_model_device_are_cached_least_recently_used():
    """On GPU, blocks live in CPU RAM and `max_cached_blocks` per layer stay
    on the GPU. Checked with torch's "meta" device standing in for it."""
    from spacy_padellm.memory.store import LayerStore

    settings = InfLLMSettings(n_init=0, n_local=4, block_size=2, topk=2, repr_topk=1, exec_chunk=2, max_cached_blocks=2)
    store = LayerStore(settings, store_device=torch.device("cpu"))
    for step in range(6):  # 12 tokens: 4 blocks, 4 in the window
        store.append(torch.randn(1, 2, 8), torch.randn(1, 2, 8), torch.rand(2, store.buffered + 2))
    assert len(store.blocks) == 4 and all(k.device.type == "cpu" for k, _ in store.blocks)
    meta = torch.device("meta")
    store._on_device(0, meta)
    store._on_device(1, meta)
    store._on_device(0, meta)  # 0 used last: 1 leaves first
    k, _ = store._on_device(2, meta)
    assert k.device == meta and list(store._cached) == [0, 2]


def test_representative_keys_stay_with_the_blocks_and_grow_on_the_device():
    """The representative keys live where the blocks do (CPU RAM beside a
    GPU; "meta" stands in for it); retrieval's matrix on the model's device
    gains the rows of new blocks, and scores as one built afresh would."""
    from spacy_padellm.memory.store import LayerStore

    settings = InfLLMSettings(n_init=0, n_local=4, block_size=2, topk=2, repr_topk=1, exec_chunk=2)
    store = LayerStore(settings, store_device=torch.device("cpu"))
    torch.manual_seed(0)
    for step in range(10):  # 20 tokens: 8 blocks, formed between retrievals
        store.append(torch.randn(1, 2, 8), torch.randn(1, 2, 8), torch.rand(2, store.buffered + 2))
        if store.blocks:
            query = torch.randn(2, 8)
            got = store.retrieve(query)
            fresh = (torch.stack(store.reprs) * query[None]).sum(dim=(1, 2))
            expected = sorted(fresh.topk(min(2, len(store.blocks))).indices.tolist())
            assert got == expected
    assert len(store.blocks) == 8 and store._repr_matrix.shape[0] == 8  # grown at each new block
    assert all(r.device.type == "cpu" for r in store.reprs)
    on_meta = store._repr_rows(torch.device("meta"))
    assert on_meta.device.type == "meta" and on_meta.shape == (8, 2, 8)
    store.append(torch.randn(1, 2, 8), torch.randn(1, 2, 8), torch.rand(2, store.buffered + 2))
    assert store._repr_rows(torch.device("meta")).shape[0] == 9


def test_docs_batched_behind_their_memories_equal_each_alone(memorized_model_dir):
    """nlp.pipe over docs of 3, 1 and 2 segments: each doc's entities and
    counts are what it gets on its own."""
    nlp = _memory_nlp(memorized_model_dir, n_local=16, exec_chunk=8, n_init=4, block_size=8, topk=1, repr_topk=2)
    docs = [_article(nlp, 3), _article(nlp, 1), _article(nlp, 2)]
    together = list(nlp.pipe([d.copy() for d in docs], batch_size=3))
    alone = [nlp(d.copy()) for d in docs]
    assert [t._.padellm["segments"] for t in together] == [3, 1, 2]
    for t, a in zip(together, alone):
        assert [(s.start_char, s.end_char, s.label_) for s in t.spans["padellm"]] == [
            (s.start_char, s.end_char, s.label_) for s in a.spans["padellm"]
        ]
        assert t._.padellm["fallbacks"] == a._.padellm["fallbacks"]


def test_memory_settings_survive_saving_and_loading(tiny_model_dir, tmp_path):
    nlp = _memory_nlp(tiny_model_dir, n_local=24, topk=3, exec_chunk=8)
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline").get_pipe("padellm_ner")
    assert loaded.memory_settings == InfLLMSettings(n_local=24, topk=3, exec_chunk=8)
    off = spacy.load(tmp_path / "pipeline", config={"components": {"padellm_ner": {"memory": None}}})
    assert off.get_pipe("padellm_ner").memory_settings is None


def test_a_snapshot_keeps_what_the_memory_held(engine):
    """Streaming on after a snapshot (blocks forming, the window moving)
    leaves the snapshot's tensors and blocks as they were."""
    memory = engine.memory(InfLLMSettings(n_local=16, topk=1, **SMALL))
    doc_memory = memory.new()
    memory.extend(doc_memory, _random_ids(40, seed=1))
    before = doc_memory.snapshot()
    held = [(len(l.blocks), l.init_k.clone(), l.buf_k.clone(), l.buf_score.clone()) for l in before.layers]
    memory.extend(doc_memory, _random_ids(40, seed=2))
    assert len(doc_memory.layers[0].blocks) > held[0][0] and doc_memory.tokens == before.tokens + 40
    for layer, (blocks, init_k, buf_k, buf_score) in zip(before.layers, held):
        assert len(layer.blocks) == len(layer.reprs) == blocks
        assert torch.equal(layer.init_k, init_k) and torch.equal(layer.buf_k, buf_k)
        assert torch.equal(layer.buf_score, buf_score)


def test_one_long_doc_fills_a_batch_with_its_next_segments(memorized_model_dir, monkeypatch):
    """A doc alone decodes several of its segments per batch, each behind a
    snapshot of the memory before it, and gets what it gets one segment at
    a time, with blocks forming and retrieved."""
    from spacy_padellm.memory import documents
    from spacy_padellm.memory.documents import StreamedSegment, decode_behind_memory

    nlp = _memory_nlp(memorized_model_dir, n_local=16, exec_chunk=8, n_init=4, block_size=8, topk=1, repr_topk=2)
    pipe = nlp.get_pipe("padellm_ner")
    nlp("warm up")
    texts = [text for text, _ in MEMORIZED] * 3
    segments = [StreamedSegment(t, (" " if k else "") + t) for k, t in enumerate(texts)]
    batches = []
    real = documents.BehindMemories

    def counted(memory, memories, prompts):
        batches.append(len(memories))
        return real(memory, memories, prompts)

    monkeypatch.setattr(documents, "BehindMemories", counted)
    one_by_one = decode_behind_memory(pipe._decoder, pipe._memory, [segments], batch_size=1)[0]
    assert batches == [1] * len(texts)
    batches.clear()
    batched = decode_behind_memory(pipe._decoder, pipe._memory, [segments], batch_size=4)[0]
    assert batches == [1, 4, 4]  # the first segment reads nothing and runs alone
    assert any(p.mentions for p in batched)
    for got, want in zip(batched, one_by_one):
        assert got.counts == want.counts
        assert [(m.label, m.n, m.text) for m in got.mentions] == [(m.label, m.n, m.text) for m in want.mentions]
        assert [m.score for m in got.mentions] == pytest.approx([m.score for m in want.mentions], rel=1e-3)


def test_free_heap_interleaved_with_kept_allocations_is_given_back():
    """The pattern streaming makes: many freed allocations between kept
    ones. The freed memory stays resident until `release_free_heap` trims
    it, and it trims only past its limit.

    glibc's own trimming of the heap's top is switched off meanwhile: where
    earlier tests left holes, the kept allocations land in them, the freed
    ones end up together at the top, and `free` would give part of them
    back before `release_free_heap` is asked to (seen in a full run)."""
    import ctypes

    import psutil

    from spacy_padellm.memory import heap

    if heap.free_heap_bytes() is None:
        pytest.skip("not glibc")
    libc, m_trim_threshold = heap._libc(), -1
    process = psutil.Process()
    kept, freed = [], []
    libc.mallopt(m_trim_threshold, ctypes.c_int(2**30))
    try:
        for _ in range(3000):
            freed.append(bytearray(64 * 1024))  # 192 MB in all, under the mmap threshold: heap
            kept.append(bytearray(1024))  # over pymalloc's 512 bytes: malloc, between the others
        freed.clear()
        assert heap.free_heap_bytes() > 150 * 2**20
        assert not heap.release_free_heap(limit=2**40)
        before = process.memory_info().rss
        assert heap.release_free_heap(limit=100 * 2**20)
        assert before - process.memory_info().rss > 100 * 2**20
        assert len(kept) == 3000
    finally:
        libc.mallopt(m_trim_threshold, ctypes.c_int(128 * 1024))  # glibc's default
