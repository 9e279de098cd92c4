"""Round trips of the component: config, labels, adapter; base referenced."""

import pytest
import spacy
import srsly
import torch

from ..conftest import MEMORIZED, make_nlp

TEXTS = [t for t, _ in MEMORIZED]


def predictions(nlp):
    out = []
    for doc in nlp.pipe(TEXTS):
        group = doc.spans["padellm"]
        out.append([(s.start, s.end, s.label_, round(float(p), 4)) for s, p in zip(group, group.attrs["scores"])])
    return out


@pytest.fixture(scope="module")
def adapter_dir(memorized_model_dir, tmp_path_factory):
    """A LoRA adapter with non-zero weights, as peft saves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(memorized_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(path)
    return path


def test_to_disk_and_load_round_trip(memorized_model_dir, tmp_path):
    from spacy.training import Example

    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(memorized_model_dir)}, "max_count": 5})
    # Labels collected from data must survive the round trip.
    examples = []
    for text, gold in MEMORIZED:
        doc = nlp.make_doc(text)
        examples.append(Example(doc, doc.copy()))
        ents = []
        for label, mentions in gold.items():
            pos = 0
            for m in mentions:
                start = text.index(m, pos)
                ents.append(examples[-1].reference.char_span(start, start + len(m), label=label))
                pos = start + 1
        examples[-1].reference.spans["padellm"] = ents
    nlp.initialize(lambda: examples)
    assert nlp.get_pipe("padellm_ner").labels == ("LOC", "MISC", "PER")
    before = predictions(nlp)
    nlp.to_disk(tmp_path / "pipeline")
    meta = srsly.read_json(tmp_path / "pipeline" / "padellm_ner" / "model" / "model.json")
    assert meta["source"]["name"] == str(memorized_model_dir)
    assert not list((tmp_path / "pipeline").rglob("model.safetensors"))
    nlp2 = spacy.load(tmp_path / "pipeline")
    pipe2 = nlp2.get_pipe("padellm_ner")
    assert pipe2.labels == ("LOC", "MISC", "PER") and pipe2.cfg["max_count"] == 5
    assert predictions(nlp2) == before
    assert sum(map(len, before)) > 0
    # an inference setting overridden at load time wins over the saved one
    nlp3 = spacy.load(tmp_path / "pipeline", config={"components": {"padellm_ner": {"max_count": 1}}})
    pipe3 = nlp3.get_pipe("padellm_ner")
    assert pipe3.cfg["max_count"] == 1 and pipe3.labels == ("LOC", "MISC", "PER")
    assert all(len(spans) <= 3 for spans in predictions(nlp3))  # one per label at most


def test_adapter_is_applied_saved_and_reloaded(memorized_model_dir, adapter_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_cfg = {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(memorized_model_dir), "adapter": str(adapter_dir)}
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": model_cfg, "labels": ["PER", "LOC", "MISC"]})
    nlp.initialize()
    pipe = nlp.get_pipe("padellm_ner")
    assert pipe.shim.has_adapter
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(memorized_model_dir), adapter_dir).eval()
    plain = AutoModelForCausalLM.from_pretrained(memorized_model_dir).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ours = pipe.shim.model(input_ids=ids).logits
        assert torch.allclose(ours, reference(input_ids=ids).logits, atol=1e-5)
        assert not torch.allclose(ours, plain(input_ids=ids).logits, atol=1e-3)
    before = predictions(nlp)

    nlp.to_disk(tmp_path / "p")
    saved = tmp_path / "p" / "padellm_ner" / "model"
    assert (saved / "adapter" / "adapter_model.safetensors").exists()
    total = sum(f.stat().st_size for f in saved.rglob("*") if f.is_file())
    base_size = sum(p.numel() * 4 for p in plain.parameters())
    assert total < base_size / 4  # the base is referenced, not copied
    assert predictions(spacy.load(tmp_path / "p")) == before

    # to_bytes / from_bytes on a fresh pipeline built from the same config.
    data = nlp.to_bytes()
    nlp3 = spacy.blank("en")
    nlp3.add_pipe("padellm_ner", config={"model": {**model_cfg, "adapter": None}, "labels": ["PER"]})
    nlp3.from_bytes(data)
    assert nlp3.get_pipe("padellm_ner").labels == ("PER", "LOC", "MISC")
    assert nlp3.get_pipe("padellm_ner").shim.has_adapter
    assert predictions(nlp3) == before


def test_uninitialized_pipeline_round_trips_without_loading(tiny_model_dir, tmp_path):
    nlp = make_nlp(tiny_model_dir)
    nlp.to_disk(tmp_path / "p")
    nlp2 = spacy.load(tmp_path / "p")
    assert nlp2.get_pipe("padellm_ner").labels == ("PER", "LOC", "MISC")


def test_from_disk_without_cfg_fails_clearly(tiny_model_dir, tmp_path):
    nlp = make_nlp(tiny_model_dir)
    with pytest.raises(ValueError, match="E2017"):
        nlp.get_pipe("padellm_ner").from_disk(tmp_path / "missing")


def test_adapter_kept_when_saved_before_loading(memorized_model_dir, adapter_dir, tmp_path):
    model_cfg = {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(memorized_model_dir), "adapter": str(adapter_dir)}
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": model_cfg, "labels": ["PER", "LOC", "MISC"]})
    nlp.to_disk(tmp_path / "p")  # never initialized
    assert (tmp_path / "p" / "padellm_ner" / "model" / "adapter" / "adapter_model.safetensors").exists()
    loaded = spacy.load(tmp_path / "p")
    assert loaded.get_pipe("padellm_ner").shim.has_adapter
    nlp.initialize()
    assert predictions(loaded) == predictions(nlp)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_from_disk_with_a_damaged_cfg_names_the_file(tiny_model_dir, tmp_path, content):
    nlp = make_nlp(tiny_model_dir)
    nlp.to_disk(tmp_path / "p")
    (tmp_path / "p" / "padellm_ner" / "cfg").write_text(content)
    with pytest.raises(ValueError, match="E2072.*cfg"):
        spacy.load(tmp_path / "p")
