"""The model side of the llama.cpp backend (`spacy_padellm.LlamaCpp.v1`).

It takes the same model sources as the torch backend and saves pipelines
the same way (a reference to the base, plus the adapter in peft's format),
so a pipeline trained on torch loads here with one config change. What it
runs is a GGUF file: the base with the adapter merged, written once by
`gguf_export.py` from the torch model and kept in the user's cache
(`$SPACY_PADELLM_CACHE/llama_cpp/`, keyed by the base files, the adapter's
bytes, the export type and the library versions). Later loads read the
cached file and the tokenizer saved beside it, and never load torch weights.
Entries are written and published as the GGUF conversion cache's are
(`gguf_cache.publish`), so concurrent first loads are safe.
"""
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import srsly
import torch

from ..errors import Errors
from .gguf_cache import _version, build_entry, cache_root
from .hf_calls import hf_call
from .loader import ModelSource, load_model, locate, logger
from .shim import ADAPTER_FILES, CausalLMShim, FineTuning, read_meta

MODEL_FILE = "model.gguf"
ENTRY_FILES = (MODEL_FILE, "tokenizer_config.json")
LORA_FILE = "adapter.gguf"
FORMAT = 2  # 2: adapters trained on a Q8_0/Q4_0 grid are written on that grid
LORA_MODES = ("merged", "runtime")


class LlamaCppShim(CausalLMShim):
    """Holds the GGUF file, the tokenizer and the llama.cpp engine."""

    def __init__(
        self,
        source: ModelSource,
        *,
        adapter: Optional[str] = None,
        export: str = "q8_0",
        lora: str = "merged",
        n_ctx: int = 8192,
        n_threads: Optional[int] = None,
        fine_tuning: Optional[FineTuning] = None,
    ) -> None:
        super().__init__(source, adapter=adapter, dtype="float32", device="cpu", fine_tuning=fine_tuning)
        self.export = export
        self.lora = lora
        self.lora_path: Optional[Path] = None  # the GGUF LoRA applied at run time
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.gguf_path: Optional[Path] = None
        self._adapter_files: Dict[str, bytes] = {}
        self._engine: Any = None

    # --- loading --------------------------------------------------------------
    @property
    def is_loaded(self) -> bool:
        return self.gguf_path is not None

    @property
    def model(self) -> Any:
        raise ValueError(Errors.E2086)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def has_adapter(self) -> bool:
        return bool(self._adapter_files)

    def load(self, adapter_dir: Optional[str] = None, *, reload: bool = False) -> None:
        with self._lock:
            if self.is_loaded and not reload:
                return
            adapter = adapter_dir or self.adapter
            files = _read_adapter(adapter) if adapter else {}
            runtime = self.lora == "runtime" and bool(files)
            entry = self._cached_entry({} if runtime else files, None if runtime else adapter)
            self.lora_path = self._cached_lora(files, adapter, entry) if runtime else None
            from transformers import AutoTokenizer

            with hf_call():
                self.tokenizer = AutoTokenizer.from_pretrained(str(entry))
            self._adapter_files = files
            self.gguf_path = entry / MODEL_FILE
            self._engine = None

    def _cached_entry(self, adapter_files: Dict[str, bytes], adapter: Optional[str]) -> Path:
        root = cache_root() or Path(tempfile.mkdtemp(prefix="spacy-padellm-llama-cpp-"))
        key = self._key(adapter_files)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf8")).hexdigest()[:16]
        entry = root / "llama_cpp" / f"{self.export}-{digest}"

        def write(directory: Path) -> None:
            logger.info("Writing the llama.cpp model of %s (once; later loads reuse %s)", self.source.describe(), entry)
            model, tokenizer = load_model(self.source, "float32", "cpu", adapter, sparse_peft=self.fine_tuning.sparse_peft)
            from .qa_sparse_peft import merge_onto_grid

            with hf_call():
                # An adapter trained through a Q8_0/Q4_0 base's grid is written on
                # exactly that grid, so llama.cpp runs what training evaluated.
                model, grid, kind = merge_onto_grid(model)
                tokenizer.save_pretrained(str(directory))
            from .gguf_export import export_gguf

            export_gguf(model, tokenizer, directory / MODEL_FILE, self.export, grid=grid or None, grid_type=kind)

        return build_entry(entry, key, ENTRY_FILES, write)

    def _cached_lora(self, adapter_files: Dict[str, bytes], adapter: Optional[str], base: Path) -> Path:
        """The adapter as a GGUF LoRA for the base file in entry `base`,
        written once (seconds: no model is loaded)."""
        from .gguf_export import export_lora_gguf

        key = {"format": FORMAT, "base": base.name, "adapter_sha256": _adapter_sha256(adapter_files), "gguf": _version("gguf")}
        entry = base.parent / f"lora-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}"

        def write(directory: Path) -> None:
            export_lora_gguf(adapter_files, base / MODEL_FILE, directory / LORA_FILE, shown_as=str(adapter))

        return build_entry(entry, key, (LORA_FILE,), write) / LORA_FILE

    def _key(self, adapter_files: Dict[str, bytes]) -> Dict[str, Any]:
        """What the exported file depends on."""
        location, local = locate(self.source)
        base: List[Any] = [location]
        if local:
            for path in sorted(Path(location).iterdir()):
                if path.is_file():
                    stat = path.stat()
                    base.append([path.name, stat.st_size, int(stat.st_mtime)])
        return {
            "format": FORMAT,
            "source": self.source.to_dict(),
            "base_files": base,
            "adapter_sha256": _adapter_sha256(adapter_files),
            "export": self.export,
            "versions": {p: _version(p) for p in ("transformers", "peft", "gguf", "torch")},
            **({} if self.fine_tuning.sparse_peft else {"sparse_peft": False}),  # earlier entries stay valid
        }

    # --- inference ------------------------------------------------------------
    def make_engine(self, stop_ids: List[int], pad_id: int) -> Any:
        from ..llama_cpp_engine import LlamaCppEngine

        with self._lock:
            if self._engine is None or self._engine.stop_ids != sorted(set(stop_ids)):
                lora = str(self.lora_path) if self.lora_path else None
                self._engine = LlamaCppEngine(
                    str(self.gguf_path), stop_ids, pad_id, n_ctx=self.n_ctx, n_threads=self.n_threads, lora_path=lora,
                    tokenizer=self.tokenizer,
                )
            return self._engine

    def context_length(self) -> Optional[int]:
        engine = self._engine
        train = engine.n_ctx_train if engine is not None else None
        return min(x for x in (train, self.n_ctx) if x)

    def merge_for_inference(self) -> None:
        """Merged at export."""

    def unmerge(self) -> None:
        """Nothing to take out: the GGUF file holds merged weights."""

    def ensure_fork_safe(self) -> None:
        """The engine opens its own context in a forked process."""

    def prepare_for_training(self) -> bool:
        raise ValueError(Errors.E2086)

    def __call__(self, inputs: Any, is_train: bool) -> Any:
        raise ValueError(Errors.E2086)

    # --- serialization ------------------------------------------------------
    def _meta(self) -> Dict[str, Any]:
        meta = super()._meta()
        meta["versions"]["llama_cpp_python"] = _version("llama_cpp_python")
        return meta

    def _to_disk(self, path: Path) -> None:
        srsly.write_json(path / "model.json", self._meta())
        files = self._adapter_files or (_read_adapter(self.adapter) if not self.is_loaded and self.adapter else {})
        if files:
            (path / "adapter").mkdir(exist_ok=True)
            for name, data in files.items():
                (path / "adapter" / name).write_bytes(data)

    def from_disk(self, path: Path) -> "LlamaCppShim":
        path = Path(path)
        meta = read_meta(path)
        if meta.get("full_weights"):
            raise ValueError(Errors.E2088.format(path=path))
        with self._lock:
            self.load(adapter_dir=self.restore_saved(path, meta), reload=True)
        return self


def _adapter_sha256(files: Dict[str, bytes]) -> Optional[str]:
    """One digest of an adapter's files (names and bytes); None without any."""
    if not files:
        return None
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + files[name])
    return digest.hexdigest()


def _read_adapter(directory: str) -> Dict[str, bytes]:
    """The adapter's files, read once: a pipeline loaded from bytes reads
    them from a temporary directory that is gone when it is saved again."""
    from .adapter_files import check_adapter_dir

    check_adapter_dir(directory)
    return {name: (Path(directory) / name).read_bytes() for name in ADAPTER_FILES if (Path(directory) / name).exists()}

