"""`spacy_padellm.LocalCausalLM.v1` as a spacy-llm model."""
import pytest
import spacy
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

spacy_llm = pytest.importorskip("spacy_llm")


def test_registered_in_spacy_llm_models():
    from spacy_llm.registry import registry

    assert registry.llm_models.get("spacy_padellm.LocalCausalLM.v1") is not None


def test_responses_keep_spacy_llms_nesting_and_equal_greedy_generate(tiny_model_dir):
    from spacy_llm.registry import registry

    make = registry.llm_models.get("spacy_padellm.LocalCausalLM.v1")
    llm = make(name=str(tiny_model_dir), device="cpu", max_new_tokens=6, batch_size=2)
    prompts = [["Japan began the defence"], ["China beat", "Nadim Ladki reported from Al-Ain , United Arab"]]
    responses = llm(prompts)
    assert [len(r) for r in responses] == [1, 2]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for doc_prompts, doc_responses in zip(prompts, responses):
        for prompt, response in zip(doc_prompts, doc_responses):
            ids = tokenizer(prompt, return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            assert response == tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert llm.generated_tokens > 0


def test_runs_spacy_llms_ner_task(tiny_model_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "llm",
        config={
            "task": {"@llm_tasks": "spacy.NER.v3", "labels": ["PER", "LOC"]},
            "model": {"@llm_models": "spacy_padellm.LocalCausalLM.v1", "name": str(tiny_model_dir),
                      "device": "cpu", "max_new_tokens": 8},
        },
    )
    doc = nlp("Japan began the defence of their Asian Cup title .")
    # A random tiny model writes no parseable entity; the task ran through it.
    assert all(ent.label_ in {"PER", "LOC"} for ent in doc.ents)
    assert nlp.get_pipe("llm")._model.generated_tokens > 0


def test_adapter_is_folded_into_the_base(tiny_model_dir, tmp_path):
    """This model only predicts, so a LoRA adapter is merged and unloaded:
    a plain model computing what the adapter-wrapped one computes."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from spacy_llm.registry import registry

    torch.manual_seed(0)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # peft starts B at zero: make the adapter matter
    peft_model.save_pretrained(tmp_path / "adapter")
    llm = registry.llm_models.get("spacy_padellm.LocalCausalLM.v1")(
        name=str(tiny_model_dir), device="cpu", adapter=str(tmp_path / "adapter")
    )
    assert not hasattr(llm.model, "peft_config")
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([AutoTokenizer.from_pretrained(tiny_model_dir)("Japan began the defence .")["input_ids"]])
    with torch.no_grad():
        merged, wrapped, plain = (m(input_ids=ids).logits for m in (llm.model, reference, base))
    assert torch.allclose(merged, wrapped, atol=1e-5)
    assert not torch.allclose(merged, plain, atol=1e-3)
