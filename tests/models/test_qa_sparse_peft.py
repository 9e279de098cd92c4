"""QA-SparsePEFT: an adapter trained through a Q8_0-grid base's quantizer;
the merge lands on the same grid, keeps the zeros, and the GGUF export is
the model training evaluated."""
import pytest
import torch
from spacy.training import Example
from thinc.api import Adam
from transformers import AutoModelForCausalLM

from spacy_padellm.cli import main
from spacy_padellm.models.qa_sparse_peft import SCALES, fake_quant, q8_scales, quantize, snap
from spacy_padellm.models.sparsify import linear_layers

from ..conftest import MEMORIZED, make_nlp, memorized_gold_docs


def test_the_grid_holds_zero_and_gives_back_its_scales():
    torch.manual_seed(0)
    weight = torch.randn(4, 64)
    weight[:, :32] = 0.0  # a pruned block
    on_grid = snap(weight)
    assert torch.equal(on_grid[:, :32], torch.zeros(4, 32))
    assert torch.equal(q8_scales(on_grid), q8_scales(weight))  # read back from the weights
    assert torch.equal(snap(on_grid), on_grid)
    levels = quantize(on_grid, q8_scales(on_grid))
    assert torch.equal(levels, levels.round()) and levels.abs().max() == 127


@pytest.fixture(scope="module")
def grid_base(memorized_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("qa") / "base"
    main(["sparsify", str(memorized_model_dir), "--method", "magnitude", "--sparsity", "0.25",
          "--quantize", "q8_0", "--output", str(out)])
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
    ids, trained, model_dir = train_and_merge(grid_base, tmp_path)
    merged = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    base_params = dict(base.named_parameters())
    moved = 0
    for modules in linear_layers(merged).values():
        for name, module in modules:
            weight, before = module.weight, base_params[name + ".weight"]
            assert torch.equal(fake_quant(weight, q8_scales(before)), weight), name  # on the base's grid
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
