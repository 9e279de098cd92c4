"""Checking a LoRA adapter directory before it is loaded.

peft reads an adapter only after the base model has loaded (about 20 s for
the default model on a CPU), and its errors for a damaged adapter mislead: a
missing weights file becomes an `HFValidationError` about repository names,
an adapter trained for another base a `RuntimeError` with kilobytes of
"size mismatch" lines. These checks read only the adapter's config and the
header of its weights file, so they run before the base loads, and their
errors name the file and say what to do.
"""
import json
import logging
import re
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import Errors

logger = logging.getLogger("spacy_padellm")

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# Bytes per element of the safetensors dtypes an adapter can hold.
DTYPE_SIZES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
    "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
# The saved key of a LoRA matrix: base_model.model.<module>.<matrix>.weight
LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<matrix>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?$"
)

Shapes = Dict[str, Tuple[int, ...]]


@dataclass(frozen=True)
class AdapterFiles:
    """An adapter directory that passed the checks.

    shapes: the shape of every saved tensor, read from the weights file's
    header (None where the file could not be read without loading it).
    """

    directory: Path
    config: Dict[str, Any]
    weights: Path
    shapes: Optional[Shapes]

    @property
    def trained_on(self) -> str:
        """For messages: the base the adapter's config names, if any (what a
        user passed when training, so not reliable enough to compare)."""
        name = self.config.get("base_model_name_or_path")
        return f" (its adapter_config.json names {name!r})" if name else ""


def check_adapter_dir(path: str) -> AdapterFiles:
    """The adapter in directory `path`, or a coded error saying what is wrong."""
    directory = Path(path).expanduser()
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(Errors.E2014.format(path=path))
    config = _read_config(config_path)
    weights = next((directory / name for name in WEIGHTS_FILES if (directory / name).is_file()), None)
    if weights is None:
        files = sorted(p.name for p in directory.iterdir())
        raise ValueError(Errors.E2051.format(path=directory, files=files))
    if weights.suffix == ".safetensors":
        shapes: Optional[Shapes] = safetensors_shapes(weights)
    else:
        shapes = _bin_shapes(weights)
    return AdapterFiles(directory, config, weights, shapes)


def _read_config(path: Path) -> Dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(Errors.E2050.format(path=path, reason=f"not valid JSON ({err})")) from err
    if not isinstance(config, dict):
        raise ValueError(Errors.E2050.format(path=path, reason=f"a JSON {type(config).__name__} instead of an object"))
    if "peft_type" not in config:
        raise ValueError(Errors.E2050.format(path=path, reason="it has no `peft_type`, so it is not a peft adapter config"))
    return config


def safetensors_shapes(path: Path) -> Shapes:
    """The tensor shapes in a safetensors file, after checking that the file
    is as long as its header says (an interrupted copy leaves it short).

    Format: an 8-byte little-endian header length N, N bytes of JSON
    ({name: {"dtype", "shape", "data_offsets": [begin, end]}}), then the data,
    whose offsets count from the end of the header.
    """
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            reason = f"the file has {size} bytes, fewer than the 8 of a header length"
            raise ValueError(Errors.E2052.format(path=path, reason=reason))
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise ValueError(
                Errors.E2052.format(path=path, reason=f"the header should take {header_len} bytes, but the file has {size}")
            )
        try:
            header = json.loads(file.read(header_len))
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(Errors.E2052.format(path=path, reason=f"its header is not valid JSON ({err})")) from err
    if not isinstance(header, dict):
        raise ValueError(Errors.E2052.format(path=path, reason="its header is not a JSON object"))
    shapes: Shapes = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(int(n) for n in entry["shape"])
            begin, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(Errors.E2052.format(path=path, reason=f"its header entry for {name!r} is malformed")) from err
        width = DTYPE_SIZES.get(entry.get("dtype"))
        if width is not None and end - begin != prod(shape) * width:
            raise ValueError(
                Errors.E2052.format(path=path, reason=f"tensor {name!r} has {end - begin} bytes for shape {list(shape)}")
            )
        shapes[name] = shape
        data_end = max(data_end, end)
    expected = 8 + header_len + data_end
    if size < expected:
        raise ValueError(
            Errors.E2052.format(path=path, reason=f"the file has {size} bytes, its header describes {expected}")
        )
    return shapes


def _bin_shapes(path: Path) -> Optional[Shapes]:
    """Shapes from a torch-pickled adapter, read onto the meta device (no
    tensor data is loaded). A file torch cannot read is damaged."""
    import torch

    try:
        state = torch.load(str(path), map_location="meta", weights_only=True)
    except Exception as err:
        raise ValueError(Errors.E2052.format(path=path, reason=f"torch cannot read it ({err})")) from err
    if not isinstance(state, dict):
        return None
    return {name: tuple(t.shape) for name, t in state.items() if hasattr(t, "shape")}


def misfits(shapes: Shapes, model: Any) -> List[str]:
    """One line per LoRA matrix in `shapes` that does not fit `model`'s layer
    (wrong size, or no such layer). `model` is the base model, with real or
    meta weights: only the layers' sizes are read."""
    import torch

    problems = []
    for key, shape in sorted(shapes.items()):
        match = LORA_KEY.match(key)
        if not match:
            continue
        module_name, matrix = match["module"], match["matrix"]
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            problems.append(f"{module_name}: the base model has no such layer")
            continue
        if isinstance(module, torch.nn.Linear):
            expected_in, expected_out = module.in_features, module.out_features
        elif isinstance(module, torch.nn.Embedding):
            expected_in, expected_out = module.num_embeddings, module.embedding_dim
        else:
            continue
        if len(shape) != 2:
            problems.append(f"{key}: shape {list(shape)} is not a matrix")
        elif matrix in ("lora_A", "lora_embedding_A") and shape[1] != expected_in:
            problems.append(f"{module_name}: {matrix} has shape {list(shape)}, the base layer takes {expected_in} inputs")
        elif matrix in ("lora_B", "lora_embedding_B") and shape[0] != expected_out:
            problems.append(f"{module_name}: {matrix} has shape {list(shape)}, the base layer has {expected_out} outputs")
    return problems


def check_fits(adapter: AdapterFiles, model: Any, base: str) -> bool:
    """Raise E2053 when the adapter's LoRA matrices do not fit `model`.
    RETURNS (bool): whether the check could be made (the shapes were known)."""
    if adapter.shapes is None:
        return False
    problems = misfits(adapter.shapes, model)
    if problems:
        total = sum(1 for key in adapter.shapes if LORA_KEY.match(key))
        raise ValueError(
            Errors.E2053.format(
                path=adapter.directory, base=base, count=len(problems), total=total,
                example=problems[0], trained_on=adapter.trained_on,
            )
        )
    return True


def size_mismatch_error(err: Exception, adapter: AdapterFiles, base: str) -> Optional[ValueError]:
    """E2053 in place of peft's wall of "size mismatch for ..." lines (when
    the shapes could not be compared before loading); None for other errors."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip().startswith("size mismatch for")]
    if not lines:
        return None
    total = sum(1 for key in adapter.shapes if LORA_KEY.match(key)) if adapter.shapes else "?"
    example = lines[0].removeprefix("size mismatch for ")
    return ValueError(
        Errors.E2053.format(
            path=adapter.directory, base=base, count=len(lines), total=total, example=example, trained_on=adapter.trained_on
        )
    )
