"""The `padellm_ner` component."""
import logging
import unicodedata
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy
import srsly
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc, SpanGroup
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.util import SimpleFrozenList
from spacy.vocab import Vocab
from thinc.api import Config, Model, Optimizer

from .alignment import align_mentions
from .errors import Errors, Warnings
from .memory.settings import InfLLMSettings
from .models.hf_calls import LOAD_LOCK
from .prompt import prompt_text
from .segments import SENTENCE_SPLITS, Segment, TrainedLengths, default_lengths, halves, split_segments
from .schemes import get_scheme
from .types import ALIGNMENT_MODES, DocPrediction, new_counter

logger = logging.getLogger("spacy_padellm")

DEFAULT_LABELS = ("PER", "ORG", "LOC", "MISC")
DEFAULT_MODEL_CONFIG = """
[model]
@architectures = "spacy_padellm.CausalLM.v1"
"""
DEFAULT_MODEL = Config().from_str(DEFAULT_MODEL_CONFIG)["model"]
EXTENSION = "padellm"
# `expand` alignment may widen a mention to whole tokens; beyond this many
# times the mention's length it has grown into other words (a Chinese
# mention in a sentence that an English tokenizer keeps as one token).
MAX_EXPANSION = 3
# Training texts whose lengths set the segment budget (the first ones read).
MAX_LENGTH_SAMPLE = 20000
# A segment is decoded again in halves (`resplits`) when its decoding shows
# one of these: the model repeated or invented mentions, or a count reached
# `max_count`; or when a count's probability is below `resplit_below`.
CROWDED = ("repeated_mentions", "hallucinated_mentions", "possible_undercounts")


def install_extensions() -> None:
    """`doc._.padellm`: per-doc fallback counts and decoding statistics. It
    lives in `doc.user_data`, so it survives `nlp.pipe(n_process=...)`."""
    if not Doc.has_extension(EXTENSION):
        Doc.set_extension(EXTENSION, default=None)


@Language.factory(
    "padellm_ner",
    assigns=["doc.ents", "doc.spans"],
    default_config={
        "model": DEFAULT_MODEL,
        "labels": None,
        "label_definitions": {},
        "template": "ner.v1",
        "decoding": "parallel",
        "spans_key": "padellm",
        "max_count": 16,
        "max_count_tokens": 4,
        "max_mention_tokens": 24,
        "zero_count_penalty": 0.0,
        "max_text_tokens": None,
        "segment_tokens": None,
        "sentence_split": "auto",
        "batch_size": 16,
        "alignment_mode": "expand",
        "annotate_ents": True,
        "overwrite_ents": False,
        "threshold": 0.0,
        "keep_below_threshold": False,
        "resplits": 2,
        "resplit_below": 0.8,
        "memory": None,
        "scorer": {"@scorers": "spacy_padellm.ner_scorer.v1"},
    },
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_padellm_ner(
    nlp: Language,
    name: str,
    model: Model,
    labels: Optional[List[str]],
    label_definitions: Dict[str, str],
    template: str,
    decoding: str,
    spans_key: str,
    max_count: int,
    max_count_tokens: int,
    max_mention_tokens: int,
    zero_count_penalty: float,
    max_text_tokens: Optional[int],
    segment_tokens: Optional[int],
    sentence_split: str,
    batch_size: int,
    alignment_mode: str,
    annotate_ents: bool,
    overwrite_ents: bool,
    threshold: float,
    keep_below_threshold: bool,
    resplits: int,
    resplit_below: float,
    memory: Optional[InfLLMSettings],
    scorer: Optional[Callable],
) -> "PaDeLLMNER":
    """Named entities from a causal LM with PaDeLLM-NER parallel decoding.

    See the README's configuration reference for every setting.
    """
    return PaDeLLMNER(
        nlp.vocab,
        model,
        name,
        labels=labels,
        label_definitions=label_definitions,
        template=template,
        decoding=decoding,
        spans_key=spans_key,
        max_count=max_count,
        max_count_tokens=max_count_tokens,
        max_mention_tokens=max_mention_tokens,
        zero_count_penalty=zero_count_penalty,
        max_text_tokens=max_text_tokens,
        segment_tokens=segment_tokens,
        sentence_split=sentence_split,
        batch_size=batch_size,
        alignment_mode=alignment_mode,
        annotate_ents=annotate_ents,
        overwrite_ents=overwrite_ents,
        threshold=threshold,
        keep_below_threshold=keep_below_threshold,
        resplits=resplits,
        resplit_below=resplit_below,
        memory=memory,
        scorer=scorer,
    )


def _resplit(whole: DocPrediction, parts: Sequence[DocPrediction]) -> DocPrediction:
    """The halves' spans, and the whole segment's where they overlap none of
    them (an entity cut by neither half but lost at the cut); every
    decoding's fallbacks, and the resplit counted."""
    merged = DocPrediction(fallbacks=Counter({"resplit_segments": 1}))
    for part in parts:
        merged.add(part)
    taken = [(span.start, span.end) for span in merged.spans]
    kept = [span for span in whole.spans if not any(a < span.end and span.start < b for a, b in taken)]
    merged.add(replace(whole, spans=kept))
    return merged


def _add_segment(pred: DocPrediction, seg: Segment, text: str, text_pred: Any) -> None:
    """Mentions aligned inside their segment, and its counts, into the doc's."""
    spans, counts = align_mentions(text, text_pred.mentions, seg.start)
    pred.spans.extend(span for span in spans if seg.keeps(span.start))
    pred.fallbacks.update(text_pred.fallbacks)
    pred.fallbacks.update(counts)
    pred.generated_tokens += text_pred.generated_tokens
    pred.decoding_steps += text_pred.decoding_steps


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(Errors.E2003.format(name=name, value=value))


def _check_labels(labels: Sequence[str], definitions: Dict[str, str]) -> None:
    for label in labels:
        if not isinstance(label, str) or not label.strip() or "\n" in label:
            raise ValueError(Errors.E2005.format(label=label))
    dupes = sorted(label for label, n in Counter(labels).items() if n > 1)
    if dupes:
        raise ValueError(Errors.E2007.format(dupes=dupes))
    extra = sorted(set(definitions) - set(labels))
    if extra:
        raise ValueError(Errors.E2006.format(extra=extra))


def _read_cfg(path: Path) -> Dict[str, Any]:
    """The component's saved `cfg`, or an error that names the file."""
    try:
        cfg = srsly.read_json(path)
    except ValueError as err:
        raise ValueError(Errors.E2072.format(path=path, reason=f"not valid JSON ({err})")) from err
    if not isinstance(cfg, dict):
        raise ValueError(Errors.E2072.format(path=path, reason="not a JSON object"))
    return cfg


# The cfg entries that `initialize` or `add_label` set, which no config holds.
LEARNED_CFG = ("labels", "labels_configured", "trained_text_tokens")


class PaDeLLMNER(TrainablePipe):
    """Predicts entities with a causal LM: counts per label, then mentions.

    Every predicted span goes to `doc.spans[spans_key]` (nested ones too) with
    its probability in `attrs["scores"]`; `doc.ents` gets a non-overlapping
    selection. Fallbacks taken at run time are counted in `fallback_counts`
    and in `doc._.padellm`.
    """

    def __init__(
        self,
        vocab: Vocab,
        model: Model,
        name: str = "padellm_ner",
        *,
        labels: Optional[Sequence[str]] = None,
        label_definitions: Optional[Dict[str, str]] = None,
        template: str = "ner.v1",
        decoding: str = "parallel",
        spans_key: str = "padellm",
        max_count: int = 16,
        max_count_tokens: int = 4,
        max_mention_tokens: int = 24,
        zero_count_penalty: float = 0.0,
        max_text_tokens: Optional[int] = None,
        segment_tokens: Optional[int] = None,
        sentence_split: str = "auto",
        batch_size: int = 16,
        alignment_mode: str = "expand",
        annotate_ents: bool = True,
        overwrite_ents: bool = False,
        threshold: float = 0.0,
        keep_below_threshold: bool = False,
        resplits: int = 2,
        resplit_below: float = 0.8,
        memory: Optional[InfLLMSettings] = None,
        scorer: Optional[Callable] = None,
    ) -> None:
        from .prompt import PromptTemplate

        self.scheme = get_scheme(decoding)
        if sentence_split not in SENTENCE_SPLITS:
            raise ValueError(Errors.E2073.format(value=sentence_split, options=list(SENTENCE_SPLITS)))
        if alignment_mode not in ALIGNMENT_MODES:
            raise ValueError(Errors.E2002.format(mode=alignment_mode, options=list(ALIGNMENT_MODES)))
        for key, value in (
            ("max_count", max_count),
            ("max_count_tokens", max_count_tokens),
            ("max_mention_tokens", max_mention_tokens),
            ("batch_size", batch_size),
        ):
            _check_positive(key, value)
        if max_text_tokens is not None:
            _check_positive("max_text_tokens", max_text_tokens)
        if segment_tokens is not None and segment_tokens != 0:
            _check_positive("segment_tokens", segment_tokens)
        for key, value in (("threshold", threshold), ("resplit_below", resplit_below)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(Errors.E2071.format(name=key, value=value))
        if isinstance(resplits, bool) or not isinstance(resplits, int) or resplits < 0:
            raise ValueError(Errors.E2074.format(value=resplits))
        if labels is not None and len(labels) == 0:
            raise ValueError(Errors.E2070)
        if isinstance(zero_count_penalty, bool) or not isinstance(zero_count_penalty, (int, float)) or zero_count_penalty < 0:
            raise ValueError(Errors.E2040.format(value=zero_count_penalty))
        if memory is not None and not isinstance(memory, InfLLMSettings):
            raise ValueError(Errors.E2100.format(
                name="@misc", what='"spacy_padellm.InfLLMMemory.v1" (a memory block) or null', value=memory
            ))
        if memory is not None and decoding != "parallel":
            raise ValueError(Errors.E2104.format(decoding=decoding))
        definitions = dict(label_definitions or {})
        _check_labels(list(labels or []), definitions if labels else {})
        self.scheme.check_template(PromptTemplate(template))  # fails early on an unknown or unfit template
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.cfg: Dict[str, Any] = {
            "labels": list(labels) if labels else [],
            "labels_configured": bool(labels),
            "label_definitions": definitions,
            "template": template,
            "decoding": decoding,
            "spans_key": spans_key,
            "max_count": max_count,
            "max_count_tokens": max_count_tokens,
            "max_mention_tokens": max_mention_tokens,
            "zero_count_penalty": float(zero_count_penalty),
            "max_text_tokens": max_text_tokens,
            "segment_tokens": segment_tokens,
            "sentence_split": sentence_split,
            "trained_text_tokens": None,
            "batch_size": batch_size,
            "alignment_mode": alignment_mode,
            "annotate_ents": annotate_ents,
            "overwrite_ents": overwrite_ents,
            "threshold": float(threshold),
            "keep_below_threshold": bool(keep_below_threshold),
            "resplits": resplits,
            "resplit_below": float(resplit_below),
        }
        # The architecture points a default model at the parallel adapter; behind
        # the memory it takes the one trained with preceding text instead.
        adapter_kind = "context" if memory is not None else decoding
        if adapter_kind != "parallel":
            from .models.architectures import use_default_adapter

            use_default_adapter(model, adapter_kind)
        self.memory_settings = memory
        self.fallback_counts: Counter = new_counter()
        self._warned: set = set()
        self._decoder: Any = None
        self._memory: Any = None  # the engine's memory capability, with the decoder
        self._text_budget: Optional[int] = None
        install_extensions()

    # --- labels -----------------------------------------------------------
    @property
    def labels(self) -> Tuple[str, ...]:
        return tuple(self.cfg["labels"] or DEFAULT_LABELS)

    @property
    def label_data(self) -> List[str]:
        return list(self.labels)

    @property
    def spans_key(self) -> str:
        return self.cfg["spans_key"]

    def add_label(self, label: str) -> int:
        """Add to the current labels (the defaults too, when none were set);
        a label added here counts as configured."""
        if label in self.labels:
            return 0
        _check_labels([*self.labels, label], {})
        self.cfg["labels"] = [*self.labels, label]
        self.cfg["labels_configured"] = True
        self._decoder = None
        return 1

    # --- model --------------------------------------------------------------
    @property
    def shim(self) -> Any:
        from .models.architectures import get_shim

        return get_shim(self.model)

    @property
    def is_loaded(self) -> bool:
        return self.shim.is_loaded

    def _ensure_loaded(self) -> None:
        """The component works straight after `add_pipe`: the base model loads
        on first use when `initialize` was not called. Threads that reach
        it at once wait for one load: the lock is the one every load of the
        process holds (`models/hf_calls.py`)."""
        if self._decoder is not None and self.is_loaded:
            return
        with LOAD_LOCK:
            if not self.is_loaded:
                logger.info("Loading the model of '%s' on first use", self.name)
                self.model.initialize()
            if self._decoder is None:
                self._decoder = self._build_decoder()

    def _build_decoder(self) -> Any:
        from .decoding import stop_token_ids
        from .prompt import PromptTemplate, PromptTokenizer

        tokenizer = self.shim.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        engine = self.shim.make_engine(stop_token_ids(tokenizer), pad_id)
        prompts = PromptTokenizer(tokenizer, PromptTemplate(self.cfg["template"]), self.cfg["label_definitions"])
        self._text_budget = self._compute_text_budget(prompts, engine.context_length())
        self._memory = self._memory_on(engine) if self.memory_settings is not None else None
        return self.scheme.decoder(engine, prompts, self.labels, self.cfg)

    def _memory_on(self, engine: Any) -> Any:
        """The engine's long-document memory, or an error naming what lacks it."""
        from .memory.engine import UnsupportedModel

        make = getattr(engine, "memory", None)
        if make is None:
            reason = f"the {type(engine).__name__} backend has no memory"
            raise ValueError(Errors.E2103.format(name=self.name, reason=reason))
        try:
            return make(self.memory_settings)
        except UnsupportedModel as err:
            raise ValueError(Errors.E2103.format(name=self.name, reason=err)) from err

    def _texts_per_call(self) -> int:
        """`batch_size`, or fewer where the backend asks for fewer texts per
        call (`Backend.texts_per_call`)."""
        cap = getattr(getattr(self._decoder, "engine", None), "texts_per_call", None)
        return min(self.cfg["batch_size"], cap) if cap else self.cfg["batch_size"]

    def context_length(self) -> Optional[int]:
        """The longest sequence (text, branch and generation) decoded exactly:
        the backend's (`Backend.context_length`)."""
        engine = getattr(self._decoder, "engine", None)
        return engine.context_length() if engine is not None else self.shim.context_length()

    def _compute_text_budget(self, prompts: Any, context: Optional[int]) -> Optional[int]:
        """Model tokens left for the text once the prompt around it, the
        longest branch and the generation bound are accounted for."""
        configured = self.cfg["max_text_tokens"]
        if context is None:
            return configured
        overhead = len(prompts.prefix("")) + self.scheme.branch_tokens(prompts, self.labels, self.cfg)
        budget = context - overhead
        if budget < 1:
            raise ValueError(Errors.E2020.format(limit=context, needed=overhead))
        return min(budget, configured) if configured else budget

    # --- prediction ---------------------------------------------------------
    def _count_tokens(self, text: str) -> int:
        return self._count_many([text])[0]

    def _count_many(self, texts: Sequence[str]) -> List[int]:
        """Model tokens of each text, in one batched tokenizer call."""
        if not texts:
            return []
        ids = self.shim.tokenizer([prompt_text(t) for t in texts], add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    @property
    def segment_budget(self) -> Optional[int]:
        """Most model tokens of text per segment; None: docs are not
        segmented (`segment_tokens = 0`). The configured `segment_tokens`,
        else what `initialize` derived from the training texts, else the
        shipped model's; never more than the context leaves (`max_text_tokens`)."""
        configured = self.cfg.get("segment_tokens")
        if configured == 0:
            return None
        return self._within_context(configured or self.trained_lengths.budget)

    @property
    def sentence_limit(self) -> int:
        """The longest sentence decoded whole: the 99th percentile of the
        training texts (what `initialize` saw, else the shipped model's),
        within the context."""
        return self._within_context(self.trained_lengths.longest)

    @property
    def trained_lengths(self) -> TrainedLengths:
        learned = self.cfg.get("trained_text_tokens")
        return TrainedLengths(*learned) if learned else default_lengths()

    def _within_context(self, tokens: int) -> int:
        return min(tokens, self._text_budget) if self._text_budget else tokens

    def _segments(self, doc: Doc) -> List[Segment]:
        budget = self.segment_budget
        if budget is not None:
            piece = self._within_context(self.trained_lengths.piece)
            split = self.cfg.get("sentence_split", "auto")
            return split_segments(doc, self._count_many, budget, self.sentence_limit, piece, split)
        if self._text_budget is not None:
            return split_segments(doc, self._count_many, self._text_budget, split="rules")
        text = doc.text
        return [Segment(0, len(text), 0, len(text))] if text.strip() else []

    def predict(self, docs: Iterable[Doc]) -> List[DocPrediction]:
        """Decode every doc; one `DocPrediction` per doc, in order.

        Each doc is decoded in segments of whole sentences (see
        `segments.py`); the segments of all docs are batched together.
        Empty and whitespace-only docs are not sent to the model.
        """
        docs = list(docs)
        preds = [DocPrediction(fallbacks=Counter()) for _ in docs]
        if not any(doc.text.strip() for doc in docs):
            return preds
        self.shim.ensure_fork_safe()
        self._ensure_loaded()
        self.shim.merge_for_inference()
        items: List[Tuple[int, Segment]] = []
        doc_texts = [doc.text for doc in docs]  # `Doc.text` joins every token on each call
        for i, doc in enumerate(docs):
            segments = self._segments(doc)
            preds[i].segments = len(segments)
            if len(segments) > 1:
                preds[i].fallbacks["segmented_docs" if self.segment_budget else "windowed_docs"] += 1
            items.extend((i, segment) for segment in segments)
        size = self._texts_per_call()
        if self._memory is not None:
            self._decode_with_memory(docs, doc_texts, items, preds, size)
            return preds
        for (i, _), outcome in zip(items, self._decode_segments(docs, doc_texts, items, size)):
            preds[i].add(outcome)
        return preds

    def _decode_segments(
        self, docs: List[Doc], doc_texts: List[str], items: List[Tuple[int, Segment]], size: int, depth: int = 0
    ) -> List[DocPrediction]:
        """One prediction per (doc index, segment) item, in order. A segment
        too crowded for the model (see CROWDED, or a count less likely than
        `resplit_below`) is cut in two and its halves decoded again, up to
        `resplits` times: a list of names or a results table that the
        sentence split left whole reads to the model like one sentence with
        too many entities, and it stops early, repeats itself or is unsure
        how many there are."""
        outcomes: List[DocPrediction] = []
        least_sure: List[float] = []  # each segment's least probable count
        for begin in range(0, len(items), size):
            chunk = items[begin : begin + size]
            texts = [prompt_text(doc_texts[i][seg.start : seg.end]) for i, seg in chunk]
            for (i, seg), text, text_pred in zip(chunk, texts, self._decoder(texts)):
                outcome = DocPrediction(fallbacks=Counter())
                _add_segment(outcome, seg, text, text_pred)
                outcomes.append(outcome)
                least_sure.append(min(text_pred.count_scores.values(), default=1.0))
        if depth >= self.cfg["resplits"]:
            return outcomes
        split = self.cfg.get("sentence_split", "auto")
        again: List[Tuple[int, Segment]] = []
        parents: List[int] = []
        for k, ((i, seg), outcome) in enumerate(zip(items, outcomes)):
            unsure = least_sure[k] < self.cfg["resplit_below"]
            if not unsure and not any(outcome.fallbacks[kind] for kind in CROWDED):
                continue
            cut = halves(docs[i], seg, [(span.start, span.end) for span in outcome.spans], split)
            if cut is not None:
                again.extend((i, half) for half in cut)
                parents.append(k)
        if again:
            parts = self._decode_segments(docs, doc_texts, again, size, depth + 1)
            for n, k in enumerate(parents):
                outcomes[k] = _resplit(outcomes[k], parts[2 * n : 2 * n + 2])
        return outcomes

    def _decode_with_memory(
        self, docs: List[Doc], doc_texts: List[str], items: List[Tuple[int, Segment]], preds: List[DocPrediction], size: int
    ) -> None:
        """Each doc's segments in order, each behind the memory of the text
        before it (`memory/documents.py`)."""
        from .memory.documents import StreamedSegment, decode_behind_memory

        per_doc: List[List[Segment]] = [[] for _ in docs]
        for i, seg in items:
            per_doc[i].append(seg)
        streamed: List[List[StreamedSegment]] = []
        for i, segments in enumerate(per_doc):
            text, done, doc_items = doc_texts[i], 0, []
            for seg in segments:
                doc_items.append(StreamedSegment(prompt_text(text[seg.start : seg.end]), prompt_text(text[done : max(done, seg.end)])))
                done = max(done, seg.end)
            streamed.append(doc_items)
            if len(segments) > 1:
                preds[i].fallbacks["memory_docs"] += 1
        results = decode_behind_memory(self._decoder, self._memory, streamed, size)
        for i, (segments, doc_items, text_preds) in enumerate(zip(per_doc, streamed, results)):
            for seg, item, text_pred in zip(segments, doc_items, text_preds):
                _add_segment(preds[i], seg, item.text, text_pred)

    def _place(self, doc: Doc, char_span: Any) -> Optional[Any]:
        """The token span of a placed mention, or None when it cannot be
        one: no span under `alignment_mode`, grown by `expand` to more than
        MAX_EXPANSION times the mention, or holding control characters."""
        mode = self.cfg["alignment_mode"]
        span = doc.char_span(char_span.start, char_span.end, label=char_span.label, alignment_mode=mode)
        if span is None or len(span) == 0:
            return None
        if mode == "expand" and len(span.text) > MAX_EXPANSION * (char_span.end - char_span.start):
            return None
        if any(unicodedata.category(c) == "Cc" and not c.isspace() for c in span.text):
            return None
        return span

    def set_annotations(self, docs: Iterable[Doc], preds: Sequence[DocPrediction]) -> None:
        from .resolve import merge_with_existing, resolve_label_conflicts, select_flat

        threshold = self.cfg.get("threshold", 0.0)
        keep_below = self.cfg.get("keep_below_threshold", False)
        batch = Counter()
        for doc, pred in zip(docs, preds):
            fallbacks = Counter(pred.fallbacks)
            spans, scores = [], []
            for char_span in pred.spans:
                span = self._place(doc, char_span)
                if span is None:
                    fallbacks["misaligned_mentions"] += 1
                    continue
                spans.append(span)
                scores.append(char_span.score)
            spans, scores, conflicts = resolve_label_conflicts(spans, scores)
            confident = [k for k, score in enumerate(scores) if score >= threshold]
            below = len(spans) - len(confident)
            if not keep_below:
                spans, scores = [spans[k] for k in confident], [scores[k] for k in confident]
                confident = list(range(len(spans)))
            group = SpanGroup(doc, name=self.spans_key, spans=spans)
            group.attrs["scores"] = numpy.asarray(scores, dtype="float32")
            doc.spans[self.spans_key] = group
            if self.cfg["annotate_ents"]:
                flat = select_flat([spans[k] for k in confident], [scores[k] for k in confident])
                doc.ents = merge_with_existing(flat, doc.ents, self.cfg["overwrite_ents"])
            fallbacks = Counter({k: v for k, v in fallbacks.items() if v})
            doc._.set(
                EXTENSION,
                {
                    "fallbacks": dict(fallbacks),
                    "label_conflicts": conflicts,
                    "below_threshold": below,
                    "segments": pred.segments,
                    "generated_tokens": pred.generated_tokens,
                    "decoding_steps": pred.decoding_steps,
                },
            )
            batch.update(fallbacks)
        self._record(batch)

    def _record(self, batch: Counter) -> None:
        """Add a batch's fallbacks to the totals; warn once per kind."""
        self.fallback_counts.update(batch)
        if batch:
            logger.debug("%s fallbacks in batch: %s", self.name, dict(batch))
        for kind in sorted(set(batch) - self._warned):
            self._warned.add(kind)
            if kind == "windowed_docs":
                logger.warning(Warnings.W2001.format(limit=self._text_budget, n_windows="several"))
            elif kind == "memory_docs":
                logger.info(
                    "%s: docs of several segments are decoded behind the long-document memory; "
                    "counted as 'memory_docs'.", self.name,
                )
            elif kind == "segmented_docs":
                logger.info(
                    "%s: docs longer than %s model tokens are decoded in segments of whole sentences; "
                    "counted as 'segmented_docs', segments per doc in doc._.%s['segments'].",
                    self.name, self.segment_budget, EXTENSION,
                )
            elif kind == "resplit_segments":
                logger.info(
                    "%s: segments too crowded for the model are decoded again in halves; "
                    "counted as 'resplit_segments'.", self.name,
                )
            else:
                logger.warning(
                    "%s: first fallback of kind '%s' (%d in this batch). Totals are in "
                    "nlp.get_pipe(%r).fallback_counts, per doc in doc._.%s.",
                    self.name, kind, batch[kind], self.name, EXTENSION,
                )

    def reset_fallback_counts(self) -> None:
        self.fallback_counts = new_counter()

    # --- training -----------------------------------------------------------
    def _prompts(self) -> Any:
        self._ensure_loaded()
        return self._decoder.prompts

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Optimizer] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """One gradient step on the packed branches of a batch of examples.

        Each text is encoded once, its label/mention branches packed behind
        it, several texts per row, and logits are computed only where a
        target is (see `training.py`). `drop` sets the rate of the model's dropout
        layers (LoRA dropout included) for this step.
        """
        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, "PaDeLLMNER.update")
        docs = [eg.reference for eg in examples if eg.reference.text.strip()]
        if not docs:
            return losses
        self._ensure_loaded()
        if self.shim.prepare_for_training():
            self._decoder = None
        prompts = self._prompts()
        max_count = self.cfg["max_count"]
        items = [self.scheme.training_item(doc, prompts, self.labels, self.spans_key, max_count) for doc in docs]
        items = self._drop_overlong(items)
        if not items:
            return losses
        self.shim.begin_step()
        inputs, targets = self.shim.training_batch(items, self._decoder.engine.pad_id, drop)
        logits, backprop = self.model.begin_update(inputs)
        loss, d_logits = self.get_loss(examples, (logits, targets))
        backprop(d_logits)
        if sgd is not None:
            self.finish_update(sgd)
        losses[self.name] += loss
        return losses

    def finish_update(self, sgd: Optimizer) -> None:
        """The optimizer step; an elastic adapter draws new ranks for the next."""
        super().finish_update(sgd)
        self.shim.end_step()

    def get_loss(self, examples: Iterable[Example], scores: Any) -> Tuple[float, Any]:
        """Mean cross-entropy over target tokens. `scores` is (logits, targets)."""
        from .training import loss_and_gradient

        logits, targets = scores
        return loss_and_gradient(logits, targets)

    def _drop_overlong(self, items: List[Any]) -> List[Any]:
        """Texts whose prefix plus longest branch exceeds the context are not
        trained on (the packed row itself may be longer)."""
        context = self.context_length()
        if context is None:
            return items
        kept = [item for item in items if item.max_position <= context]
        if len(kept) < len(items):
            logger.warning("%s: skipped %d training texts longer than the context (%d tokens)",
                           self.name, len(items) - len(kept), context)
        return kept

    # --- initialization -----------------------------------------------------
    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        labels: Optional[Sequence[str]] = None,
    ) -> None:
        """Load the model and settle the labels: given here, configured, or
        collected from the examples' gold entities and span group."""
        validate_get_examples(get_examples, "PaDeLLMNER.initialize")
        if labels is not None:
            if not labels:
                raise ValueError(Errors.E2004)
            _check_labels(list(labels), self.cfg["label_definitions"])
            self.cfg["labels"] = list(labels)
        elif not self.cfg["labels_configured"]:
            found = set()
            for example in get_examples():
                ref = example.reference
                found.update(span.label_ for span in ref.ents)
                found.update(span.label_ for span in ref.spans.get(self.spans_key, []))
            if found:
                self.cfg["labels"] = sorted(found)
        self.model.initialize()
        self._decoder = None
        self._record_text_lengths(get_examples)

    def _record_text_lengths(self, get_examples: Callable[[], Iterable[Example]]) -> None:
        """Derive the segment budget and the longest sentence decoded whole
        from the training texts' lengths, so that decoded segments look like
        what the model was trained on; saved with the pipeline
        (`cfg["trained_text_tokens"]`, see `segments.TrainedLengths`).
        Without annotated examples the shipped model's figures apply."""
        texts = []
        for example in get_examples():
            ref = example.reference
            # Only annotated texts are training data: `nlp.initialize()`
            # without examples passes a placeholder doc ("x y z").
            annotated = ref.has_annotation("ENT_IOB") or self.spans_key in ref.spans
            if annotated and ref.text.strip():
                texts.append(ref.text)
            if len(texts) >= MAX_LENGTH_SAMPLE:
                break
        if texts:
            self.cfg["trained_text_tokens"] = TrainedLengths.from_lengths(self._count_many(texts)).to_list()

    # --- serialization ------------------------------------------------------
    def _cfg_to_save(self) -> Dict[str, Any]:
        return dict(self.cfg)

    def _cfg_from_saved(self, cfg: Dict[str, Any]) -> None:
        """Restore what was learned from data (the labels). Every other
        setting is in the pipeline's config.cfg and reached the constructor,
        so `spacy.load(path, config={...})` overrides it as users expect."""
        for key in LEARNED_CFG:
            if key in cfg:
                self.cfg[key] = cfg[key]
        self._decoder = None

    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = SimpleFrozenList()) -> None:
        """Writes `cfg` and `model/` (base model reference + adapter files)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        srsly.write_json(path / "cfg", self._cfg_to_save())
        if "model" not in exclude:
            self.shim.to_disk(path / "model")

    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = SimpleFrozenList()) -> "PaDeLLMNER":
        path = Path(path)
        if not (path / "cfg").exists():
            raise ValueError(Errors.E2017.format(path=path, reason="cfg is missing"))
        self._cfg_from_saved(_read_cfg(path / "cfg"))
        if "model" not in exclude:
            self.shim.from_disk(path / "model")
        self._decoder = None  # a decoder built meanwhile would hold the old model
        return self

    def to_bytes(self, *, exclude: Iterable[str] = SimpleFrozenList()) -> bytes:
        msg: Dict[str, Any] = {"cfg": srsly.json_dumps(self._cfg_to_save())}
        if "model" not in exclude:
            msg["model"] = self.shim.to_bytes()
        return srsly.msgpack_dumps(msg)

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = SimpleFrozenList()) -> "PaDeLLMNER":
        msg = srsly.msgpack_loads(bytes_data)
        try:
            cfg = srsly.json_loads(msg["cfg"])
        except (KeyError, ValueError) as err:
            raise ValueError(Errors.E2072.format(path="the bytes given to from_bytes", reason=f"no valid cfg ({err})")) from err
        if not isinstance(cfg, dict):
            raise ValueError(Errors.E2072.format(path="the bytes given to from_bytes", reason="cfg is not a JSON object"))
        self._cfg_from_saved(cfg)
        if "model" not in exclude and "model" in msg:
            self.shim.from_bytes(msg["model"])
        self._decoder = None
        return self
