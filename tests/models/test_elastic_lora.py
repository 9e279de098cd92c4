"""Elastic LoRA (SQFT's NLS): nested ranks that share one super-adapter's
weights, one rank draw per group and optimizer step, through spaCy updates."""
import pytest
import spacy
import torch
from peft import LoraConfig, get_peft_model
from spacy.training import Example
from thinc.api import Adam
from transformers import AutoModelForCausalLM

from spacy_padellm.models.elastic_lora import RANK_MASK, ElasticAdapter

from ..conftest import MEMORIZED, memorized_gold_docs

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def super_adapter(model_dir, seed):
    """A rank-8 LoRA on every projection of the tiny model, B non-zero (a
    fresh one adds nothing), alpha 16."""
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return model


def test_rank_r_is_the_first_r_rows_of_a_and_columns_of_b(tiny_model_dir):
    model = super_adapter(tiny_model_dir, seed=0)
    elastic = ElasticAdapter(model, [8, 4, 2])
    n_layers = model.config.num_hidden_layers
    assert sorted(elastic.groups) == sorted(f"{i}.{k}" for i in range(n_layers) for k in ("attention", "mlp"))
    layer = elastic.groups["0.attention"][0]
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x = torch.randn(3, a.shape[1])
    for rank in (8, 4, 2):
        elastic.use({g: rank for g in elastic.groups})
        expected = layer.get_base_layer()(x) + (x @ a[:rank].T @ b[:, :rank].T) * (16 / 8)  # alpha / r_max
        assert torch.allclose(layer(x), expected, atol=1e-6)
        assert torch.allclose(layer.get_delta_weight("default"), b[:, :rank] @ a[:rank] * 2.0, atol=1e-6)
    assert elastic.parameters(elastic.median()) < elastic.parameters(elastic.maximal())
    with pytest.raises(ValueError, match="one of"):
        elastic.use({g: 3 for g in elastic.groups})


def elastic_nlp(model_dir, decoding="parallel"):
    nlp = spacy.blank("en")
    model = {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(model_dir), "device": "cpu",
             "fine_tuning": "elastic_lora", "rank_choices": [8, 4, 2], "lora_dropout": 0.0}
    config = {"labels": ["LOC", "MISC", "PER"], "model": model, "decoding": decoding, "max_count": 4, "max_mention_tokens": 8}
    nlp.add_pipe("padellm_ner", config=config)
    return nlp


@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
def test_each_group_draws_one_rank_per_optimizer_step(memorized_model_dir, tmp_path, decoding):
    nlp = elastic_nlp(memorized_model_dir, decoding)
    examples = [Example(nlp.make_doc(ref.text), ref) for ref in memorized_gold_docs(nlp)]
    nlp.initialize(lambda: examples)
    pipe = nlp.get_pipe("padellm_ner")
    optimizer = Adam(0.001, use_averages=False)
    seen, steps = [], []
    for _ in range(6):
        for half in (examples[:2], examples[2:]):  # an accumulated step: two updates, one optimizer step
            pipe.update(half)
            elastic = pipe.shim.elastic
            seen.append(dict(elastic.ranks))
            for group, modules in elastic.groups.items():
                rank = elastic.ranks[group]
                for module in modules:  # forward and backward used that rank: no gradient above it
                    assert float(getattr(module, RANK_MASK).sum()) == rank
                    grad = module.lora_A["default"].weight.grad
                    assert grad is not None and bool((grad[rank:] == 0).all())
        steps.append(seen[-2] == seen[-1])
        pipe.finish_update(optimizer)
    assert all(steps)  # both updates of a step saw the same ranks
    configs = {tuple(sorted(r.items())) for r in seen}
    assert len(configs) > 1 and {r for c in seen for r in c.values()} == {8, 4, 2}
    texts = [t for t, _ in MEMORIZED]
    predicted = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in nlp.pipe(texts)]
    assert pipe.shim.elastic.ranks == pipe.shim.elastic.maximal()  # predictions use the whole super-adapter
    nlp.to_disk(tmp_path / "elastic")
    again = spacy.load(tmp_path / "elastic")
    shim = again.get_pipe("padellm_ner").shim
    assert shim.elastic is not None and shim.elastic.choices == [8, 4, 2]
    assert [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in again.pipe(texts)] == predicted
    if decoding == "parallel":
        check_search_command(tmp_path / "elastic", examples, tmp_path)


def check_search_command(pipeline, examples, tmp_path):
    """`search-adapter` on the trained super-adapter: it reports every trial,
    and its pipeline's sliced adapter predicts what the super-adapter did at
    the chosen ranks."""
    import json

    from spacy.tokens import DocBin

    from spacy_padellm.cli import main

    DocBin(docs=[eg.reference for eg in examples], store_user_data=True).to_disk(tmp_path / "dev.spacy")
    main(["search-adapter", str(pipeline), str(tmp_path / "dev.spacy"), "--budget", "3", "--output", str(tmp_path / "search")])
    report = json.loads((tmp_path / "search" / "search.json").read_text())
    assert len(report["trials"]) == 3 and report["trials"][0]["ranks"] == {g: 4 for g in report["best"]["ranks"]}
    assert report["best"]["score"] == max(t["score"] for t in report["trials"])
    searched = spacy.load(tmp_path / "search" / "pipeline")
    assert searched.get_pipe("padellm_ner").shim.elastic is None  # a plain LoRA now
    super_nlp = spacy.load(pipeline)
    super_nlp.get_pipe("padellm_ner").shim.prediction_ranks = report["best"]["ranks"]
    texts = [eg.reference.text for eg in examples]
    expected = [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in super_nlp.pipe(texts)]
    assert [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in searched.pipe(texts)] == expected


def test_the_search_keeps_the_global_best_and_its_budget():
    from spacy_padellm.models.adapter_search import hill_climb

    scores = {(2, 2): 0.9}  # the median is best; every move makes it worse

    def evaluate(ranks):
        key = (ranks["a"], ranks["b"])
        return scores.get(key, 0.5 + 0.01 * sum(key))

    result = hill_climb(evaluate, {"a": 2, "b": 2}, [1, 2, 3], budget=7)
    assert result.best.ranks == {"a": 2, "b": 2} and result.best.score == 0.9
    assert len(result.trials) == 7 and len({tuple(sorted(t.ranks.items())) for t in result.trials}) == 7
    assert result.trials[-1].score < result.best.score  # the last turn moved away from the best


def test_a_sliced_sub_adapter_computes_what_the_super_adapter_did(tiny_model_dir, tmp_path):
    from peft import PeftModel

    from spacy_padellm.models.adapter_search import slice_adapter

    model = super_adapter(tiny_model_dir, seed=1)
    model.save_pretrained(tmp_path / "super")
    elastic = ElasticAdapter(model, [8, 4, 2])
    ranks = {g: [8, 4, 2][i % 3] for i, g in enumerate(sorted(elastic.groups))}
    elastic.use(ranks)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    sliced = slice_adapter(tmp_path / "super", elastic.ranks_by_module(ranks), tmp_path / "sub")
    sub = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(sliced)).eval()
    with torch.no_grad():
        got = sub(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    sizes = {n: p.shape[0] for n, p in sub.named_parameters() if "lora_A" in n}
    assert sorted(set(sizes.values())) == [2, 4, 8]
