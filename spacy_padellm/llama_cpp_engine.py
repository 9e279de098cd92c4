"""The llama.cpp implementation of `backend.Backend`, for fast CPU decoding.

On a 2-core CPU the torch engine spends about 90 ms per forward call on
PyTorch and transformers overhead, however few tokens the call carries;
llama.cpp spends a few milliseconds. The PaDeLLM layout maps onto its
sequences directly:

- each text's prefix is evaluated once, as one sequence;
- a branch is a new sequence that shares the prefix's cells
  (`llama_memory_seq_cp` with a unified KV cache copies no data) and gets
  its suffix and generated tokens at the positions after the prefix;
- all branches of all texts advance together, one `llama_decode` per step,
  each reading its own logits;
- branches that start from the same sequence with the same tokens (a
  count's first token and the mention headers speculated behind it) share
  those tokens: each is evaluated once, as a cell of all their sequences;
- a branch's sequence is removed as soon as it stops, the prefixes when the
  decoding scheme releases them.

One context serves one process: calls are serialized by a lock (threads),
and a forked child (`nlp.pipe(n_process=2)`) opens its own context, as a
llama.cpp context does not survive a fork.
"""
import ctypes
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy

from .backend import Generation, HFTokenizerText, branch_bounds
from .errors import Errors

logger = logging.getLogger("spacy_padellm")
LLAMA_CPP_INSTALL = 'pip install "spacy-padellm[llama-cpp]"'
# llama.cpp's limit on sequences per context.
MAX_SEQUENCES = 256
# Kept branches (`keep=True`) never take the last of these sequences or more
# than this share of the cells: what is left lets every later group of
# branches advance. A branch that would cross the line is not kept (its
# caller re-encodes its continuation behind the prefix instead).
RESERVED_SEQUENCES = 64
KEPT_CELL_SHARE = 0.5
# Texts per decoding call. With a unified KV cache every token's attention
# reads the cells of every text in the call, so the cost per token grows
# with the texts: on the 2-core CPU calls of 32 CoNLL sentences decoded 12%
# fewer per second than calls of 16 or 8, which were level
# (benchmarks/results/llama_cpp_texts_per_call_cpu.md). A `batch_size`
# above this is decoded in calls of this many.
TEXTS_PER_CALL = 16
# Sequences one evaluated token can belong to (`llama_batch_init`'s
# n_seq_max): branches of one group that start from the same sequence with
# the same tokens share those tokens' cells, up to this many branches each.
SEQS_PER_TOKEN = 64


_LOG_CALLBACK: Any = None  # kept alive: llama.cpp holds a pointer to it
GGML_LOG_ERROR = 4


def import_llama_cpp() -> Any:
    """llama_cpp, with its log quiet: llama.cpp prints hundreds of lines per
    load to stderr; only its errors reach our logger."""
    global _LOG_CALLBACK
    try:
        import llama_cpp
    except ImportError as err:  # not installed, or built without a shared library
        raise ImportError(Errors.E2080.format(install=LLAMA_CPP_INSTALL, reason=err)) from err
    if _LOG_CALLBACK is None:

        def log(level: int, text: bytes, user_data: Any) -> None:
            if level == GGML_LOG_ERROR:
                logger.warning("llama.cpp: %s", text.decode("utf8", "replace").rstrip())

        _LOG_CALLBACK = llama_cpp.llama_log_callback(log)
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    return llama_cpp


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Prefixes:
    """Texts evaluated once: sequence `seqs[i]` holds text i's prefix,
    `lengths[i]` tokens long."""

    seqs: List[int]
    lengths: List[int]


@dataclass
class KeptBranch:
    """A finished branch kept for `fork`: sequence `seq` holds it up to its
    last generated token `last` (its stop token, or the one at its bound),
    which goes at position `pos`; `cells` are the cells it holds beyond its
    prefix's."""

    seq: int
    pos: int
    last: int
    cells: int


class LlamaCppEngine(HFTokenizerText):
    """Greedy, batched decoding of branches behind shared prefixes, on a
    GGUF model loaded by llama.cpp.

    path: the GGUF file.
    stop_ids, pad_id: as `engine.BranchDecoder`'s.
    n_ctx: KV cells of the context (all prefixes and live branches of a
        batch share them).
    n_threads: CPU threads (default: the CPUs this process may use;
        llama.cpp's own default of 4 oversubscribes a 2-core machine, see
        benchmarks/results/llama_cpp_threads_cpu.md).
    lora_path: a GGUF LoRA applied at run time (scale 1), or None.
    tokenizer: the model's Hugging Face tokenizer (for `tokenize` and
        `detokenize`; the GGUF file's ids are the same).
    """

    def __init__(
        self,
        path: str,
        stop_ids: Sequence[int],
        pad_id: int,
        *,
        n_ctx: int = 8192,
        n_threads: Optional[int] = None,
        lora_path: Optional[str] = None,
        tokenizer: Any = None,
    ) -> None:
        self.path = str(path)
        self.lora_path = lora_path
        self.tokenizer = tokenizer
        self.stop_ids = sorted(set(stop_ids))
        self.pad_id = pad_id
        self.n_ctx = n_ctx
        self.n_threads = n_threads or available_cpus()
        self.tokens_evaluated = 0  # every token sent to llama_decode (benchmarks report it)
        self.share_tokens = True  # branches that start alike share those tokens (off: benchmarks' ablation)
        self.texts_per_call: Optional[int] = TEXTS_PER_CALL
        self._lock = threading.Lock()
        self._pid: Optional[int] = None
        self._open()

    # --- the llama.cpp context ---------------------------------------------
    def _open(self) -> None:
        L = import_llama_cpp()
        self._L = L
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self._model = L.llama_model_load_from_file(self.path.encode("utf8"), mparams)
        if not self._model:
            raise ValueError(Errors.E2081.format(path=self.path))
        cparams = L.llama_context_default_params()
        cparams.n_ctx = self.n_ctx
        cparams.n_batch = self.n_ctx
        cparams.n_ubatch = min(512, self.n_ctx)
        cparams.n_seq_max = MAX_SEQUENCES
        cparams.kv_unified = True  # seq_cp shares cells instead of copying buffers
        cparams.no_perf = True
        cparams.n_threads = cparams.n_threads_batch = self.n_threads
        self._ctx = L.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ValueError(Errors.E2081.format(path=self.path))
        if self.lora_path:
            self._lora = L.llama_adapter_lora_init(self._model, self.lora_path.encode("utf8"))
            adapters = (L.llama_adapter_lora_p_ctypes * 1)(self._lora)
            if not self._lora or L.llama_set_adapters_lora(self._ctx, adapters, 1, (ctypes.c_float * 1)(1.0)) != 0:
                raise ValueError(Errors.E2081.format(path=self.lora_path))
        self._memory = L.llama_get_memory(self._ctx)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self._model))
        self.n_ctx_train = L.llama_model_n_ctx_train(self._model)
        self._batch = L.llama_batch_init(self.n_ctx, 0, SEQS_PER_TOKEN)
        self._free = list(range(MAX_SEQUENCES - 1, -1, -1))
        self._cells = 0  # cells held by live prefixes and kept branches
        self._held = 0  # sequences held by them
        self._stop_set = set(self.stop_ids)
        self._pid = os.getpid()

    def _ensure_process(self) -> None:
        """In a forked process (`nlp.pipe(n_process=...)`), open a context of
        our own with one thread: the parent's context is not ours, and
        ggml's OpenMP thread pool, like torch's, hangs the first
        multi-threaded call after a fork. With several processes one thread
        each is also the right share of cores."""
        if self._pid != os.getpid():
            self.n_threads = 1
            self._open()

    def close(self) -> None:
        L = getattr(self, "_L", None)
        if L is None or self._pid != os.getpid():
            return
        L.llama_batch_free(self._batch)
        L.llama_free(self._ctx)
        L.llama_model_free(self._model)
        self._L = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __getstate__(self) -> Dict[str, Any]:
        keep = ("path", "stop_ids", "pad_id", "n_ctx", "n_threads", "lora_path", "tokenizer")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(
            state["path"], state["stop_ids"], state["pad_id"],
            n_ctx=state["n_ctx"], n_threads=state["n_threads"], lora_path=state.get("lora_path"),
            tokenizer=state.get("tokenizer"),
        )

    # --- sequences and batches ---------------------------------------------
    def _take(self, n: int) -> List[int]:
        if n > len(self._free):
            raise ValueError(Errors.E2082.format(needed=n, limit=MAX_SEQUENCES))
        return [self._free.pop() for _ in range(n)]

    def _drop(self, seqs: Sequence[int]) -> None:
        for seq in seqs:
            self._L.llama_memory_seq_rm(self._memory, seq, -1, -1)
            self._free.append(seq)

    def _run(self, tokens: Sequence[Tuple[int, int, Sequence[int], bool]]) -> List[int]:
        """Evaluate (token, position, sequences, wants logits) entries, in calls of at most n_ctx tokens; the batch index of each
        entry that wants logits, valid until the next call (the last call
        holds them all when they are in it: callers ask for logits in one
        call only). A token of several sequences is one cell of each; they
        must hold the same cells before it (llama.cpp masks its attention by
        the first)."""
        outputs: List[int] = []
        batch = self._batch
        for start in range(0, len(tokens), self.n_ctx):
            chunk = tokens[start : start + self.n_ctx]
            for i, (token, pos, seqs, logits) in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = len(seqs)
                for j, seq in enumerate(seqs):
                    batch.seq_id[i][j] = seq
                batch.logits[i] = logits
                if logits:
                    outputs.append(i)
            batch.n_tokens = len(chunk)
            status = self._L.llama_decode(self._ctx, batch)
            if status != 0:
                raise RuntimeError(Errors.E2083.format(status=status, tokens=len(chunk), n_ctx=self.n_ctx))
            self.tokens_evaluated += len(chunk)
        return outputs

    def _logits(self, index: int) -> numpy.ndarray:
        pointer = self._L.llama_get_logits_ith(self._ctx, index)
        return numpy.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))

    # --- Backend --------------------------------------------------------------
    def context_length(self) -> Optional[int]:
        """The model's trained context or `n_ctx`, the smaller."""
        return min(x for x in (self.n_ctx_train, self.n_ctx) if x)

    def encode_prefixes(self, prefixes: Sequence[Sequence[int]]) -> Prefixes:
        if any(len(p) == 0 for p in prefixes):
            raise ValueError("Every prefix needs at least one token.")
        with self._lock:
            self._ensure_process()
            needed = sum(len(p) for p in prefixes)
            if needed > self.n_ctx:
                raise ValueError(Errors.E2084.format(needed=needed, n_ctx=self.n_ctx))
            seqs = self._take(len(prefixes))
            entries = [(int(t), pos, (seq,), False) for seq, prefix in zip(seqs, prefixes) for pos, t in enumerate(prefix)]
            try:
                self._run(entries)
            except Exception:
                self._drop(seqs)
                raise
            self._cells += needed
            self._held += len(seqs)
            return Prefixes(seqs, [len(p) for p in prefixes])

    def encode_with_branches(
        self,
        prefixes: Sequence[Sequence[int]],
        suffixes: Sequence[Sequence[int]],
        max_new_tokens: int,
        first_token_bias: Optional[Dict[int, float]] = None,
        keep: bool = False,
    ) -> Tuple[Prefixes, List[Generation]]:
        handle = self.encode_prefixes(prefixes)
        text_index = [i for i in range(len(prefixes)) for _ in suffixes]
        every = [s for _ in prefixes for s in suffixes]
        try:
            return handle, self.decode(handle, text_index, every, max_new_tokens, first_token_bias, keep)
        except BaseException:
            self.release(handle)
            raise

    def release(self, prefixes: Prefixes) -> None:
        with self._lock:
            if self._pid == os.getpid() and prefixes.seqs:
                self._drop(prefixes.seqs)
                self._cells -= sum(prefixes.lengths)
                self._held -= len(prefixes.seqs)
            prefixes.seqs = []

    def release_branches(self, branches: Sequence[Optional[KeptBranch]]) -> None:
        with self._lock:
            self._release_kept(branches)

    def _release_kept(self, branches: Sequence[Optional[KeptBranch]]) -> None:
        if self._pid != os.getpid():
            return
        for branch in branches:
            if branch is not None and branch.seq >= 0:
                self._drop([branch.seq])
                self._cells -= branch.cells
                self._held -= 1
                branch.seq = -1  # released twice is released once

    def decode(
        self,
        prefixes: Prefixes,
        text_index: Sequence[int],
        suffixes: Sequence[Sequence[int]],
        max_new_tokens: Union[int, Sequence[int]],
        first_token_bias: Optional[Dict[int, float]] = None,
        keep: bool = False,
    ) -> List[Generation]:
        if any(len(s) == 0 for s in suffixes):
            raise ValueError("Every branch suffix needs at least one token.")
        starts = [(prefixes.seqs[i], prefixes.lengths[i], list(suffix)) for i, suffix in zip(text_index, suffixes)]
        return self._decode_from(starts, max_new_tokens, first_token_bias, keep)

    def fork(
        self,
        branches: Sequence[KeptBranch],
        suffixes: Sequence[Sequence[int]],
        max_new_tokens: Union[int, Sequence[int]],
    ) -> List[Generation]:
        if len(branches) != len(suffixes) or any(b is None or b.seq < 0 for b in branches):
            raise ValueError("fork needs one kept, unreleased branch per suffix.")
        starts = [(b.seq, b.pos, [b.last, *suffix]) for b, suffix in zip(branches, suffixes)]
        return self._decode_from(starts, max_new_tokens, None, False)

    def _decode_from(
        self,
        starts: Sequence[Tuple[int, int, List[int]]],
        max_new_tokens: Union[int, Sequence[int]],
        first_token_bias: Optional[Dict[int, float]],
        keep: bool,
    ) -> List[Generation]:
        """Branches that copy sequence `seq` and continue it with `tokens` from
        position `pos`, for each (seq, pos, tokens) of `starts`, in groups
        that fit the free sequences and cells."""
        n = len(starts)
        if n == 0:
            return []
        limits = branch_bounds(max_new_tokens, n)
        with self._lock:
            self._ensure_process()
            out: List[Generation] = []
            begin = 0
            try:
                while begin < n:
                    # As many branches as free sequences and cells allow.
                    end, cells = begin, 0
                    while end < n and end - begin < len(self._free):
                        cost = len(starts[end][2]) + limits[end]
                        if end > begin and self._cells + cells + cost > self.n_ctx:
                            break
                        cells += cost
                        end += 1
                    if end == begin:  # every sequence is held by live prefixes and kept branches
                        raise ValueError(Errors.E2082.format(needed=self._held + 1, limit=MAX_SEQUENCES))
                    if self._cells + cells > self.n_ctx:
                        raise ValueError(Errors.E2084.format(needed=self._cells + cells, n_ctx=self.n_ctx))
                    out.extend(self._decode_group(starts[begin:end], limits[begin:end], first_token_bias, keep))
                    begin = end
            except BaseException:
                self._release_kept([gen.branch for gen in out])
                raise
            return out

    def _decode_group(
        self,
        starts: Sequence[Tuple[int, int, List[int]]],
        limits: Sequence[int],
        first_token_bias: Optional[Dict[int, float]],
        keep: bool,
    ) -> List[Generation]:
        n = len(starts)
        seqs = self._take(n)
        tokens: List[List[int]] = [[] for _ in range(n)]
        logprobs: List[List[float]] = [[] for _ in range(n)]
        stopped = [False] * n
        kept: List[Optional[KeptBranch]] = [None] * n
        live = list(range(n))
        try:
            for k, (source, _, _) in enumerate(starts):
                self._L.llama_memory_seq_cp(self._memory, source, seqs[k], -1, -1)
            positions = [start + len(suffix) for _, start, suffix in starts]
            entries, ends = _shared_entries(starts, seqs, SEQS_PER_TOKEN if self.share_tokens else 1)
            outputs = self._run(entries)
            first_rows = [outputs[end] for end in ends]
            step = 0
            while live:
                rows = first_rows if step == 0 else outputs
                logits = numpy.stack([self._logits(rows[r]) for r in range(len(live))])
                top = logits.max(axis=1, keepdims=True)
                log_total = top[:, 0] + numpy.log(numpy.exp(logits - top).sum(axis=1))
                choose = logits
                if step == 0 and first_token_bias:  # a bias on log-probs is one on logits
                    choose = logits.copy()
                    choose[:, list(first_token_bias)] += numpy.asarray(list(first_token_bias.values()), dtype=logits.dtype)
                next_ids = choose.argmax(axis=1)
                chosen = logits[numpy.arange(len(live)), next_ids] - log_total
                entries, still = [], []
                for r, k in enumerate(live):
                    token = int(next_ids[r])
                    tokens[k].append(token)
                    logprobs[k].append(float(chosen[r]))
                    stopped[k] = token in self._stop_set
                    if stopped[k] or len(tokens[k]) >= limits[k]:
                        if keep and self._can_keep(len(starts[k][2]) + len(tokens[k]) - 1):
                            kept[k] = KeptBranch(seqs[k], positions[k], token, len(starts[k][2]) + len(tokens[k]) - 1)
                            self._cells += kept[k].cells
                            self._held += 1
                        else:
                            self._drop([seqs[k]])
                        continue
                    still.append(k)
                    entries.append((token, positions[k], (seqs[k],), True))
                    positions[k] += 1
                live = still
                step += 1
                if live:
                    outputs = self._run(entries)
        except BaseException:
            self._release_kept(kept)
            raise
        finally:
            self._drop([seqs[k] for k in live])
        return [Generation(t, lp, s, b) for t, lp, s, b in zip(tokens, logprobs, stopped, kept)]

    def _can_keep(self, cells: int) -> bool:
        return self._held < MAX_SEQUENCES - RESERVED_SEQUENCES and self._cells + cells <= KEPT_CELL_SHARE * self.n_ctx


def _shared_entries(
    starts: Sequence[Tuple[int, int, List[int]]], seqs: Sequence[int], most: int
) -> Tuple[List[Tuple[int, int, Tuple[int, ...], bool]], List[int]]:
    """The `_run` entries of the branches' suffixes (branch k continues
    sequence `starts[k][0]` from position `starts[k][1]` as sequence
    `seqs[k]`), and for each branch the index of its last token among the
    entries that want logits.

    A suffix token is one entry for all branches that start from the same
    sequence and position with the same tokens up to and including it (at
    most `most` of them), as in a trie: their cells before it are
    the same, so one evaluation serves them all. Entries come in trie
    order, each after the one before it in its branches."""
    index: Dict[Tuple[Any, ...], int] = {}  # (parent entry or start, token) -> entry
    tokens: List[Tuple[int, int]] = []
    owners: List[List[int]] = []
    wants: List[bool] = []
    last: List[int] = []
    for (source, start, suffix), seq in zip(starts, seqs):
        parent: Tuple[Any, ...] = ("start", source, start)
        for j, token in enumerate(suffix):
            key = (*parent, int(token))
            entry = index.get(key)
            if entry is None or len(owners[entry]) >= most:
                entry = index[key] = len(tokens)
                tokens.append((int(token), start + j))
                owners.append([])
                wants.append(False)
            owners[entry].append(seq)
            parent = ("entry", entry)
        wants[parent[1]] = True
        last.append(parent[1])
    rank = {entry: r for r, entry in enumerate(e for e, w in enumerate(wants) if w)}
    entries = [(token, pos, tuple(seqs_), want) for (token, pos), seqs_, want in zip(tokens, owners, wants)]
    return entries, [rank[entry] for entry in last]
