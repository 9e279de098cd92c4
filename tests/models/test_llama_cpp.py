"""The llama.cpp backend: the same greedy tokens as the torch engine, on a
tiny model written to GGUF at test time, and the same pipeline results after
a one-line config change."""
import copy
import json
import sys

import pytest
import spacy

from spacy_padellm.engine import BranchDecoder

from ..conftest import MEMORIZED

LLAMA_CPP = {"components.padellm_ner.model.@architectures": "spacy_padellm.LlamaCpp.v1",
             "components.padellm_ner.model.export": "f32"}


def test_without_llama_cpp_the_error_names_the_install_command(monkeypatch):
    from spacy_padellm.llama_cpp_engine import LLAMA_CPP_INSTALL, import_llama_cpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ImportError, match="E2080") as err:
        import_llama_cpp()
    assert LLAMA_CPP_INSTALL in str(err.value)


def test_the_architecture_checks_its_settings():
    from spacy_padellm.registry import llama_cpp_v1

    with pytest.raises(ValueError, match="E2087"):
        llama_cpp_v1(export="q4")
    with pytest.raises(ValueError, match="n_ctx"):
        llama_cpp_v1(n_ctx=16)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spacy_padellm.models.gguf_export import export_gguf

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = export_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny.gguf", "f32")
    return model, tokenizer, path


def test_a_q4_0_export_puts_each_projection_on_its_own_4_bit_grid(tiny_gguf, tmp_path):
    """`export = "q4_0"`: post-training 4 bits for the decoder projections
    (each block on its fitted scale), Q8_0 for the embeddings, and a file
    llama.cpp loads and decodes with."""
    import numpy
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from spacy_padellm.decoding import stop_token_ids
    from spacy_padellm.llama_cpp_engine import LlamaCppEngine
    from spacy_padellm.models.gguf_export import _permute, export_gguf
    from spacy_padellm.models.qa_sparse_peft import snap

    model, tokenizer, _ = tiny_gguf
    path = export_gguf(model, tokenizer, tmp_path / "q4.gguf", "q4_0")
    weights = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    config = model.config
    types = {}
    for tensor in GGUFReader(str(path)).tensors:
        types[tensor.name] = tensor.tensor_type.name
        if tensor.name.startswith("blk.") and tensor.name.endswith("_q.weight"):
            layer = int(tensor.name.split(".")[1])
            hf = _permute(weights[f"model.layers.{layer}.self_attn.q_proj.weight"], config.num_attention_heads)
            back = dequantize(tensor.data, tensor.tensor_type).reshape(hf.shape)
            assert numpy.array_equal(back, snap(torch.from_numpy(numpy.ascontiguousarray(hf)), "q4_0", fitted=True).numpy())
    projections = [n for n in types if n.startswith("blk.") and not n.endswith("norm.weight")]
    assert projections and all(types[n] == "Q4_0" for n in projections)
    assert types["token_embd.weight"] == "Q8_0"
    engine = LlamaCppEngine(str(path), stop_token_ids(tokenizer), tokenizer.eos_token_id, n_ctx=256, n_threads=1)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    handle = engine.encode_prefixes([ids("Japan began the defence of their Asian Cup title .")])
    (got,) = engine.decode(handle, [0], [ids("\nLOC\n<num>")], [4])
    engine.release(handle)
    assert got.token_ids and len(got.logprobs) == len(got.token_ids)  # it loads and decodes


def test_greedy_tokens_equal_the_torch_engine(tiny_gguf):
    from spacy_padellm.decoding import stop_token_ids
    from spacy_padellm.llama_cpp_engine import LlamaCppEngine

    model, tokenizer, path = tiny_gguf
    stops = stop_token_ids(tokenizer)
    torch_engine = BranchDecoder(model, stops, tokenizer.eos_token_id)
    engine = LlamaCppEngine(str(path), stops, tokenizer.eos_token_id, n_ctx=1024, n_threads=1)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefixes = [ids("Japan began the defence of their Asian Cup title ."), ids("China beat China .")]
    suffixes = [ids("\nLOC\n<num>"), ids("\nPER\n<mention 1>"), ids("\nMISC")]
    text_index = [0, 0, 1, 1, 0]
    branches = [suffixes[0], suffixes[1], suffixes[1], suffixes[2], suffixes[2]]
    limits = [6, 3, 9, 1, 12]
    expected = torch_engine.decode(torch_engine.encode_prefixes(prefixes), text_index, branches, limits)
    handle = engine.encode_prefixes(prefixes)
    got = engine.decode(handle, text_index, branches, limits)
    again = engine.decode(handle, text_index[::-1], branches[::-1], limits[::-1])  # the prefixes are left as they were
    engine.release(handle)
    assert [g.token_ids for g in got] == [g.token_ids for g in expected]
    assert [g.stopped for g in got] == [g.stopped for g in expected]
    for g, e in zip(got, expected):
        assert g.logprobs == pytest.approx(e.logprobs, abs=1e-3)
    assert [g.token_ids for g in again] == [g.token_ids for g in expected][::-1]
    assert len(engine._free) == 256  # every sequence was released
    bias = {expected[0].token_ids[0]: -1e9}  # the first token may not be the greedy one
    (biased,) = engine.decode(engine.encode_prefixes(prefixes[:1]), [0], [suffixes[0]], 2, first_token_bias=bias)
    assert biased.token_ids[0] != expected[0].token_ids[0]


def test_a_pipeline_trained_on_torch_predicts_the_same_on_llama_cpp(memorized_nlp, tmp_path):
    pytest.importorskip("llama_cpp")
    texts = [t for t, _ in MEMORIZED]
    expected = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in memorized_nlp.pipe(texts)]
    assert any(expected)
    memorized_nlp.to_disk(tmp_path / "pipeline")
    nlp = spacy.load(tmp_path / "pipeline", config=LLAMA_CPP)
    got = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in nlp.pipe(texts)]
    assert got == expected
    long = nlp(" ".join(texts * 5))  # segments of one doc batched together
    assert len(long.ents) == 5 * sum(map(len, expected))
    nlp.to_disk(tmp_path / "again")  # saved as it was loaded: the same adapter
    again = spacy.load(tmp_path / "again", config=LLAMA_CPP)
    assert [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in again.pipe(texts)] == expected
    from spacy.training import Example

    example = Example(nlp.make_doc(texts[0]), nlp(texts[0]))
    with pytest.raises(ValueError, match="E2086"):
        nlp.update([example])  # training stays on torch
    forked = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in nlp.pipe(texts * 2, n_process=2, batch_size=2)]
    assert forked == expected * 2


def test_a_batch_beyond_the_context_fails_clearly_and_frees_its_sequences(tiny_gguf):
    from spacy_padellm.llama_cpp_engine import MAX_SEQUENCES, LlamaCppEngine

    _, tokenizer, path = tiny_gguf
    engine = LlamaCppEngine(str(path), [0], tokenizer.eos_token_id, n_ctx=256, n_threads=1)
    prefix = tokenizer("China beat China in Beijing on Friday .", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="E2084"):
        engine.encode_prefixes([prefix] * (256 // len(prefix) + 1))
    with pytest.raises(ValueError, match="E2084"):
        engine.encode_with_branches([prefix], [[5] * 100, [6] * 100], 200)  # each branch alone overflows
    assert len(engine._free) == MAX_SEQUENCES
    (gen,) = engine.decode(engine.encode_prefixes([prefix]), [0], [[5]], 3)  # still usable
    assert len(gen.token_ids) >= 1


def test_forked_branches_equal_the_torch_engine_and_are_freed(tiny_gguf):
    """Branches kept at their stop token and forked: the same tokens on both
    engines (random weights rarely write a newline, so the stop tokens are
    what torch generates second), and every sequence and cell comes back."""
    from spacy_padellm.llama_cpp_engine import MAX_SEQUENCES, LlamaCppEngine

    model, tokenizer, path = tiny_gguf
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefixes = [ids("Japan began the defence of their Asian Cup title ."), ids("China beat China .")]
    suffixes = [ids("\nLOC\n<num>"), ids("\nPER\n<num>")]
    probe = BranchDecoder(model, [], tokenizer.eos_token_id)
    firsts = probe.decode(probe.encode_prefixes(prefixes), [0, 0, 1, 1], suffixes * 2, 2)
    stops = sorted({g.token_ids[1] for g in firsts})
    torch_engine = BranchDecoder(model, stops, tokenizer.eos_token_id)
    engine = LlamaCppEngine(str(path), stops, tokenizer.eos_token_id, n_ctx=1024, n_threads=1)
    results = []
    for e in (torch_engine, engine):
        handle, counts = e.encode_with_branches(prefixes, suffixes, 3, keep=True)
        kept = [g.branch for g in counts]
        assert all(b is not None for b in kept)
        forks = e.fork(kept + kept[:1], [ids("<mention 1>")] * 4 + [ids("<mention 2>")], [4, 4, 2, 4, 4])
        results.append((counts, forks))
        e.release_branches(kept)
        e.release(handle)
    (torch_counts, torch_forks), (counts, forks) = results
    assert [g.token_ids for g in counts] == [g.token_ids for g in torch_counts]
    assert [g.token_ids for g in forks] == [g.token_ids for g in torch_forks]
    for g, t in zip(forks, torch_forks):
        assert g.logprobs == pytest.approx(t.logprobs, abs=1e-3)
    assert len(engine._free) == MAX_SEQUENCES and engine._cells == 0 and engine._held == 0


def test_suffixes_that_start_alike_share_their_tokens_as_a_trie():
    from spacy_padellm.llama_cpp_engine import SEQS_PER_TOKEN, _shared_entries

    starts = [(7, 10, [1, 2, 3]), (7, 10, [1, 2, 4]), (7, 10, [1]), (8, 10, [1, 2]), (7, 11, [1]), (7, 10, [1, 2, 3])]
    entries, ends = _shared_entries(starts, [20, 21, 22, 23, 24, 25], SEQS_PER_TOKEN)
    assert entries == [
        (1, 10, (20, 21, 22, 25), True),  # branch 2 ends here: its logits
        (2, 11, (20, 21, 25), False),
        (3, 12, (20, 25), True),  # branches 0 and 5 are alike: one row of logits for both
        (4, 12, (21,), True),
        (1, 10, (23,), False),  # another source: nothing shared
        (2, 11, (23,), True),
        (1, 11, (24,), True),  # another start
    ]
    assert ends == [1, 2, 0, 3, 4, 1]  # rows among the entries with logits
    entries, ends = _shared_entries([(7, 0, [1, 2])] * 3, [20, 21, 22], 2)  # at most 2 sequences per token
    assert [e[2] for e in entries] == [(20, 21), (20, 21), (22,), (22,)] and ends == [0, 0, 1]


def test_shared_tokens_decode_what_torch_decodes_and_are_evaluated_once(tiny_gguf):
    """Branches behind one prefix whose suffixes start alike, and forks of
    one kept branch (one empty, continuing it; two with mention headers),
    as in the speculated count step: the torch engine's tokens, fewer
    tokens evaluated than the suffixes hold, every sequence freed."""
    from spacy_padellm.decoding import stop_token_ids
    from spacy_padellm.llama_cpp_engine import MAX_SEQUENCES, LlamaCppEngine

    model, tokenizer, path = tiny_gguf
    stops = stop_token_ids(tokenizer)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefixes = [ids("Japan began the defence of their Asian Cup title ."), ids("China beat China .")]
    branches = [ids("\nLOC\n<num>2\n<mention 1>"), ids("\nLOC\n<num>2\n<mention 2>"), ids("\nLOC\n<num>2\n<mention 1>"),
                ids("\nLOC\n<num>2\n<mention 1>")]
    text_index, limits = [0, 0, 0, 1], [5, 5, 3, 5]
    headers = [[], ids("\n<mention 1>"), ids("\n<mention 2>")]
    torch_engine = BranchDecoder(model, stops, tokenizer.eos_token_id)
    engine = LlamaCppEngine(str(path), stops, tokenizer.eos_token_id, n_ctx=1024, n_threads=1)
    results = []
    for e in (torch_engine, engine):
        handle = e.encode_prefixes(prefixes)
        before = e.tokens_evaluated
        behind = e.decode(handle, text_index, branches, limits)
        evaluated = e.tokens_evaluated - before
        (first,) = e.decode(handle, [0], [ids("\nLOC\n<num>")], 1, keep=True)
        forks = e.fork([first.branch] * 3, headers, [4, 6, 6])
        e.release_branches([first.branch])
        e.release(handle)
        results.append((behind, forks, evaluated))
    (torch_behind, torch_forks, _), (behind, forks, evaluated) = results
    assert [g.token_ids for g in behind] == [g.token_ids for g in torch_behind]
    assert [g.token_ids for g in forks] == [g.token_ids for g in torch_forks]
    for g, t in zip(behind + forks, torch_behind + torch_forks):
        assert g.logprobs == pytest.approx(t.logprobs, abs=1e-3)
    alike = next(j for j, (a, b) in enumerate(zip(branches[0], branches[1])) if a != b)
    first_call = len(branches[0]) + len(branches[1]) - alike + len(branches[3])  # branch 2 is branch 0's
    assert evaluated - first_call == sum(len(g.token_ids) - 1 for g in behind)  # then one token per live branch and step
    assert len(engine._free) == MAX_SEQUENCES and engine._cells == 0 and engine._held == 0


def test_a_lora_applied_at_run_time_equals_torch_with_the_adapter(tiny_gguf, tmp_path):
    """`lora = "runtime"`: the adapter written as a GGUF LoRA (the q and k
    rows of lora_B permuted as the base's) and applied by llama.cpp while
    decoding gives torch's greedy tokens with the adapter; and the
    architecture uses it when asked."""
    import torch
    from peft import LoraConfig, get_peft_model

    from spacy_padellm.decoding import stop_token_ids
    from spacy_padellm.llama_cpp_engine import LlamaCppEngine
    from spacy_padellm.models.gguf_export import export_lora_gguf
    from spacy_padellm.registry import llama_cpp_v1

    model, tokenizer, path = tiny_gguf
    torch.manual_seed(3)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    peft_model.save_pretrained(tmp_path / "adapter")
    files = {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()}
    lora = export_lora_gguf(files, path, tmp_path / "adapter.gguf")
    stops = stop_token_ids(tokenizer)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefixes = [ids("Japan began the defence of their Asian Cup title ."), ids("China beat China .")]
    branches = [ids("\nLOC\n<num>"), ids("\nPER\n<mention 1>"), ids("\nMISC")]
    torch_engine = BranchDecoder(peft_model.eval(), stops, tokenizer.eos_token_id)
    expected = torch_engine.decode(torch_engine.encode_prefixes(prefixes), [0, 1, 1], branches, 8)
    plain = BranchDecoder(model, stops, tokenizer.eos_token_id)
    without = plain.decode(plain.encode_prefixes(prefixes), [0, 1, 1], branches, 8)
    assert [g.token_ids for g in expected] != [g.token_ids for g in without]  # the adapter matters
    engine = LlamaCppEngine(str(path), stops, tokenizer.eos_token_id, n_ctx=1024, n_threads=1, lora_path=str(lora))
    got = engine.decode(engine.encode_prefixes(prefixes), [0, 1, 1], branches, 8)
    assert [g.token_ids for g in got] == [g.token_ids for g in expected]
    for g, e in zip(got, expected):
        assert g.logprobs == pytest.approx(e.logprobs, abs=1e-3)
    with pytest.raises(ValueError, match="E2089"):
        llama_cpp_v1(lora="merge")
    config = json.loads(files["adapter_config.json"])
    files["adapter_config.json"] = json.dumps({**config, "use_dora": True}).encode()
    with pytest.raises(ValueError, match="E2090"):
        export_lora_gguf(files, path, tmp_path / "dora.gguf")
