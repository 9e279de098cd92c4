"""QA-SparsePEFT: an adapter trained through the quantizer of a base on
GGUF's Q8_0 or Q4_0 grid; the merge lands on the same grid, keeps the
zeros, and the GGUF export is the model training evaluated."""
import json

import numpy
import pytest
import torch
from spacy.training import Example
from thinc.api import Adam
from transformers import AutoModelForCausalLM

from spacy_padellm.cli import main
from spacy_padellm.models.qa_sparse_peft import LEVELS, SCALES, block_scales, fake_quant, fitted_scales, quantize, snap
from spacy_padellm.models.sparsify import linear_layers

from ..conftest import MEMORIZED, make_nlp, memorized_gold_docs


@pytest.mark.parametrize("fitted", [False, True], ids=["peak", "fitted"])
@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_the_grid_holds_zero_and_gives_back_its_scales(kind, fitted):
    torch.manual_seed(0)
    weight = torch.randn(4, 64)
    weight[:, :32] = 0.0  # a pruned block
    on_grid = snap(weight, kind, fitted=fitted)
    assert torch.equal(on_grid[:, :32], torch.zeros(4, 32))
    scales = fitted_scales(weight, kind) if fitted else block_scales(weight, kind)
    assert torch.equal(block_scales(on_grid, kind), scales)  # read back from the weights
    assert torch.equal(snap(on_grid, kind), on_grid)
    levels = quantize(on_grid, block_scales(on_grid, kind), kind)
    low, high = LEVELS[kind]
    assert torch.equal(levels, levels.round()) and levels.min() >= low and levels.max() <= high
    assert len(levels[:, 32:].unique()) >= 10  # many levels of the grid are used, not a few
    if kind == "q4_0":
        assert (levels[:, 32:] == -8).any(dim=1).all()  # the block's peak sits on level -8, as ggml puts it


def test_fitted_scales_round_heavy_tailed_weights_with_less_error():
    torch.manual_seed(2)
    weight = torch.distributions.Laplace(0.0, 0.05).sample((8, 128))  # tails like a model's weights
    for kind in ["q8_0", "q4_0"]:
        peak, fitted = block_scales(weight, kind), fitted_scales(weight, kind)
        error = [float(((fake_quant(weight, s, kind) - weight) ** 2).sum()) for s in (peak, fitted)]
        assert error[1] <= error[0]  # never worse: the peak's scale is a candidate
        assert (fitted.abs() <= peak.abs()).all()
    assert error[1] < 0.95 * error[0]  # on 4 bits, clipping the peak pays in most blocks
    assert (fitted.abs() < peak.abs()).float().mean() > 0.5


def test_gguf_reads_back_the_q4_0_blocks(tmp_path):
    gguf = pytest.importorskip("gguf")
    from spacy_padellm.models.gguf_export import _q4_0_blocks

    torch.manual_seed(1)
    weight = snap(torch.randn(3, 64), "q4_0")
    weight[0, :32] = 0.0
    blocks = _q4_0_blocks(weight.numpy(), block_scales(weight, "q4_0").numpy())
    back = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_0)
    assert numpy.array_equal(back.reshape(3, 64), weight.numpy())


@pytest.fixture(scope="module", params=["q8_0", "q4_0"])
def grid_base(memorized_model_dir, tmp_path_factory, request):
    out = tmp_path_factory.mktemp(f"qa-{request.param}") / "base"
    main(["sparsify", str(memorized_model_dir), "--method", "magnitude", "--sparsity", "0.25",
          "--quantize", request.param, "--output", str(out)])
    return out


def train_and_merge(grid_base, tmp_path):
    """Three LoRA steps on the grid base, then `merge --gguf F32`; the logits
    of the trained (fake-quant) model on one text, and the merged model's dir."""
    nlp = make_nlp(grid_base, labels=["LOC", "MISC", "PER"])
    examples = [Example(nlp.make_doc(ref.text), ref) for ref in memorized_gold_docs(nlp)]
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01, use_averages=False)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    shim = nlp.get_pipe("padellm_ner").shim
    assert any(getattr(m, SCALES, None) is not None for m in shim.model.modules())
    ids = torch.tensor([shim.tokenizer("Japan won the Asian Cup .")["input_ids"]])
    with torch.no_grad():
        trained = shim.model.eval()(input_ids=ids).logits
    nlp.to_disk(tmp_path / "trained")
    main(["merge", str(tmp_path / "trained"), "--output", str(tmp_path / "merged"), "--gguf", "F32"])
    return ids, trained, tmp_path / "merged" / "model"


def test_quantization_aware_training_merges_onto_the_grid(grid_base, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(grid_base)
    kind = json.loads((grid_base / "quantization.json").read_text())["grid"]
    ids, trained, model_dir = train_and_merge(grid_base, tmp_path)
    merged = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    base_params = dict(base.named_parameters())
    moved = 0
    for modules in linear_layers(merged).values():
        for name, module in modules:
            weight, before = module.weight, base_params[name + ".weight"]
            assert torch.equal(fake_quant(weight, block_scales(before, kind), kind), weight), name  # the base's grid
            assert bool((weight[before == 0] == 0).all()), name  # every zero of the base kept
            moved += int(not torch.equal(weight, before))
    assert moved  # the adapter changed the weights
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, trained, atol=1e-4)  # what training evaluated


def test_the_gguf_export_gives_the_fake_quant_models_tokens(grid_base, tmp_path):
    pytest.importorskip("llama_cpp")
    from spacy_padellm.decoding import stop_token_ids
    from spacy_padellm.engine import BranchDecoder
    from spacy_padellm.llama_cpp_engine import LlamaCppEngine

    from transformers import AutoTokenizer

    _, _, model_dir = train_and_merge(grid_base, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    merged = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    stops = stop_token_ids(tokenizer)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefixes = [ids(f"text:\n{text}\nentity type:\n") for text, _ in MEMORIZED]
    branches = [ids("LOC\n<num>"), ids("PER\n<num>"), ids("MISC\n<num>")]
    torch_engine = BranchDecoder(merged, stops, tokenizer.eos_token_id)
    text_index = [i for i in range(len(prefixes)) for _ in branches]
    every = branches * len(prefixes)
    expected = torch_engine.decode(torch_engine.encode_prefixes(prefixes), text_index, every, 6)
    engine = LlamaCppEngine(str(model_dir / "model.gguf"), stops, tokenizer.eos_token_id, n_ctx=2048, n_threads=1)
    got = engine.decode(engine.encode_prefixes(prefixes), text_index, every, 6)
    assert [g.token_ids for g in got] == [g.token_ids for g in expected]


def test_the_llama_cpp_backend_runs_a_quantization_aware_pipeline_exactly(grid_base, tmp_path):
    """The trained pipeline itself, its model switched to llama.cpp: the
    shim's export writes the grid as it is, so the spans are torch's."""
    pytest.importorskip("llama_cpp")
    import spacy

    train_and_merge(grid_base, tmp_path)
    texts = [text for text, _ in MEMORIZED]
    on_torch = spacy.load(tmp_path / "trained")
    on_llama = spacy.load(tmp_path / "trained", config={
        "components": {"padellm_ner": {"model": {"@architectures": "spacy_padellm.LlamaCpp.v1", "export": "f32"}}}})
    spans = lambda nlp: [[(s.start_char, s.end_char, s.label_) for s in doc.spans["padellm"]] for doc in nlp.pipe(texts)]  # noqa: E731
    want = spans(on_torch)
    assert any(want) and spans(on_llama) == want
    shim = on_llama.get_pipe("padellm_ner").shim
    from gguf import GGUFReader, GGMLQuantizationType

    kind = json.loads((grid_base / "quantization.json").read_text())["grid"]
    types = {t.name: t.tensor_type for t in GGUFReader(str(shim.gguf_path)).tensors}
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType[kind.upper()]  # on the grid, not f32
