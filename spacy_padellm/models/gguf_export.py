"""Writing a Hugging Face Llama-architecture model (adapter merged) as GGUF.

llama.cpp reads GGUF only, and our models come as a Hugging Face base plus
a peft adapter. The merged weights are written with the `gguf` package (no
llama.cpp checkout, no conversion script). Two things differ from the
Hugging Face layout: tensor names (gguf's own name map), and the rows of
the query and key projections, which llama.cpp's RoPE expects interleaved
per head (as its converter permutes them); skipping that permutation loses
entities without any error.

The tokenizer is written too (llama.cpp refuses a model without one), but
the component tokenizes with the Hugging Face tokenizer and hands token ids
to llama.cpp, so only the vocabulary's size and ids must agree.
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy

from ..errors import Errors

EXPORT_TYPES = ("q8_0", "q4_0", "f16", "f32")


def _permute(weights: numpy.ndarray, n_head: int) -> numpy.ndarray:
    """Hugging Face's rotate-half RoPE rows, in llama.cpp's interleaved order."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _merges(tokenizer: Any) -> List[str]:
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"].get("merges", [])
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _tokens(tokenizer: Any, vocab_size: int) -> Dict[str, Any]:
    import gguf

    special = set(tokenizer.all_special_ids)
    added = set(tokenizer.get_added_vocab().values())
    tokens, types = [], []
    for i in range(vocab_size):
        token = tokenizer.convert_ids_to_tokens(i) if i < len(tokenizer) else None
        if token is None:  # embedding rows beyond the tokenizer (padding)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(
                gguf.TokenType.CONTROL if i in special else gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL
            )
    return {"tokens": tokens, "types": types}


def _q8_0_blocks(weight: numpy.ndarray, scales: numpy.ndarray) -> numpy.ndarray:
    """Q8_0 bytes of a weight on the grid `scales` ([out, in/32]): per block
    a float16 scale and 32 int8 levels, as gguf's own quantizer lays them out."""
    import torch

    from .qa_sparse_peft import quantize  # the very rounding training used

    rows, cols = weight.shape
    q = quantize(torch.from_numpy(weight), torch.from_numpy(scales)).numpy().astype(numpy.int8).reshape(rows, cols // 32, 32)
    packed = numpy.concatenate([scales.astype(numpy.float16)[..., None].view(numpy.uint8), q.view(numpy.uint8)], axis=-1)
    return packed.reshape(rows, cols // 32 * 34)


def _q4_0_blocks(weight: numpy.ndarray, scales: numpy.ndarray) -> numpy.ndarray:
    """Q4_0 bytes of a weight on the grid `scales`: per block a float16
    scale, then 16 bytes whose low nibbles hold levels 0-15 and high nibbles
    16-31, each stored as q + 8 (ggml's block_q4_0)."""
    import torch

    from .qa_sparse_peft import quantize

    rows, cols = weight.shape
    q = quantize(torch.from_numpy(weight), torch.from_numpy(scales), "q4_0").numpy().astype(numpy.int16) + 8
    q = q.astype(numpy.uint8).reshape(rows, cols // 32, 32)
    nibbles = q[..., :16] | (q[..., 16:] << 4)
    packed = numpy.concatenate([scales.astype(numpy.float16)[..., None].view(numpy.uint8), nibbles], axis=-1)
    return packed.reshape(rows, cols // 32 * 18)


def export_gguf(
    model: Any, tokenizer: Any, path: Path, out_type: str = "q8_0", name: str = "padellm", grid: Optional[Dict[str, Any]] = None,
    grid_type: str = "q8_0",
) -> Path:
    """Write `model` (a Hugging Face Llama-architecture causal LM, adapter
    merged) and `tokenizer` to the GGUF file `path`; 2D weights in
    `out_type` ("q8_0", "f16" or "f32"), norms in float32. "q4_0" writes
    the decoder layers' projections as Q4_0 blocks on the scales of least
    rounding error (`fitted_scales`; post-training 4 bits: a smaller,
    faster file, at a cost in F1 that the README measures) and the
    embeddings as Q8_0.

    grid: scales of grid `grid_type` ("q8_0" or "q4_0") by parameter name
    (a QA-SparsePEFT merge): those weights are written as blocks of that
    type on exactly these scales, whatever `out_type`, so llama.cpp reads
    back the weights training evaluated."""
    import gguf
    import torch

    if out_type not in EXPORT_TYPES:
        raise ValueError(Errors.E2087.format(value=out_type, options=list(EXPORT_TYPES)))
    config = model.config
    arch = getattr(config, "model_type", "?")
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    scaled = rope.get("rope_type", rope.get("type", "default")) != "default"
    if arch != "llama" or scaled:
        kind = f"{arch} (RoPE scaling {rope.get('rope_type')!r})" if scaled else arch
        raise ValueError(Errors.E2085.format(source=getattr(config, "_name_or_path", "the model"), arch=kind))
    rope_theta = float(getattr(config, "rope_theta", None) or rope.get("rope_theta", 10000.0))
    n_layers, n_head = config.num_hidden_layers, config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q8_0, "f16": gguf.GGMLQuantizationType.F16, "f32": gguf.GGMLQuantizationType.F32}[out_type]
    file_type = {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "f16": gguf.LlamaFileType.MOSTLY_F16, "f32": gguf.LlamaFileType.ALL_F32}[out_type]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    state = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
    vocab_size = state["model.embed_tokens.weight"].shape[0]
    if out_type == "q4_0" and not grid:  # post-training 4 bits: the projections on a grid fitted here
        from .qa_sparse_peft import fitted_scales

        grid_type = "q4_0"
        grid = {k: fitted_scales(torch.from_numpy(v), "q4_0") for k, v in state.items()
                if k.startswith("model.layers.") and v.ndim == 2}

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(vocab_size)
    writer.add_file_type(file_type)
    vocab = _tokens(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(_merges(tokenizer))
    for key, setter in (("eos_token_id", writer.add_eos_token_id), ("bos_token_id", writer.add_bos_token_id), ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(tokenizer, key, None)
        if isinstance(value, int):
            setter(value)
    writer.add_add_bos_token(False)

    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, data in state.items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the embeddings as the output layer
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(Errors.E2085.format(source=f"tensor {hf_name}", arch=arch))
        scales = None if grid is None or hf_name not in grid else grid[hf_name].detach().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
            scales = None if scales is None else _permute(scales, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
            scales = None if scales is None else _permute(scales, n_kv)
        if scales is not None and grid_type == "q4_0":
            writer.add_tensor(gguf_name, _q4_0_blocks(data, scales), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        elif scales is not None:
            writer.add_tensor(gguf_name, _q8_0_blocks(data, scales), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        elif data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name, data.astype(numpy.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gguf_name, data.astype(numpy.float16))
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _head_counts(base_gguf: Path) -> Dict[str, int]:
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))
    counts = {}
    for key in ("llama.attention.head_count", "llama.attention.head_count_kv", "llama.block_count"):
        field = reader.fields[key]
        counts[key.rsplit(".", 1)[-1]] = int(field.parts[field.data[0]][0])
    return counts


def export_lora_gguf(adapter_files: Dict[str, bytes], base_gguf: Path, path: Path, shown_as: str = "the adapter") -> Path:
    """Write a peft LoRA adapter (its `adapter_config.json` and
    `adapter_model.safetensors` bytes) as a GGUF LoRA that llama.cpp applies
    to `base_gguf` at run time. The `lora_B` rows of the query and key
    projections are permuted as the base's weights were; the peft scaling
    (alpha / r, or alpha / sqrt(r) with rsLoRA) goes into `adapter.lora.alpha`,
    which llama.cpp divides by the rank."""
    import gguf
    import torch
    from safetensors.torch import load as load_safetensors

    config = json.loads(adapter_files["adapter_config.json"].decode("utf8"))
    problems = [
        reason
        for reason, bad in (
            ("it uses DoRA", config.get("use_dora")),
            (f"it trains whole modules ({config.get('modules_to_save')})", config.get("modules_to_save")),
            (f"it trains biases ({config.get('bias')!r})", config.get("bias", "none") != "none"),
            ("its ranks or alphas differ per module", config.get("rank_pattern") or config.get("alpha_pattern")),
        )
        if bad
    ]
    if problems:
        raise ValueError(Errors.E2090.format(path=shown_as, reason="; ".join(problems)))
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scaling = alpha / rank**0.5 if config.get("use_rslora") else alpha / rank
    heads = _head_counts(base_gguf)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, heads["block_count"])
    tensors = {k: v.to(dtype=torch.float32).numpy() for k, v in load_safetensors(adapter_files["adapter_model.safetensors"]).items()}

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, scaling * rank)
    for peft_name, data in sorted(tensors.items()):
        for part, suffix in ((".lora_A.weight", "lora_a"), (".lora_B.weight", "lora_b")):
            if peft_name.endswith(part):
                module = peft_name[: -len(part)].removeprefix("base_model.model.")
                break
        else:
            raise ValueError(Errors.E2090.format(path=shown_as, reason=f"it holds {peft_name}, not a LoRA matrix"))
        gguf_name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(Errors.E2090.format(path=shown_as, reason=f"llama.cpp has no tensor for {module}"))
        if suffix == "lora_b" and module.endswith("q_proj"):
            data = _permute(data, heads["head_count"])
        elif suffix == "lora_b" and module.endswith("k_proj"):
            data = _permute(data, heads["head_count_kv"])
        writer.add_tensor(f"{gguf_name}.{suffix}", numpy.ascontiguousarray(data, dtype=numpy.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
