"""The interface between the decoding schemes and an inference engine.

`decoding.py` (PaDeLLM) and `autoregressive.py` (the baseline) only encode
prefixes, start branches behind them and decode those greedily. Any engine
that does that serves both: the torch engine (`engine.BranchDecoder`, fused
prefill and speculative counts, used for training too) and llama.cpp
(`llama_cpp_engine.LlamaCppEngine`, the fast CPU engine). Each returns
`Generation`s; what a prefix or branch handle holds is the engine's business
(a key/value cache of torch tensors, or llama.cpp sequence ids).

Long-document memory is a capability of an engine, not a fork of it: an
engine that has it offers `memory(settings)` (`MemoryBackend`); the torch
engine does (`memory/engine.py`), llama.cpp does not.

Branches can be kept alive (`keep=True`) and forked: PaDeLLM's mention
branches continue their label's count branch (`label <num> 2\n<mention 1>`)
instead of evaluating the label and the count again behind the prefix, and
can start before the count has finished (speculation, `decoding.py`).
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable


@dataclass
class Generation:
    """Tokens of one branch, with the log-probability of each."""

    token_ids: List[int]
    logprobs: List[float]
    stopped: bool  # ended with a stop token rather than at the token bound
    # With `keep=True`, the engine's handle on the finished branch, which
    # `Backend.fork` continues; None where it was not kept.
    branch: Any = None

    @property
    def probability(self) -> float:
        """Product of the token probabilities, the stop token included."""
        return math.exp(sum(self.logprobs))


def branch_bounds(max_new_tokens: Union[int, Sequence[int]], n: int) -> List[int]:
    """Each of `n` branches' token bound: `max_new_tokens` for all, or one
    per branch; every bound positive."""
    bounds = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(bounds) != n or any(bound < 1 for bound in bounds):
        raise ValueError("max_new_tokens needs one positive bound per branch.")
    return bounds


class HFTokenizerText:
    """`Backend.tokenize` and `detokenize` through the Hugging Face tokenizer
    an engine holds as `self.tokenizer` (all engines here decode token ids
    of that tokenizer, whatever runs the model)."""

    tokenizer: Any

    def tokenize(self, text: str) -> List[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)


@runtime_checkable
class Backend(Protocol):
    """What a decoding scheme needs from an engine.

    Branches are greedy: each ends at a stop token (`stop_ids`) or at its
    token bound, and every generated token comes with its log-probability
    under the model (before any `first_token_bias`).
    """

    pad_id: int
    stop_ids: List[int]
    # The most texts one call of a decoding scheme should carry (None: as
    # many as the component's `batch_size`). An engine whose cost per token
    # grows with the texts in the call sets it; the component splits its
    # batches to fit.
    texts_per_call: Optional[int]

    def tokenize(self, text: str) -> List[int]:
        """The model's token ids of `text`, no special tokens added."""

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of generated tokens, special tokens left out."""

    def context_length(self) -> Optional[int]:
        """The longest sequence (prefix, branch and generation) this engine
        decodes exactly: the model's trained context, or less (a sliding
        window, llama.cpp's `n_ctx`); None when unknown."""

    def encode_prefixes(self, prefixes: Sequence[Sequence[int]]) -> Any:
        """Evaluate each prefix once; the handle is what `decode` forks from."""

    def encode_with_branches(
        self,
        prefixes: Sequence[Sequence[int]],
        suffixes: Sequence[Sequence[int]],
        max_new_tokens: int,
        first_token_bias: Optional[Dict[int, float]] = None,
        keep: bool = False,
    ) -> Tuple[Any, List[Generation]]:
        """`encode_prefixes`, then every suffix behind every prefix
        (text-major), decoded: an engine may fuse the two."""

    def decode(
        self,
        prefixes: Any,
        text_index: Sequence[int],
        suffixes: Sequence[Sequence[int]],
        max_new_tokens: Union[int, Sequence[int]],
        first_token_bias: Optional[Dict[int, float]] = None,
        keep: bool = False,
    ) -> List[Generation]:
        """One branch per suffix behind prefix `text_index[i]`, decoded to
        its bound (one per branch, or one for all). The prefixes are left as
        they were, so later calls can fork from them again.

        keep: branches stay live when they stop or reach their bound, as
            `Generation.branch` (an engine may keep fewer, when its sequences
            or memory run short; those have `branch = None`). The caller
            releases them.
        """

    def fork(
        self,
        branches: Sequence[Any],
        suffixes: Sequence[Sequence[int]],
        max_new_tokens: Union[int, Sequence[int]],
    ) -> List[Generation]:
        """One new branch per suffix (which may be empty), continuing kept
        branch `branches[i]` after its last generated token (which the
        engine evaluates first, as nothing has read it yet), decoded as
        `decode` does. The kept branches are left as they were."""

    def release(self, prefixes: Any) -> None:
        """The prefixes are no longer needed (their cache can be freed)."""

    def release_branches(self, branches: Sequence[Any]) -> None:
        """Kept branches no longer needed (None entries are skipped)."""


@runtime_checkable
class MemoryBackend(Protocol):
    """An engine with a long-document memory (InfLLM, `spacy_padellm/memory/`).

    `memory(settings)` returns the capability: `new()` gives an empty doc
    memory, `extend(doc_memory, token_ids)` streams text into it, and
    `encode_behind(doc_memories, prefixes)` is `Backend.encode_prefixes`
    with each prefix behind its doc's memory; `decode` and `fork` continue
    from that handle unchanged, and read the memory without writing it.
    """

    def memory(self, settings: Any) -> Any:
        """The memory capability for these settings (`memory.settings.InfLLMSettings`);
        raises ValueError with the reason for a model it cannot run on."""
