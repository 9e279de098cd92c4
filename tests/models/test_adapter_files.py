"""A damaged or mismatched LoRA adapter fails before the base model loads,
with a short coded error that names the file and says what to do."""
import json

import pytest
import torch

from spacy_padellm.models import loader
from spacy_padellm.models.adapter_files import check_adapter_dir, safetensors_shapes
from spacy_padellm.models.hf_calls import hf_call
from spacy_padellm.models.loader import ModelSource, load_model

from .conftest import TINY_GGUF


@pytest.fixture
def no_base_load(monkeypatch):
    """Fail the test if the base model's weights start to load."""

    def refuse(*args, **kwargs):
        raise AssertionError("the base model was loaded before the adapter was checked")

    monkeypatch.setattr(loader, "_load_base_files", refuse)


def test_good_adapter_loads_and_changes_the_model(tiny_model_dir, tiny_adapter_dir):
    files = check_adapter_dir(str(tiny_adapter_dir))
    assert files.weights.name == "adapter_model.safetensors"
    assert files.shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == (4, 64)
    model, _ = load_model(ModelSource(name=str(tiny_model_dir)), "float32", "cpu", str(tiny_adapter_dir))
    assert model.peft_config["default"].r == 4


@pytest.mark.parametrize(
    "content,reason",
    [('{"peft_type": "LORA", "r": ', "not valid JSON"), ("[1, 2]", "JSON list"), ('{"r": 4}', "peft_type")],
)
def test_damaged_config(tiny_model_dir, tiny_adapter_dir, copy_of, no_base_load, content, reason):
    adapter = copy_of(tiny_adapter_dir)
    (adapter / "adapter_config.json").write_text(content)
    with pytest.raises(ValueError, match=f"E2050.*adapter_config.json.*{reason}.*save the adapter again") as info:
        load_model(ModelSource(name=str(tiny_model_dir)), "float32", "cpu", str(adapter))
    assert str(adapter) in str(info.value)


def test_missing_weights_file(tiny_model_dir, tiny_adapter_dir, copy_of, no_base_load):
    adapter = copy_of(tiny_adapter_dir)
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"E2051.*adapter_model.safetensors or adapter_model.bin.*adapter_config.json"):
        load_model(ModelSource(name=str(tiny_model_dir)), "float32", "cpu", str(adapter))


@pytest.mark.parametrize("keep", [4, 8 + 20, -100])
def test_truncated_safetensors(tiny_model_dir, tiny_adapter_dir, copy_of, no_base_load, keep):
    """Cut inside the header length, inside the header, inside the data."""
    adapter = copy_of(tiny_adapter_dir)
    weights = adapter / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:keep])
    with pytest.raises(ValueError, match="E2052.*adapter_model.safetensors.*truncated.*Copy the file again"):
        load_model(ModelSource(name=str(tiny_model_dir)), "float32", "cpu", str(adapter))


def test_safetensors_header_with_wrong_sizes(tiny_adapter_dir, copy_of):
    adapter = copy_of(tiny_adapter_dir)
    weights = adapter / "adapter_model.safetensors"
    data = weights.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [s * 2 for s in header[name]["shape"]]
    new_header = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    assert len(new_header) == length
    weights.write_bytes(data[:8] + new_header + data[8 + length :])
    with pytest.raises(ValueError, match="E2052.*bytes for shape"):
        safetensors_shapes(weights)


def test_torch_pickled_adapter_is_checked_too(tiny_model_dir, tiny_adapter_dir, copy_of):
    from safetensors.torch import load_file

    adapter = copy_of(tiny_adapter_dir)
    weights = adapter / "adapter_model.safetensors"
    torch.save(load_file(str(weights)), adapter / "adapter_model.bin")
    weights.unlink()
    files = check_adapter_dir(str(adapter))
    assert files.shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == (4, 64)
    (adapter / "adapter_model.bin").write_bytes((adapter / "adapter_model.bin").read_bytes()[:500])
    with pytest.raises(ValueError, match="E2052.*adapter_model.bin"):
        check_adapter_dir(str(adapter))


def test_adapter_for_another_base_fails_before_loading(tiny_model_dir, other_base_adapter_dir, no_base_load):
    with pytest.raises(ValueError) as info:
        load_model(ModelSource(name=str(tiny_model_dir)), "float32", "cpu", str(other_base_adapter_dir))
    message = str(info.value)
    assert message.startswith("[E2053]")
    assert str(other_base_adapter_dir) in message and str(tiny_model_dir) in message
    # 2 layers x (q_proj, v_proj, down_proj) x (A, B), each of another size
    assert "12 of its 12 tensors" in message
    assert "model.layers.0.mlp.down_proj: lora_A has shape [4, 64], the base layer takes 128 inputs" in message
    assert len(message) < 800


def test_adapter_for_another_base_on_a_gguf_base_fails_before_peft(
    tiny_gguf_dir, other_base_adapter_dir, monkeypatch
):
    """Without the cache, a GGUF base's config is not read twice: the loaded
    base is compared, and peft never sees the adapter."""
    import peft

    monkeypatch.setenv("SPACY_PADELLM_NO_CACHE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("peft loaded a mismatched adapter")

    monkeypatch.setattr(peft.PeftModel, "from_pretrained", refuse)
    source = ModelSource(name=str(tiny_gguf_dir), gguf_file=TINY_GGUF)
    with pytest.raises(ValueError, match=r"E2053.*12 of its 12 tensors"):
        load_model(source, "float32", "cpu", str(other_base_adapter_dir))


def test_peft_size_mismatch_is_shortened(tiny_model_dir, other_base_adapter_dir):
    """Where the shapes could not be compared first, peft's RuntimeError
    (one "size mismatch" line per tensor) becomes E2053."""
    from transformers import AutoModelForCausalLM

    adapter = check_adapter_dir(str(other_base_adapter_dir))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError) as info, hf_call():
        loader._wrap_with_adapter(base, adapter, "the tiny model")
    message = str(info.value)
    assert message.startswith("[E2053]") and "12 of its 12 tensors" in message
    assert "size mismatch" not in message and len(message) < 800
    assert info.value.__cause__ is None and info.value.__suppress_context__
