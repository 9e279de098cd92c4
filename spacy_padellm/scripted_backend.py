"""A `backend.Backend` that answers from a script instead of a model.

Tests of the decoding schemes and of the pipe's fallbacks need an engine that
says "many" for a count, stops a mention half way or never stops: what a
real model does rarely and not on demand. This one takes a function from a
branch's text (everything after the prefix: label, count, header, earlier
generated tokens) to the text the branch generates next, and generates
its tokens one by one as an engine would: up to a stop token or the bound.

It keeps a log of its calls (`calls`) and of every prefix and branch not
yet released (`live`), so tests can check how a scheme uses a backend, not
only what comes out.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .backend import Generation, HFTokenizerText, branch_bounds

Script = Callable[[str], str]


@dataclass
class ScriptedPrefixes:
    prefixes: List[List[int]]


@dataclass
class ScriptedBranch:
    """A kept branch: its tokens after the prefix, the last generated one
    (its stop token, or the one at its bound) included."""

    text_index: int
    tokens: List[int]


class ScriptedBackend(HFTokenizerText):
    """tokenizer: a Hugging Face tokenizer (its `decode` and `__call__`).
    script: branch text -> what the branch generates next; tokenized, cut at
        the first stop token or at the branch's bound.
    stop_ids: tokens that end a branch (default: every token with a newline,
        as the model backends use).
    logprob: the log-probability given to every generated token.
    """

    def __init__(
        self,
        tokenizer: Any,
        script: Script,
        *,
        stop_ids: Optional[Sequence[int]] = None,
        logprob: float = -0.1,
    ) -> None:
        from .decoding import stop_token_ids

        self.tokenizer = tokenizer
        self.script = script
        self.stop_ids = sorted(stop_ids if stop_ids is not None else stop_token_ids(tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.logprob = logprob
        self.calls: List[Tuple[str, int]] = []
        self.live: Dict[int, Any] = {}
        self.tokens_evaluated = 0
        self.texts_per_call: Optional[int] = None

    # --- what the script sees ----------------------------------------------
    def _generate(self, branch: List[int], limit: int) -> Generation:
        text = self.tokenizer.decode(branch, skip_special_tokens=True)
        ids = list(self.tokenizer(self.script(text), add_special_tokens=False)["input_ids"])[:limit]
        stop = set(self.stop_ids)
        end = next((k + 1 for k, t in enumerate(ids) if t in stop), None)
        if end is not None:
            ids = ids[:end]
        self.tokens_evaluated += len(branch) + max(0, len(ids) - 1)
        return Generation(ids, [self.logprob] * len(ids), end is not None)

    def _run(self, text_index: Sequence[int], branches: Sequence[List[int]], max_new_tokens: Any, keep: bool) -> List[Generation]:
        limits = branch_bounds(max_new_tokens, len(branches))
        out = []
        for i, branch, limit in zip(text_index, branches, limits):
            gen = self._generate(branch, limit)
            if keep:
                gen.branch = ScriptedBranch(i, branch + gen.token_ids)
                self.live[id(gen.branch)] = gen.branch
            out.append(gen)
        return out

    # --- Backend ------------------------------------------------------------
    def context_length(self) -> Optional[int]:
        return None

    def encode_prefixes(self, prefixes: Sequence[Sequence[int]]) -> ScriptedPrefixes:
        if any(len(p) == 0 for p in prefixes):
            raise ValueError("Every prefix needs at least one token.")
        self.calls.append(("encode", len(prefixes)))
        return self._new_prefixes(prefixes)

    def _new_prefixes(self, prefixes: Sequence[Sequence[int]]) -> ScriptedPrefixes:
        handle = ScriptedPrefixes([list(p) for p in prefixes])
        self.tokens_evaluated += sum(len(p) for p in prefixes)
        self.live[id(handle)] = handle
        return handle

    def encode_with_branches(
        self,
        prefixes: Sequence[Sequence[int]],
        suffixes: Sequence[Sequence[int]],
        max_new_tokens: int,
        first_token_bias: Optional[Dict[int, float]] = None,
        keep: bool = False,
    ) -> Tuple[ScriptedPrefixes, List[Generation]]:
        self.calls.append(("first", len(suffixes)))
        handle = self._new_prefixes(prefixes)
        text_index = [i for i in range(len(prefixes)) for _ in suffixes]
        return handle, self._run(text_index, [list(s) for _ in prefixes for s in suffixes], max_new_tokens, keep)

    def decode(
        self,
        prefixes: ScriptedPrefixes,
        text_index: Sequence[int],
        suffixes: Sequence[Sequence[int]],
        max_new_tokens: Union[int, Sequence[int]],
        first_token_bias: Optional[Dict[int, float]] = None,
        keep: bool = False,
    ) -> List[Generation]:
        if not suffixes:
            return []
        self.calls.append(("decode", len(suffixes)))
        return self._run(text_index, [list(s) for s in suffixes], max_new_tokens, keep)

    def fork(
        self,
        branches: Sequence[ScriptedBranch],
        suffixes: Sequence[Sequence[int]],
        max_new_tokens: Union[int, Sequence[int]],
    ) -> List[Generation]:
        if any(id(b) not in self.live for b in branches):
            raise ValueError("fork needs kept branches that were not released.")
        self.calls.append(("fork", len(suffixes)))
        return self._run(
            [b.text_index for b in branches], [b.tokens + list(s) for b, s in zip(branches, suffixes)], max_new_tokens, False
        )

    def release(self, prefixes: ScriptedPrefixes) -> None:
        self.calls.append(("release", len(prefixes.prefixes)))
        self.live.pop(id(prefixes), None)

    def release_branches(self, branches: Sequence[Optional[ScriptedBranch]]) -> None:
        for branch in branches:
            if branch is not None:
                self.live.pop(id(branch), None)


def make_scripted_backend(tokenizer: Any, script: Script, logprob: float = -0.1) -> ScriptedBackend:
    """`spacy_padellm.ScriptedBackend.v1`, for tests that build one from a
    registry name (`registry.misc`)."""
    return ScriptedBackend(tokenizer, script, logprob=logprob)
