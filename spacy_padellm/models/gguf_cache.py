"""The de-quantized weights of a GGUF file, converted once per user.

transformers de-quantizes a GGUF file and rebuilds its tokenizer on every
load: about 20 s for the default SmolLM2-135M file on a 2-core CPU, against
well under a second for the same weights as safetensors. The first load of a
GGUF file therefore also writes the converted model (float32 weights,
config, generation config, tokenizer) to

    $SPACY_PADELLM_CACHE/gguf/<file stem>-<key hash>/   (if set)
    ~/.cache/spacy_padellm/gguf/<file stem>-<key hash>/ (otherwise)

and later loads read that. The key covers the GGUF file's content (sha256)
and the torch, transformers and gguf versions that converted it (another
version could convert differently), and is written next to the weights
(`cache_key.json`). `SPACY_PADELLM_NO_CACHE=1` switches the cache off.

An entry is written into a temporary directory and renamed into place, so
another process sees it whole or not at all; when two processes convert at
once, the first rename wins and the other uses its entry. The cache only
ever saves time: when it cannot be written or read the model loads from the
GGUF file as before, and the reason is logged at INFO level, never raised.
"""
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

logger = logging.getLogger("spacy_padellm")

CACHE_ENV = "SPACY_PADELLM_CACHE"
NO_CACHE_ENV = "SPACY_PADELLM_NO_CACHE"
KEY_FILE = "cache_key.json"
WEIGHTS_FILE = "model.safetensors"
# What a converted entry must hold besides its key file.
ENTRY_FILES = (WEIGHTS_FILE, "config.json")
# Bump when what an entry holds changes, so old entries are not read.
FORMAT = 1


def cache_root() -> Optional[Path]:
    """The cache directory, or None when the cache is switched off."""
    if os.environ.get(NO_CACHE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    configured = os.environ.get(CACHE_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "spacy_padellm"


def cache_key(gguf_path: Path) -> Dict[str, Any]:
    """What the converted weights depend on."""
    import torch
    import transformers

    digest = hashlib.sha256()
    with gguf_path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return {
        "format": FORMAT,
        "gguf_sha256": digest.hexdigest(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf": _version("gguf"),
    }


def entry_dir(root: Path, gguf_path: Path, key: Dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf8")).hexdigest()[:16]
    return root / "gguf" / f"{gguf_path.stem}-{digest}"


def converted_dir(gguf_path: Path, convert: Callable[[], Tuple[Any, Any]]) -> Optional[Path]:
    """The cache entry of `gguf_path`, written on a miss from what `convert`
    returns (the model in float32 and its tokenizer, loaded from the GGUF
    file). None when the cache is off or cannot be used; errors of `convert`
    itself propagate, as they would from the normal load."""
    root = cache_root()
    if root is None:
        return None
    try:
        key = cache_key(gguf_path)
    except OSError as err:
        logger.info("Not caching the converted %s: cannot read it (%s)", gguf_path, err)
        return None
    entry = entry_dir(root, gguf_path, key)
    if is_complete(entry, key):
        logger.info("Loading the converted %s from the cache %s", gguf_path.name, entry)
        return entry
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    except OSError as err:
        logger.info("Not caching the converted %s: cannot write to %s (%s)", gguf_path.name, entry.parent, err)
        return None
    try:
        logger.info("Converting %s once; the result is cached in %s", gguf_path.name, entry)
        model, tokenizer = convert()
        try:
            write_entry(tmp, model, tokenizer, key, gguf_path)
            return publish(tmp, entry, key)
        except Exception as err:  # a full disk, a race lost twice, ...: the cache only saves time
            logger.info(
                "Could not cache the converted %s in %s (%s); loading it from the GGUF file", gguf_path.name, entry, err
            )
            return None
        finally:
            del model, tokenizer
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_entry(directory: Path, model: Any, tokenizer: Any, key: Dict[str, Any], gguf_path: Path) -> None:
    """Everything `from_pretrained` needs, the key file last."""
    from safetensors.torch import save_model

    # save_model, unlike save_file, handles tied embeddings; and
    # `model.save_pretrained` refuses a model loaded from GGUF.
    save_model(model, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    config = model.config.to_dict()
    # The weights are de-quantized: what is cached is an ordinary float model.
    config.pop("quantization_config", None)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf8")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    record = {**key, "converted_from": str(gguf_path)}
    (directory / KEY_FILE).write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf8")


def build_entry(entry: Path, key: Dict[str, Any], files: Sequence[str], write: Callable[[Path], None]) -> Path:
    """The cache entry `entry` under `key`, holding `files`: as it is when
    complete, else written by `write(directory)` into a temporary sibling,
    the key file added, and published (another process may win the race;
    its entry is used). Errors of `write` propagate."""
    if is_complete(entry, key, files):
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        write(tmp)
        (tmp / KEY_FILE).write_text(json.dumps(key, sort_keys=True), encoding="utf8")
        return publish(tmp, entry, key, files)
    finally:  # gone already when published; left when another process won
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, entry: Path, key: Dict[str, Any], files: Sequence[str] = ENTRY_FILES) -> Path:
    """Rename the written entry into place; if another process got there
    first, use its entry; a damaged one in the way is moved aside. `files`:
    what a complete entry holds (see `is_complete`)."""
    try:
        os.rename(tmp, entry)
        return entry
    except OSError:
        if is_complete(entry, key, files):
            return entry
    discard(entry)
    os.rename(tmp, entry)
    return entry


def is_complete(entry: Path, key: Dict[str, Any], files: Sequence[str] = ENTRY_FILES) -> bool:
    """Whether `entry` was written under `key` and holds `files` (the
    converted model's by default; other caches, such as the llama.cpp
    exports, name theirs)."""
    try:
        record = json.loads((entry / KEY_FILE).read_text(encoding="utf8"))
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in key.items()):
        return False
    return all((entry / name).is_file() for name in files)


def discard(entry: Path) -> None:
    """Remove a damaged entry, so that the next load writes it again. It is
    renamed first, so no reader sees it half deleted."""
    if not entry.exists():
        return
    try:
        trash = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".discarded", dir=entry.parent))
        os.rename(entry, trash / entry.name)
    except OSError as err:
        logger.info("Could not remove the damaged cache entry %s (%s)", entry, err)
        return
    shutil.rmtree(trash, ignore_errors=True)


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
