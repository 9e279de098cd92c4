"""Pruning (Wanda, magnitude, n:m) and SparsePEFT: a LoRA update masked by
the sparse base, so that training, merging, saving and loading keep every
zero of the base."""
import json

import pytest
import torch
from spacy.training import Example
from thinc.api import Adam
from transformers import AutoModelForCausalLM, AutoTokenizer

from spacy_padellm.cli import main
from spacy_padellm.models.sparse_peft import zero_counts
from spacy_padellm.models.sparsify import Pattern, keep_mask, linear_layers, sparsify
from spacy_padellm.prompt import PromptTemplate, PromptTokenizer

from ..conftest import MEMORIZED, make_nlp, memorized_gold_docs


def test_keep_mask_prunes_the_lowest_scores_per_row_or_per_group():
    torch.manual_seed(0)
    scores = torch.rand(6, 16)
    keep = keep_mask(scores, 0.5)
    assert keep.sum(dim=1).tolist() == [8] * 6
    for row in range(6):  # every pruned score is below every kept one
        assert scores[row][~keep[row]].max() < scores[row][keep[row]].min()
    keep = keep_mask(scores, 0.5, Pattern(2, 4))
    groups = keep.reshape(6, 4, 4)
    assert (groups.sum(dim=-1) == 2).all()
    values = scores.reshape(6, 4, 4)
    assert (torch.where(groups, values, 2.0).min(-1).values > torch.where(~groups, values, -1.0).max(-1).values).all()
    with pytest.raises(ValueError, match="0 < N < M"):
        Pattern.parse("4:2")


def test_wanda_scores_weights_by_their_input_norms(tiny_model_dir):
    """The first layer sees the dense model's activations, so its masks can
    be recomputed here: |W| times the input feature norms, not |W| alone."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = PromptTokenizer(tokenizer, PromptTemplate())
    batches = [torch.tensor([prompts.prefix(text)]) for text, _ in MEMORIZED]
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    (name, module), *_ = linear_layers(dense)[0]
    seen = []
    handle = module.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].reshape(-1, inputs[0].shape[-1])))
    with torch.no_grad():
        for ids in batches:
            dense(input_ids=ids)
    handle.remove()
    norms = torch.cat(seen).double().pow(2).sum(0).sqrt().float()
    expected = keep_mask(module.weight.abs() * norms[None, :], 0.5)
    pruned = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    report = sparsify(pruned, batches, 0.5, method="wanda")
    weight = dict(pruned.named_modules())[name].weight
    assert torch.equal(weight != 0, expected)
    assert not torch.equal(expected, keep_mask(module.weight.abs(), 0.5))  # not magnitude pruning
    assert all(share == pytest.approx(0.5, abs=0.01) for share in report.values())
    assert len(report) == 7 * len(linear_layers(pruned))


@pytest.fixture(scope="module")
def sparse_base(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sparse") / "base"
    calibration = tmp_path_factory.mktemp("calibration") / "texts.txt"
    calibration.write_text("\n".join(text for text, _ in MEMORIZED), encoding="utf8")
    main(["sparsify", str(tiny_model_dir), "--pattern", "2:4", "--calibration", str(calibration), "--output", str(out)])
    return out


def test_sparsify_writes_a_base_that_pipelines_refer_to(sparse_base):
    report = json.loads((sparse_base / "sparsity.json").read_text())
    assert report["pattern"] == "2:4" and report["zero_fraction_of_pruned_weights"] == pytest.approx(0.5, abs=0.01)
    model = AutoModelForCausalLM.from_pretrained(sparse_base)
    for _, modules in linear_layers(model).items():
        for _, module in modules:
            assert ((module.weight != 0).reshape(module.out_features, -1, 4).sum(-1) <= 2).all()


def test_sparse_peft_training_and_merge_keep_every_zero(sparse_base, tmp_path):
    nlp = make_nlp(sparse_base, labels=["LOC", "MISC", "PER"])
    examples = [Example(nlp.make_doc(ref.text), ref) for ref in memorized_gold_docs(nlp)]
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01, use_averages=False)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    pipe = nlp.get_pipe("padellm_ner")
    model = pipe.shim.model
    base = AutoModelForCausalLM.from_pretrained(sparse_base)
    base_zeros = {n: p == 0 for n, p in base.named_parameters() if p.dim() == 2}
    lora = [m for m in model.modules() if hasattr(m, "sparse_peft_mask")]
    assert len(lora) == 7 * len(linear_layers(base))  # every adapted projection is masked
    unmasked = type(lora[0]).get_delta_weight(lora[0], "default")
    assert bool((unmasked[~lora[0].sparse_peft_mask] != 0).any())  # plain LoRA would fill the zeros
    texts = [text for text, _ in MEMORIZED]
    before = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in nlp.pipe(texts)]
    nlp.to_disk(tmp_path / "trained")
    main(["merge", str(tmp_path / "trained"), "--output", str(tmp_path / "merged")])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged" / "model")
    merged_params = dict(merged.named_parameters())
    for name, zeros in base_zeros.items():
        assert torch.equal(merged_params[name] == 0, zeros), name
    assert zero_counts(merged) == zero_counts(base)
    changed = [n for n, z in base_zeros.items() if "proj" in n and not torch.equal(merged_params[n], dict(base.named_parameters())[n])]
    assert changed  # the adapter was merged in
    import spacy

    again = spacy.load(tmp_path / "merged" / "pipeline")
    assert not again.get_pipe("padellm_ner").shim.has_adapter
    assert [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in again.pipe(texts)] == before


def test_sparse_peft_off_trains_plain_lora_whose_merge_fills_the_zeros(sparse_base, tmp_path):
    """The baseline SQFT compares against: the same sparse base, LoRA unmasked."""
    import spacy

    nlp = spacy.blank("en")
    model = {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(sparse_base), "device": "cpu", "sparse_peft": False}
    nlp.add_pipe("padellm_ner", config={"labels": ["LOC", "MISC", "PER"], "model": model})
    examples = [Example(nlp.make_doc(ref.text), ref) for ref in memorized_gold_docs(nlp)]
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01, use_averages=False)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    assert not [m for m in nlp.get_pipe("padellm_ner").shim.model.modules() if hasattr(m, "sparse_peft_mask")]
    nlp.to_disk(tmp_path / "trained")
    again = spacy.load(tmp_path / "trained")  # the setting is in the saved config: still unmasked
    assert not [m for m in again.get_pipe("padellm_ner").shim.model.modules() if hasattr(m, "sparse_peft_mask")]
    # A new model block (as for the llama.cpp backend) defaults sparse_peft to true; the
    # saved adapter was trained unmasked and stays so.
    block = {"@architectures": "spacy_padellm.CausalLM.v1", "device": "cpu"}
    swapped = spacy.load(tmp_path / "trained", config={"components": {"padellm_ner": {"model": block}}})
    assert swapped.config["components"]["padellm_ner"]["model"]["sparse_peft"] is True
    assert not [m for m in swapped.get_pipe("padellm_ner").shim.model.modules() if hasattr(m, "sparse_peft_mask")]
    main(["merge", str(tmp_path / "trained"), "--output", str(tmp_path / "merged")])
    base = zero_counts(AutoModelForCausalLM.from_pretrained(sparse_base))
    merged = zero_counts(AutoModelForCausalLM.from_pretrained(tmp_path / "merged" / "model"))
    projections = [n for n in base if "proj" in n]
    assert sum(merged[n] for n in projections) < sum(base[n] for n in projections) // 10  # the zeros are filled


def test_sparsity_zero_prunes_nothing_and_only_puts_the_base_on_a_grid(tiny_model_dir, tmp_path):
    """`--sparsity 0 --quantize q4_0` is the dense 4-bit base: no weight is
    pruned (no calibration needed), every projection is on the Q4_0 grid."""
    from spacy_padellm.models.qa_sparse_peft import snap

    main(["sparsify", str(tiny_model_dir), "--sparsity", "0", "--quantize", "q4_0", "--scales", "peak",
          "--output", str(tmp_path / "q4")])
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    on_grid = AutoModelForCausalLM.from_pretrained(tmp_path / "q4")
    before = dict(dense.named_parameters())
    for modules in linear_layers(on_grid).values():
        for name, module in modules:
            weight = module.weight
            assert torch.equal(weight, snap(before[name + ".weight"], "q4_0")), name
            assert torch.equal(snap(weight, "q4_0"), weight), name
    report = json.loads((tmp_path / "q4" / "sparsity.json").read_text())
    assert report["quantize"] == "q4_0" and report["calibration"] is None
    for modules in linear_layers(on_grid).values():  # the zeros written, rounding to the grid included
        for name, module in modules:
            assert report["modules"][name] == pytest.approx(float((module.weight == 0).float().mean()))
    assert json.loads((tmp_path / "q4" / "quantization.json").read_text())["grid"] == "q4_0"


def test_fitted_scales_are_written_and_read_back_as_the_grid(tiny_model_dir, tmp_path):
    """By default `--quantize` writes each block on the scale of least
    rounding error, and a QA adapter reads exactly those scales back from
    the weights."""
    from spacy_padellm.models.qa_sparse_peft import block_scales, fitted_scales, snap

    main(["sparsify", str(tiny_model_dir), "--sparsity", "0", "--quantize", "q4_0", "--output", str(tmp_path / "q4")])
    before = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    clipped = 0
    for modules in linear_layers(AutoModelForCausalLM.from_pretrained(tmp_path / "q4")).values():
        for name, module in modules:
            original = before[name + ".weight"].detach()
            assert torch.equal(module.weight, snap(original, "q4_0", fitted=True)), name
            assert torch.equal(block_scales(module.weight, "q4_0"), fitted_scales(original, "q4_0")), name
            clipped += int((fitted_scales(original, "q4_0").abs() < block_scales(original, "q4_0").abs()).sum())
    assert clipped > 0  # the fit chose smaller scales somewhere, so the peak's grid was not written
    assert json.loads((tmp_path / "q4" / "quantization.json").read_text())["scales"] == "fitted"


@pytest.mark.parametrize("arguments,message", [
    (["--method", "magnitude", "--scales", "peak"], "add --quantize"),
    (["--calibration", "no/such/file.jsonl"], "no file at no/such/file.jsonl"),
    ([], "needs --calibration"),
])
def test_sparsify_refuses_bad_arguments_before_loading_the_base(arguments, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["sparsify", "no-such-base", *arguments, "--output", str(tmp_path / "out")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
