"""The torch backend's long-document memory, and decoding behind it.

`TorchMemory` is the capability `engine.BranchDecoder.memory()` returns:
new doc memories, text streamed into them, and prefixes encoded behind
them. `BehindMemories` is the `backend.Backend` a decoding scheme runs on
for one batch of segments: the same engine, with each text's prefix behind
its doc's memory. The schemes do not know about memory at all.
"""
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..backend import Generation
from ..decoding import start_branches
from ..compat import _base_model
from .attention import IMPLEMENTATION, register
from .caches import ContextCache, SegmentContext, StreamCache
from .heap import release_free_heap
from .settings import InfLLMSettings
from .store import DocMemory

if TYPE_CHECKING:
    from ..prompt import PromptTokenizer

# Architectures whose attention rotates queries and keys with transformers'
# Llama rotary code (`rotate_half`) and nothing else (no sliding layers, no
# soft-capping), which the memory attention re-implements.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
MIN_TRANSFORMERS = (5, 0)


def unsupported_reason(model: Any) -> Optional[str]:
    """Why the memory cannot run on `model`, or None when it can."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    if (major, minor) < MIN_TRANSFORMERS:
        # older versions hand cache.update a dict of their own, not the
        # attention's keyword arguments (memory/caches.py)
        return f"transformers {transformers.__version__} (the memory needs transformers 5; it is tested with 5.24)"
    base = _base_model(model)
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r}"
    rotary = getattr(getattr(base, "model", None), "rotary_emb", None)
    if rotary is None or float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
        return "a rotary embedding with scaling"
    if getattr(base.config, "sliding_window", None) and getattr(base.config, "use_sliding_window", True):
        return "sliding-window attention"
    return None


class UnsupportedModel(ValueError):
    """The memory cannot run on this model (the message says why)."""


class TorchMemory:
    """Doc memories for one `BranchDecoder` (one model)."""

    def __init__(self, engine: Any, settings: InfLLMSettings) -> None:
        reason = unsupported_reason(engine.model)
        if reason is not None:
            raise UnsupportedModel(reason)
        self.engine = engine
        self.settings = settings.for_context(engine.context_length())
        base = _base_model(engine.model)
        self.rotary = base.model.rotary_emb
        self.n_layers = int(base.config.num_hidden_layers)
        register()
        base.config._attn_implementation = IMPLEMENTATION

    def new(self) -> DocMemory:
        device = self.engine.device
        store = torch.device("cpu") if device.type != "cpu" else None
        return DocMemory(self.settings, self.n_layers, self.rotary, store_device=store)

    @torch.inference_mode()
    def extend(self, memory: DocMemory, token_ids: Sequence[int]) -> None:
        """Stream `token_ids` into `memory`, one execution chunk per forward
        call (queries and keys reach the attention unrotated: position 0)."""
        engine = self.engine
        engine.model.eval()
        step = self.settings.exec_chunk
        device = engine.device
        ids = list(token_ids)
        for begin in range(0, len(ids), step):
            chunk = torch.tensor([ids[begin : begin + step]], dtype=torch.long, device=device)
            engine.model(
                input_ids=chunk,
                position_ids=torch.zeros_like(chunk),
                use_cache=True,
                logits_to_keep=1,
                **{engine._cache_arg: StreamCache(memory)},
            )
            engine.tokens_evaluated += chunk.shape[1]
            memory.tokens += chunk.shape[1]
            release_free_heap()

    def encode_behind(self, memories: Sequence[DocMemory], prefixes: Sequence[Sequence[int]]) -> Any:
        """`BranchDecoder.encode_prefixes`, with prefix i behind `memories[i]`:
        its cache holds only the prefix (the tail); the memory is read, not
        copied, by it and by every branch decoded from it."""
        cache = ContextCache([SegmentContext(m) for m in memories], range(len(prefixes)), self.n_layers)
        return self.engine.encode_prefixes(prefixes, cache=cache)


class BehindMemories:
    """The `backend.Backend` for one batch of segments: text i's prefix sits
    behind `memories[i]`. A memory that is still empty (a doc's first
    segment) changes nothing: such a batch runs on the engine unchanged,
    exactly as without memory. Behind a non-empty memory the prefix drops
    the tokenizer's leading special tokens, which the memory's stream
    began with."""

    def __init__(self, memory: TorchMemory, memories: Sequence[DocMemory], prompts: "PromptTokenizer") -> None:
        self.memory = memory
        self.engine = memory.engine
        self.memories = list(memories)
        self.prompts = prompts
        self.plain = all(m.empty for m in self.memories)

    def __getattr__(self, name: str) -> Any:  # pad_id, stop_ids, device, tokenize, ...
        return getattr(self.engine, name)

    def _behind(self, prefixes: Sequence[Sequence[int]]) -> List[List[int]]:
        return [
            list(prefix) if memory.empty else self.prompts.after_context(prefix)
            for memory, prefix in zip(self.memories, prefixes)
        ]

    def encode_prefixes(self, prefixes: Sequence[Sequence[int]]) -> Any:
        if self.plain:
            return self.engine.encode_prefixes(prefixes)
        return self.memory.encode_behind(self.memories, self._behind(prefixes))

    def encode_with_branches(
        self, prefixes: Sequence[Sequence[int]], suffixes: Sequence[Sequence[int]], max_new_tokens: int,
        first_token_bias: Optional[Dict[int, float]] = None, keep: bool = False,
    ) -> Tuple[Any, List[Generation]]:
        """Unfused behind memories: the fused call builds its cache from
        scratch, so it runs only for batches without memory."""
        if self.plain:
            return self.engine.encode_with_branches(prefixes, suffixes, max_new_tokens, first_token_bias, keep)
        return start_branches(self, prefixes, suffixes, max_new_tokens, False, first_token_bias, keep)
