"""The InfLLM memory's settings, and the function that registers them.

The defaults are the reference implementation's (thunlp/InfLLM, Mistral:
blocks of 128 tokens, 128 initial tokens, 16 blocks retrieved, 4
representative keys per block, execution chunks of 512) with the local
window scaled to the model: the reference runs a 4,096-token window on a
32k-context model, so the window defaults to an eighth of the context
(1,024 tokens for SmolLM2's 8,192), at most 4,096.
"""
from dataclasses import dataclass, replace
from typing import Optional

from ..errors import Errors

REFERENCE_N_LOCAL = 4096
CONTEXT_FRACTION = 8


@dataclass(frozen=True)
class InfLLMSettings:
    """n_init: initial tokens every query attends to (attention sinks).
    n_local: the window of recent tokens, with window-relative positions;
        None: `min(4096, context // 8)`.
    block_size: tokens per evicted block.
    topk: blocks each execution chunk retrieves (0: sinks and window only,
        StreamingLLM).
    repr_topk: representative keys per block, the tokens that drew the most
        attention while they were in the window.
    exec_chunk: queries per execution chunk when a text is streamed in; each
        chunk retrieves its own blocks.
    max_cached_blocks: on GPU, evicted blocks live in CPU RAM and this many
        per layer stay cached on the GPU (least recently used leave first).
    """

    n_init: int = 128
    n_local: Optional[int] = None
    block_size: int = 128
    topk: int = 16
    repr_topk: int = 4
    exec_chunk: int = 512
    max_cached_blocks: int = 32

    def __post_init__(self) -> None:
        for name in ("n_init", "topk"):
            _check_int(name, getattr(self, name), minimum=0)
        for name in ("block_size", "repr_topk", "exec_chunk", "max_cached_blocks"):
            _check_int(name, getattr(self, name), minimum=1)
        if self.n_local is not None:
            _check_int("n_local", self.n_local, minimum=1)
        if self.repr_topk > self.block_size:
            raise ValueError(Errors.E2100.format(
                name="repr_topk", what=f"at most block_size ({self.block_size})", value=self.repr_topk
            ))

    def for_context(self, context: Optional[int]) -> "InfLLMSettings":
        """These settings with the window fixed for a model of `context`
        tokens (None: unknown), checked against it."""
        n_local = self.n_local
        if n_local is None:
            n_local = REFERENCE_N_LOCAL if context is None else min(REFERENCE_N_LOCAL, context // CONTEXT_FRACTION)
        exec_chunk = min(self.exec_chunk, n_local) if self.n_local is None else self.exec_chunk
        if exec_chunk > n_local:
            raise ValueError(Errors.E2101.format(exec_chunk=exec_chunk, n_local=n_local))
        if context is not None and n_local + exec_chunk > context:
            raise ValueError(Errors.E2102.format(n_local=n_local, exec_chunk=exec_chunk, context=context))
        return replace(self, n_local=n_local, exec_chunk=exec_chunk)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a whole number of 0 or more" if minimum == 0 else "a positive whole number"
        raise ValueError(Errors.E2100.format(name=name, what=what, value=value))


def make_infllm_memory(
    n_init: int = 128,
    n_local: Optional[int] = None,
    block_size: int = 128,
    topk: int = 16,
    repr_topk: int = 4,
    exec_chunk: int = 512,
    max_cached_blocks: int = 32,
) -> InfLLMSettings:
    """`[components.padellm_ner.memory] @misc = "spacy_padellm.InfLLMMemory.v1"`:
    decode long docs segment by segment behind a bounded memory of the text
    before each segment."""
    return InfLLMSettings(
        n_init=n_init,
        n_local=n_local,
        block_size=block_size,
        topk=topk,
        repr_topk=repr_topk,
        exec_chunk=exec_chunk,
        max_cached_blocks=max_cached_blocks,
    )
