"""Fixtures for the loader tests: LoRA adapters for the tiny model (and one
for a base of another size), and the tiny model as a GGUF file, all written
at test time."""
import json
import warnings
from pathlib import Path

import pytest


def save_adapter(base_dir_or_model, path: Path, seed: int = 1) -> Path:
    """A LoRA adapter with non-zero weights (a fresh one is the identity)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = base_dir_or_model
    if isinstance(base, (str, Path)):
        base = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' is_gradient_checkpointing
        peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return save_adapter(tiny_model_dir, tmp_path_factory.mktemp("tiny-adapter"))


@pytest.fixture(scope="session")
def tied_model_dir(tmp_path_factory) -> Path:
    """The tiny model with tied input and output embeddings, as SmolLM2 has:
    loading two of these at once without the load lock failed every time
    ("Cannot copy out of meta tensor")."""
    from ..conftest import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-tied"), tie=True)


@pytest.fixture(scope="session")
def tied_adapter_dir(tied_model_dir, tmp_path_factory) -> Path:
    return save_adapter(tied_model_dir, tmp_path_factory.mktemp("tied-adapter"))


@pytest.fixture(scope="session")
def other_base_adapter_dir(tmp_path_factory) -> Path:
    """An adapter trained for a base with other layer sizes than the tiny
    model's (hidden size 32 instead of 64)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=400, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=256,
    )
    return save_adapter(LlamaForCausalLM(config), tmp_path_factory.mktemp("other-adapter"))


@pytest.fixture
def copy_of(tmp_path):
    """copy_of(directory): a copy to damage."""
    import shutil

    def copy(directory: Path) -> Path:
        target = tmp_path / f"copy-{directory.name}"
        shutil.copytree(directory, target)
        return target

    return copy


def write_tiny_gguf(model_dir: Path, path: Path, *, layers: int = 2, seed: int = 0) -> Path:
    """The tiny model's architecture and tokenizer as a GGUF file, its
    matrices quantized to Q8_0 (so loading de-quantizes, as for the default
    model), with random weights."""
    import gguf
    import numpy as np

    spec = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    eos = vocab["<|endoftext|>"]
    hidden, inter, heads, kv_heads = 64, 128, 4, 2
    head_dim = hidden // heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token == "<|endoftext|>" else 1 for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(eos)
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int) -> None:
        values = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if len(shape) == 2:
            quantized = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, quantized, raw_shape=quantized.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values + 1.0)

    tensor("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", hidden)
        tensor(f"blk.{i}.ffn_norm.weight", hidden)
        tensor(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        tensor(f"blk.{i}.ffn_gate.weight", inter, hidden)
        tensor(f"blk.{i}.ffn_up.weight", inter, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, inter)
    tensor("output_norm.weight", hidden)
    tensor("output.weight", len(tokens), hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return path


TINY_GGUF = "tiny.Q8_0.gguf"


@pytest.fixture(scope="session")
def tiny_gguf_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A directory holding TINY_GGUF and nothing else."""
    directory = tmp_path_factory.mktemp("tiny-gguf")
    write_tiny_gguf(tiny_model_dir, directory / TINY_GGUF)
    return directory
