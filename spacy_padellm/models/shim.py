"""The thinc shim around a Hugging Face causal LM (plus peft adapter).

It follows spacy-transformers' HFShim: thinc owns the object, training goes
through `PyTorchShim.begin_update`/`finish_update`, and serialization is
overridden. What is saved is a reference to the base model (`ModelSource`),
never its weights, plus the adapter in peft's own format, so a saved adapter
can also be loaded with `PeftModel.from_pretrained` directly.

Several threads may reach a pipeline's first use at once. Loading, merging,
unmerging and preparing for training each check and change the shim's state
under its lock, so the model loads once and its adapter merges once; calls
into transformers and peft also hold the process-wide load lock (`hf_calls`).
"""
import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import srsly
import torch
from thinc.api import ArgsKwargs, PyTorchShim

from ..errors import Errors
from .hf_calls import LOAD_LOCK, hf_call
from .loader import ModelSource, load_model, resolve_device

logger = logging.getLogger("spacy_padellm")

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
WEIGHTS_FILE = "weights.safetensors"
FINE_TUNING_MODES = ("lora", "full", "elastic_lora")


@dataclass
class FineTuning:
    """What training changes: a LoRA adapter on a frozen base, or all weights."""

    mode: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: List[str] = field(default_factory=list)
    rank_choices: List[int] = field(default_factory=list)  # elastic_lora: the ranks a group may take
    # SparsePEFT: on a sparse base, mask the update by the base's zeros. Off
    # only for the comparison SQFT makes: plain LoRA on the same sparse base,
    # whose merge fills the zeros.
    sparse_peft: bool = True

    def __post_init__(self) -> None:
        if self.mode not in FINE_TUNING_MODES:
            raise ValueError(Errors.E2021.format(mode=self.mode, options=list(FINE_TUNING_MODES)))
        if not isinstance(self.sparse_peft, bool):
            raise ValueError(Errors.E2003.format(name="sparse_peft (true or false)", value=self.sparse_peft))
        if self.mode == "elastic_lora":
            bad = [r for r in self.rank_choices if isinstance(r, bool) or not isinstance(r, int) or r < 1]
            if len(set(self.rank_choices)) < 2 or bad:
                raise ValueError(Errors.E2091.format(value=self.rank_choices))
            self.lora_r = max(self.rank_choices)  # the super-adapter is trained at its largest rank


def _library_versions() -> Dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


class CausalLMShim(PyTorchShim):
    """Holds the causal LM and its tokenizer once loaded; empty until then."""

    # Loading, merging, unmerging and training set-up check and change the
    # model under the process-wide load lock that every call into
    # transformers and peft holds, and that the component's first use holds
    # too: one lock, so no two of them can wait for each other. (A class
    # attribute: copies and pickles of a shim need no lock of their own.)
    _lock = LOAD_LOCK

    def __init__(
        self,
        source: ModelSource,
        *,
        adapter: Optional[str] = None,
        dtype: str = "auto",
        device: Optional[str] = None,
        mixed_precision: bool = False,
        grad_scaler: Any = None,
        fine_tuning: Optional[FineTuning] = None,
    ) -> None:
        super().__init__(None, mixed_precision=mixed_precision, grad_scaler=grad_scaler)
        self.source = source
        self.adapter = adapter
        self.dtype = dtype
        self.device_name = device
        self.tokenizer: Any = None
        self.fine_tuning = fine_tuning or FineTuning()
        self.trainable = False
        self._full_weights = False
        self._merged = False
        # Benchmarks switch this off to time the unmerged adapter.
        self.merge_when_predicting = True
        self._pid = os.getpid()
        # elastic_lora: the super-adapter's rank space, the ranks predictions
        # use (default: the largest), and whether the next update draws anew.
        self.elastic: Any = None
        self.prediction_ranks: Optional[Dict[str, int]] = None
        self._draw_ranks = True
        self._rank_rng = random.Random(0)

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        if self._model is None:
            raise ValueError(Errors.E2016)
        return self._model

    @property
    def device(self) -> torch.device:
        if self._model is None:
            return resolve_device(self.device_name)
        return next(self._model.parameters()).device

    def load(self, adapter_dir: Optional[str] = None, *, reload: bool = False) -> None:
        """Load the base model, then the adapter: the configured one, or the
        one a saved pipeline carries (`adapter_dir`).

        Once loaded, further calls return at once (another thread may have
        loaded it meanwhile), unless `reload` is set, as deserializing does."""
        with self._lock:
            if self._model is not None and not reload:
                return
            model, tokenizer = load_model(self.source, self.dtype, self.device_name, adapter_dir or self.adapter,
                                          sparse_peft=self.fine_tuning.sparse_peft)
            self.elastic = None
            if self.fine_tuning.mode == "elastic_lora" and hasattr(model, "peft_config"):
                from .elastic_lora import ElasticAdapter

                self.elastic = ElasticAdapter(model, self.fine_tuning.rank_choices)
            # The tokenizer first: whoever sees the model loaded finds it.
            self.tokenizer = tokenizer
            self._model = model
            self._merged = False

    def use_merged(self, model: Any, source: ModelSource) -> None:
        """From now on the model is `model`, its adapter folded in and saved at
        `source`, which a saved pipeline refers to (the `merge` command)."""
        with self._lock:
            self.source = source
            self.adapter = None
            self._model = model
            self._merged = False
            self.trainable = False
            self._full_weights = False

    def merge_for_inference(self) -> None:
        """Fold the LoRA adapter into the base weights while the model only
        predicts.

        Unmerged, every adapted projection adds dropout, two small matrix
        products, a scaling and an addition to each decoding step; decoding
        is bound by those kernel launches (on an H100, merging made PaDeLLM
        decoding of CoNLL-03 dev 2.0x faster). The adapter's own weights are
        kept: saving writes the adapter only, and `prepare_for_training`
        unmerges before the first update (after which this session predicts
        unmerged). In float32 the merged model computes the same function up
        to rounding. In bfloat16 the merged weights round differently (3 of
        384 CoNLL-03 dev sentences changed on the H100), and unmerging leaves
        the base off by that rounding, so a pipeline that predicts and then
        trains in bfloat16 trains on a base a rounding away from the one it
        loads with. Models with fully fine-tuned weights are never merged:
        their base weights are saved.
        """
        with self._lock:
            if self.elastic is not None:  # predictions use one sub-adapter; training draws again
                self.elastic.use(self.prediction_ranks or self.elastic.maximal())
                self._draw_ranks = True
            if self.trainable or self._merged or not self.merge_when_predicting:
                return
            if self._full_weights or not self.has_adapter or not hasattr(self._model, "merge_adapter"):
                return
            with hf_call():
                self.model.merge_adapter()
            self._merged = True

    def unmerge(self) -> None:
        """Take a merged adapter back out of the base weights."""
        with self._lock:
            if self._merged:
                with hf_call():
                    self.model.unmerge_adapter()
                self._merged = False

    def prepare_for_training(self) -> bool:
        """Make the weights that training updates trainable, once.

        With "lora", a loaded adapter is trained further, otherwise a new one
        is created; the base is frozen. RETURNS (bool): whether the model
        object changed (callers holding it must fetch it again).
        """
        with self._lock:
            if self.trainable:
                return False
            with hf_call():
                return self._make_trainable()

    def _make_trainable(self) -> bool:
        """`prepare_for_training`'s work, under both locks: creating LoRA
        layers while another thread's `from_pretrained` has switched torch's
        init functions off would leave them uninitialized."""
        model = self.model
        self.unmerge()
        changed = False
        if self.fine_tuning.mode == "full":
            dtype = next(model.parameters()).dtype
            if dtype != torch.float32:
                raise ValueError(Errors.E2022.format(dtype=dtype))
            for param in model.parameters():
                param.requires_grad_(True)
            self._full_weights = True
        elif self.has_adapter:
            for name, param in model.named_parameters():
                param.requires_grad_("lora_" in name)
        else:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(
                r=self.fine_tuning.lora_r,
                lora_alpha=self.fine_tuning.lora_alpha,
                lora_dropout=self.fine_tuning.lora_dropout,
                target_modules=self.fine_tuning.lora_target_modules,
                task_type="CAUSAL_LM",
            )
            from .sparse_peft import apply_sparse_masks

            model = get_peft_model(model, config)
            masked = apply_sparse_masks(model) if self.fine_tuning.sparse_peft else 0
            if masked:
                logger.info("SparsePEFT: the adapter's update is masked by the sparse base in %d layers", masked)
            from .loader import locate
            from .qa_sparse_peft import apply_quantization_aware, base_grid

            kind = base_grid(locate(self.source)[0])
            if kind:
                n = apply_quantization_aware(model, kind)
                logger.info("QA-SparsePEFT: %d layers train through the base's %s grid", n, kind.upper())
            changed = True
        if self.fine_tuning.mode == "elastic_lora":
            from .elastic_lora import ElasticAdapter

            self.elastic = ElasticAdapter(model, self.fine_tuning.rank_choices)
        self._model = model
        self.trainable = True
        return changed

    def begin_step(self) -> None:
        """Before an update: an elastic adapter draws each group's rank at the
        first update of an optimizer step and keeps it for the whole step
        (every update of an accumulated step, forward and backward)."""
        if self.elastic is not None and self._draw_ranks:
            self.elastic.draw(self._rank_rng)
            self._draw_ranks = False

    def end_step(self) -> None:
        """After the optimizer step: the next update draws new ranks."""
        self._draw_ranks = True

    def training_batch(self, items: Sequence[Any], pad_id: int, drop: Optional[float]) -> Tuple[ArgsKwargs, torch.Tensor]:
        """The model's inputs and the target ids for one update on `items`
        (`training.TrainingItem`s, packed several texts per row), on the
        model's device. `drop` sets the rate of the model's dropout layers
        (LoRA dropout included) for this step; None leaves them as they are."""
        from ..training import pack

        model = self.model
        batch = pack(items, pad_id, dtype=next(model.parameters()).dtype)
        if drop is not None:
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = drop
        device = self.device
        inputs = ArgsKwargs(
            args=(),
            kwargs={
                "input_ids": batch.input_ids.to(device),
                "attention_mask": batch.attention_mask.to(device),
                "position_ids": batch.position_ids.to(device),
                "logits_to_keep": batch.keep.to(device),
            },
        )
        return inputs, batch.targets.to(device)

    def ensure_fork_safe(self) -> None:
        """Use one torch thread in a forked process (`nlp.pipe(n_process=...)`).

        The OpenMP thread pool that torch's CPU kernels use does not survive
        `fork`: the first multi-threaded operation in the child hangs forever.
        With several processes one thread each is also the right share of cores.
        """
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            if torch.get_num_threads() > 1:
                logger.info("Forked process %d: using one torch thread", self._pid)
                torch.set_num_threads(1)

    @property
    def has_adapter(self) -> bool:
        return self._model is not None and hasattr(self._model, "peft_config")

    def make_engine(self, stop_ids: List[int], pad_id: int) -> Any:
        """The `backend.Backend` that decodes with this model."""
        from ..engine import BranchDecoder

        return BranchDecoder(self.model, stop_ids, pad_id, self.tokenizer, self.context_length())

    def context_length(self) -> Optional[int]:
        """The longest sequence (text, branch and generation) decoded exactly.

        Models with sliding-window layers (Gemma 3: 512 tokens) count only up
        to their window: the engine's and the packed training's 4D masks give
        every token its whole text, which equals the model's own attention
        only while the sequence fits the window. Longer docs are windowed."""
        config = self.model.config
        config = getattr(config, "text_config", None) or config
        length = None
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                length = value
                break
        window = getattr(config, "sliding_window", None)
        if isinstance(window, int) and window > 0 and "sliding_attention" in (getattr(config, "layer_types", None) or []):
            length = min(length, window) if length else window
        return length

    def _meta(self) -> Dict[str, Any]:
        return {
            "source": self.source.to_dict(),
            "dtype": self.dtype,
            "has_adapter": self.has_adapter or (not self.is_loaded and bool(self.adapter)),
            "full_weights": self._full_weights,
            "fine_tuning": asdict(self.fine_tuning),
            "versions": _library_versions(),
        }

    def to_disk(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._to_disk(path)

    def _to_disk(self, path: Path) -> None:
        srsly.write_json(path / "model.json", self._meta())
        if self.has_adapter:
            with hf_call():
                self.model.save_pretrained(str(path / "adapter"), save_embedding_layers=self._save_embedding_layers())
        elif not self.is_loaded and self.adapter:
            # Saved before the model was loaded: keep the configured adapter.
            (path / "adapter").mkdir(exist_ok=True)
            for name in ADAPTER_FILES:
                shutil.copy(Path(self.adapter) / name, path / "adapter" / name)
        if self._full_weights:
            from safetensors.torch import save_model

            # save_model, unlike save_file, handles tied embeddings.
            save_model(self.model, str(path / WEIGHTS_FILE))

    def _save_embedding_layers(self) -> Any:
        """peft's `save_embedding_layers`. Its default, "auto", asks the
        Hugging Face hub whether the base model's config exists (to see if the
        vocabulary was resized) whenever the embeddings are not adapted: a
        network attempt, and a warning ("Unable to fetch remote file", or
        "Could not find a config file" offline), on every save. We never
        resize the vocabulary, so the embeddings are saved exactly when the
        adapter adapts them, which "auto" decides without the hub."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        base = self.model.get_base_model()
        embeddings = [base.get_input_embeddings(), base.get_output_embeddings()]
        if any(isinstance(layer, BaseTunerLayer) for layer in embeddings):
            return "auto"
        return False

    def from_disk(self, path: Path) -> "CausalLMShim":
        path = Path(path)
        meta = read_meta(path)
        with self._lock:
            adapter = self.restore_saved(path, meta)
            self.dtype = meta.get("dtype", self.dtype)
            self.trainable = False
            self.load(adapter_dir=adapter, reload=True)
            if meta.get("full_weights"):
                self._load_full_weights(path / WEIGHTS_FILE)
        return self

    def restore_saved(self, path: Path, meta: Dict[str, Any]) -> Optional[str]:
        """What a saved pipeline fixes, whatever the loading config says (both
        backends' `from_disk`): its base, and SparsePEFT off for an adapter
        trained without the mask, since masking it would change what it
        computes. (`spacy.load(path, config=...)` with a new model block, as
        for the llama.cpp backend, resets every unnamed setting to its
        default.) Returns the saved adapter's directory, if it has one."""
        self.source = ModelSource.from_dict(meta["source"])
        if (meta.get("fine_tuning") or {}).get("sparse_peft") is False and self.fine_tuning.sparse_peft:
            self.fine_tuning = replace(self.fine_tuning, sparse_peft=False)
        self.adapter = None
        return str(path / "adapter") if meta.get("has_adapter") else None

    def _load_full_weights(self, path: Path) -> None:
        from safetensors.torch import load_model

        missing, unexpected = load_model(self.model, str(path), strict=False, device=str(self.device))
        if missing:
            raise ValueError(Errors.E2017.format(path=path, reason=f"{len(missing)} weights are missing, e.g. {sorted(missing)[:3]}"))
        if unexpected:
            logger.warning("Ignored %d unknown weights in %s: %s", len(unexpected), path, sorted(unexpected)[:5])
        self._full_weights = True

    def to_bytes(self) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            self.to_disk(Path(tmp))
            msg: Dict[str, Any] = {"model.json": (Path(tmp) / "model.json").read_text(encoding="utf8")}
            for name in ADAPTER_FILES:
                if (Path(tmp) / "adapter" / name).exists():
                    msg[name] = (Path(tmp) / "adapter" / name).read_bytes()
            if (Path(tmp) / WEIGHTS_FILE).exists():
                msg[WEIGHTS_FILE] = (Path(tmp) / WEIGHTS_FILE).read_bytes()
        return srsly.msgpack_dumps(msg)

    def from_bytes(self, data: bytes) -> "CausalLMShim":
        msg = srsly.msgpack_loads(data)
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            (tmp_path / "model.json").write_text(msg.get("model.json", ""), encoding="utf8")
            meta = read_meta(tmp_path, shown_as="the model.json of the serialized component")
            if meta.get("has_adapter"):
                (tmp_path / "adapter").mkdir()
                for name in ADAPTER_FILES:
                    (tmp_path / "adapter" / name).write_bytes(msg[name])
            if meta.get("full_weights"):
                (tmp_path / WEIGHTS_FILE).write_bytes(msg[WEIGHTS_FILE])
            self.from_disk(tmp_path)
        return self


def read_meta(path: Path, shown_as: Optional[str] = None) -> Dict[str, Any]:
    """The contents of `path/model.json`, checked: what `from_disk` needs.

    A damaged file would otherwise fail deep inside loading (`KeyError:
    'source'`, or a model named None not found). `shown_as` names the file
    in errors where it is a temporary copy (`from_bytes`)."""
    file = path / "model.json"
    where = shown_as or str(file)
    redo = "Save the pipeline again (`nlp.to_disk`), or restore the file from a copy."

    def damaged(problem: str) -> ValueError:
        return ValueError(Errors.E2017.format(path=where, reason=f"{problem}. {redo}"))

    if not file.exists():
        raise damaged("the file is missing")
    try:
        meta = json.loads(file.read_text(encoding="utf8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise damaged(f"it is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise damaged(f"it holds a JSON {type(meta).__name__}, not an object")
    source = meta.get("source")
    if not isinstance(source, dict):
        raise damaged("it has no 'source' (the base model the component references)")
    if not (source.get("name") or source.get("package")):
        raise damaged("its 'source' names neither a model ('name') nor a package")
    unknown = sorted(set(source) - set(ModelSource.__dataclass_fields__))
    if unknown:
        logger.warning("Ignoring unknown keys %s in the 'source' of %s", unknown, where)
    return meta
