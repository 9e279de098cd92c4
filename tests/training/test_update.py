"""Training through spaCy: update with spaCy's optimizer, and `spacy train`."""
import json
from pathlib import Path

import pytest
import spacy
import torch
from spacy.training import Example
from thinc.api import Adam

from ..conftest import MEMORIZED, make_nlp, memorized_gold_docs

ROOT = Path(__file__).parents[2]


def examples_for(nlp):
    return [Example(nlp.make_doc(ref.text), ref) for ref in memorized_gold_docs(nlp)]


def train(nlp, examples, steps, lr):
    optimizer = Adam(lr, use_averages=False)
    history = []
    for _ in range(steps):
        history.append(nlp.update(examples, sgd=optimizer)["padellm_ner"])
    return history


def test_full_fine_tuning_lowers_loss_and_moves_predictions_to_gold(tiny_model_dir):
    nlp = make_nlp(tiny_model_dir, labels=None)
    nlp.get_pipe("padellm_ner").shim.fine_tuning.mode = "full"
    examples = examples_for(nlp)
    nlp.initialize(lambda: examples)
    before = nlp.evaluate(examples)["spans_padellm_f"]
    history = train(nlp, examples, 100, 0.01)
    after = nlp.evaluate(examples)["spans_padellm_f"]
    assert history[-1] < history[0] / 3
    assert after > before and after >= 0.5


def test_lora_trains_only_the_adapter_and_saves_only_it(tiny_model_dir, tmp_path):
    nlp = make_nlp(tiny_model_dir, labels=["LOC", "MISC", "PER"])
    examples = examples_for(nlp)
    nlp.initialize(lambda: examples)
    pipe = nlp.get_pipe("padellm_ner")
    base_before = {k: v.clone() for k, v in pipe.shim.model.state_dict().items()}
    history = train(nlp, examples, 15, 0.01)
    assert pipe.shim.has_adapter
    assert history[-1] < history[0]
    state = pipe.shim.model.state_dict()
    changed = [k for k in state if "lora_" in k and k not in base_before]
    assert changed, "the adapter was created"
    frozen = [k for k, v in base_before.items() if "lora_" not in k]
    base_keys = {k.replace("base_model.model.", "").replace(".base_layer", ""): k for k in state}
    assert all((state[base_keys[k]] == base_before[k]).all() for k in frozen if k in base_keys)
    predictions = [[(s.start, s.end, s.label_) for s in d.spans["padellm"]] for d in nlp.pipe([t for t, _ in MEMORIZED])]
    nlp.to_disk(tmp_path / "p")
    saved = tmp_path / "p" / "padellm_ner" / "model"
    assert (saved / "adapter" / "adapter_model.safetensors").exists()
    assert not (saved / "weights.safetensors").exists()
    loaded = spacy.load(tmp_path / "p")
    assert [[(s.start, s.end, s.label_) for s in d.spans["padellm"]] for d in loaded.pipe([t for t, _ in MEMORIZED])] == predictions


def _logits_and_merged(shim, text):
    ids = torch.tensor([shim.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        logits = shim.model(input_ids=ids).logits
    return logits, any(getattr(m, "merged", False) for m in shim.model.modules())


def test_adapter_is_merged_for_inference_and_unmerged_for_training(tiny_model_dir, tmp_path):
    nlp = make_nlp(tiny_model_dir, labels=["LOC", "MISC", "PER"])
    examples = examples_for(nlp)
    nlp.initialize(lambda: examples)
    train(nlp, examples, 10, 0.01)
    texts = [text for text, _ in MEMORIZED]
    list(nlp.pipe(texts))  # predicting between updates, as spacy train's evaluation does
    assert not _logits_and_merged(nlp.get_pipe("padellm_ner").shim, texts[0])[1], "never merged while training"
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    shim = loaded.get_pipe("padellm_ner").shim
    unmerged, merged = _logits_and_merged(shim, texts[0])
    assert not merged
    list(loaded.pipe(texts))
    after_predict, merged = _logits_and_merged(shim, texts[0])
    assert merged and torch.allclose(after_predict, unmerged, atol=1e-4)
    # Saved while merged: the adapter alone is written, so a reload computes
    # the same function, not the adapter applied twice.
    loaded.to_disk(tmp_path / "q")
    again = spacy.load(tmp_path / "q").get_pipe("padellm_ner").shim
    assert torch.allclose(_logits_and_merged(again, texts[0])[0], unmerged, atol=1e-4)
    # The pipe's own update with no optimizer: a gradient, no step.
    loaded.get_pipe("padellm_ner").update(examples_for(loaded), sgd=None)
    shim.model.eval()
    after_unmerge, merged = _logits_and_merged(shim, texts[0])
    assert not merged and torch.allclose(after_unmerge, unmerged, atol=1e-4)


def test_fully_fine_tuned_weights_are_never_merged(tiny_model_dir, tmp_path):
    """A model with an adapter and fully fine-tuned weights saves its base
    weights, so merging before a save would apply the adapter twice."""
    nlp = make_nlp(tiny_model_dir, labels=["LOC", "MISC", "PER"])
    examples = examples_for(nlp)
    nlp.initialize(lambda: examples)
    train(nlp, examples, 5, 0.01)  # LoRA
    nlp.to_disk(tmp_path / "lora")
    tuned = spacy.load(tmp_path / "lora")
    tuned.get_pipe("padellm_ner").shim.fine_tuning.mode = "full"
    train(tuned, examples_for(tuned), 3, 0.01)
    tuned.to_disk(tmp_path / "full")
    loaded = spacy.load(tmp_path / "full")
    shim = loaded.get_pipe("padellm_ner").shim
    assert shim.has_adapter and shim._full_weights
    before, _ = _logits_and_merged(shim, MEMORIZED[0][0])
    list(loaded.pipe([text for text, _ in MEMORIZED]))
    after, merged = _logits_and_merged(shim, MEMORIZED[0][0])
    assert not merged and torch.equal(before, after)
    loaded.to_disk(tmp_path / "again")
    reloaded = spacy.load(tmp_path / "again").get_pipe("padellm_ner").shim
    assert torch.allclose(_logits_and_merged(reloaded, MEMORIZED[0][0])[0], before, atol=1e-5)


def test_update_skips_empty_docs(tiny_model_dir):
    nlp = make_nlp(tiny_model_dir)
    nlp.initialize()
    doc = nlp.make_doc("   ")
    assert nlp.update([Example(doc, doc.copy())])["padellm_ner"] == 0.0


def write_jsonl(path: Path) -> Path:
    with path.open("w", encoding="utf8") as f:
        for text, gold in MEMORIZED:
            words = text.split(" ")
            row = [text]
            for label, mentions in gold.items():
                pos = 0
                for mention in mentions:
                    n = len(mention.split(" "))
                    start = next(i for i in range(pos, len(words)) if " ".join(words[i : i + n]) == mention)
                    row.append([start, start + n - 1, mention, label])
                    pos = start + 1
            f.write(json.dumps(row) + "\n")
    return path


def tiny_train_overrides(data: Path, model_dir: Path, settings: dict) -> dict:
    """`spacy train` overrides for a shipped config: the tiny model instead of
    the GGUF package, `data` as train and dev, a constant learning rate and
    small batches, then `settings` on top."""
    overrides = {
        "paths.train": str(data),
        "paths.dev": str(data),
        "components.padellm_ner.model.name": str(model_dir),
        "components.padellm_ner.model.package": None,
        "components.padellm_ner.model.gguf_file": None,
        "training.optimizer.learn_rate": 0.01,
        "training.batcher.size": 3,
    }
    overrides.update(settings)
    return overrides


def test_spacy_train_end_to_end_on_tiny_model(tiny_model_dir, tmp_path):
    from spacy.cli.evaluate import evaluate
    from spacy.cli.train import train as spacy_train

    data = write_jsonl(tmp_path / "train.jsonl")
    overrides = tiny_train_overrides(data, tiny_model_dir, {
        "components.padellm_ner.model.fine_tuning": "full",
        "training.max_steps": 30,
        "training.eval_frequency": 15,
    })
    spacy_train(ROOT / "configs" / "smollm2_lora_cpu.cfg", tmp_path / "out", overrides=overrides)
    best = tmp_path / "out" / "model-best"
    assert (best / "padellm_ner" / "model" / "weights.safetensors").exists()
    nlp = spacy.load(best)
    assert nlp.get_pipe("padellm_ner").labels == ("LOC", "MISC", "PER")
    from spacy.tokens import DocBin

    reader = spacy.registry.readers.get("spacy_padellm.JsonlCorpus.v1")(data)
    DocBin(docs=[eg.reference for eg in reader(nlp)], store_user_data=True).to_disk(tmp_path / "dev.spacy")
    scores = evaluate(best, tmp_path / "dev.spacy")
    assert "ents_f" in scores and "spans_padellm_f" in scores


def test_full_fine_tuning_saves_tied_embeddings(tmp_path):
    from ..conftest import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tied", tie=True)
    nlp = make_nlp(model_dir, labels=["LOC", "MISC", "PER"])
    nlp.get_pipe("padellm_ner").shim.fine_tuning.mode = "full"
    examples = examples_for(nlp)
    nlp.initialize(lambda: examples)
    train(nlp, examples, 3, 0.01)
    before = [[(s.start, s.end, s.label_) for s in d.spans["padellm"]] for d in nlp.pipe([t for t, _ in MEMORIZED])]
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    pipe = loaded.get_pipe("padellm_ner")
    after = [[(s.start, s.end, s.label_) for s in d.spans["padellm"]] for d in loaded.pipe([t for t, _ in MEMORIZED])]
    assert after == before
    original = nlp.get_pipe("padellm_ner").shim.model.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in pipe.shim.model.state_dict().items())


def test_full_fine_tuning_rejects_bfloat16(tiny_model_dir):
    nlp = make_nlp(tiny_model_dir)
    nlp.get_pipe("padellm_ner").model.shims[0].dtype = "bfloat16"
    nlp.get_pipe("padellm_ner").shim.fine_tuning.mode = "full"
    examples = examples_for(nlp)
    nlp.initialize(lambda: examples)
    with pytest.raises(ValueError, match="E2022"):
        nlp.update(examples)
