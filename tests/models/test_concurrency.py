"""Concurrent first use: several threads loading at once load each model
once, merge its adapter once, and compute what a sequential load computes.

Without the locks, two `from_pretrained` calls at once failed with "Cannot
copy out of meta tensor" (transformers patches process-wide torch state
while it builds a model), and threads sharing a pipeline each loaded the
model and merged the adapter again ("All adapters are already merged")."""
import threading
import warnings

import pytest
import torch

from spacy_padellm.models import shim as shim_module
from spacy_padellm.models.loader import ModelSource
from spacy_padellm.models.shim import CausalLMShim, FineTuning

THREADS = 4
TEXT = "Japan began the defence of their Asian Cup title ."


@pytest.fixture
def counts(monkeypatch):
    """How often a model was loaded and an adapter merged."""
    from peft.tuners.tuners_utils import BaseTuner

    calls = {"load": 0, "merge": 0}
    load_model, merge_adapter = shim_module.load_model, BaseTuner.merge_adapter

    def counting_load(*args, **kwargs):
        calls["load"] += 1
        return load_model(*args, **kwargs)

    def counting_merge(self, *args, **kwargs):
        calls["merge"] += 1
        return merge_adapter(self, *args, **kwargs)

    monkeypatch.setattr(shim_module, "load_model", counting_load)
    monkeypatch.setattr(BaseTuner, "merge_adapter", counting_merge)
    return calls


def new_shim(model_dir, adapter_dir):
    return CausalLMShim(ModelSource(name=str(model_dir)), adapter=str(adapter_dir), dtype="float32", device="cpu")


def logits(shim):
    ids = torch.tensor([shim.tokenizer(TEXT).input_ids])
    with torch.no_grad():
        return shim.model(input_ids=ids).logits


def run_at_once(target, arguments):
    """Start one thread per argument at the same moment; re-raise the first
    error any of them had."""
    barrier = threading.Barrier(len(arguments))
    results, errors = [None] * len(arguments), []

    def run(i):
        barrier.wait()
        try:
            results[i] = target(arguments[i])
        except BaseException as err:  # noqa: B902 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(arguments))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if errors:
        raise errors[0]
    return results


def sequential_logits(model_dir, adapter_dir):
    shim = new_shim(model_dir, adapter_dir)
    shim.load()
    shim.merge_for_inference()
    return logits(shim)


def test_threads_sharing_a_shim_load_and_merge_once(tied_model_dir, tied_adapter_dir, counts):
    shim = new_shim(tied_model_dir, tied_adapter_dir)

    def first_use(_):
        shim.load()
        shim.merge_for_inference()
        return logits(shim)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = run_at_once(first_use, list(range(THREADS)))
    assert counts == {"load": 1, "merge": 1}
    assert not [w for w in caught if "already merged" in str(w.message)]
    expected = sequential_logits(tied_model_dir, tied_adapter_dir)
    for result in results:
        assert torch.equal(result, expected)


def test_threads_loading_separate_shims_at_once(tied_model_dir, tied_adapter_dir, counts):
    shims = [new_shim(tied_model_dir, tied_adapter_dir) for _ in range(THREADS)]

    def first_use(shim):
        shim.load()
        shim.merge_for_inference()
        return logits(shim)

    results = run_at_once(first_use, shims)
    assert counts == {"load": THREADS, "merge": THREADS}
    expected = sequential_logits(tied_model_dir, tied_adapter_dir)
    for result in results:
        assert torch.equal(result, expected)


def test_training_setup_while_other_threads_load(tied_model_dir):
    """LoRA layers created while other pipelines load get their proper
    initialization (lora_A random, lora_B zero): transformers switches
    torch's init functions off process-wide while it builds a model."""
    lora = FineTuning(lora_target_modules=["q_proj", "v_proj", "down_proj"])
    training = CausalLMShim(ModelSource(name=str(tied_model_dir)), dtype="float32", device="cpu", fine_tuning=lora)
    training.load()
    loading = [CausalLMShim(ModelSource(name=str(tied_model_dir)), dtype="float32", device="cpu") for _ in range(THREADS - 1)]
    run_at_once(lambda job: job(), [shim.load for shim in loading] + [training.prepare_for_training])
    weights = {name: p for name, p in training.model.named_parameters() if "lora_" in name}
    assert weights and all(torch.isfinite(p).all() for p in weights.values())
    assert all(p.abs().sum() == 0 for name, p in weights.items() if "lora_B" in name)
    assert all(p.abs().sum() > 0 for name, p in weights.items() if "lora_A" in name)
    assert all(shim.is_loaded for shim in loading)


@pytest.mark.parametrize("shared", [True, False], ids=["one pipeline", "a pipeline each"])
def test_first_nlp_call_from_several_threads(tied_model_dir, tied_adapter_dir, counts, shared):
    import spacy

    def make():
        nlp = spacy.blank("en")
        model = {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(tied_model_dir),
                 "adapter": str(tied_adapter_dir), "device": "cpu", "dtype": "float32"}
        nlp.add_pipe("padellm_ner", config={"labels": ["PER", "LOC"], "max_count": 2, "max_mention_tokens": 4, "model": model})
        return nlp

    shared_nlp = make()
    pipelines = [shared_nlp if shared else make() for _ in range(THREADS)]
    docs = run_at_once(lambda nlp: nlp(TEXT), pipelines)
    n_models = 1 if shared else THREADS
    assert counts == {"load": n_models, "merge": n_models}
    expected = make()(TEXT)
    for doc in docs:
        assert [(e.text, e.label_) for e in doc.ents] == [(e.text, e.label_) for e in expected.ents]
        assert doc._.padellm["generated_tokens"] == expected._.padellm["generated_tokens"]
