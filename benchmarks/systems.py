"""The rows of the decoding benchmark: how each system is built.

PaDeLLM and the autoregressive baseline come from `add_pipe` alone (the
shipped default adapters), or from saved pipelines. The context rows are a
spaCy pipeline trained with `spacy train` (e.g. the CNN `ner` of
configs/spacy_ner_cnn.cfg) and spacy-llm's `spacy.NER.v3` on the same base
model through `spacy_padellm.LocalCausalLM.v1`.
"""
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

import spacy
from spacy.language import Language
from spacy.tokens import Doc

LABELS = ["PER", "ORG", "LOC", "MISC"]
LABEL_REASONS = {"PER": "is a person", "ORG": "is an organisation", "LOC": "is a location", "MISC": "is another named entity"}


@dataclass
class System:
    name: str
    nlp: Language
    kind: str  # "padellm", "spacy-llm" or "spacy"
    limit: Optional[int] = None  # score on the first `limit` docs only (slow rows)
    notes: List[str] = field(default_factory=list)

    def padellm_pipe(self) -> Any:
        for _, pipe in self.nlp.pipeline:
            if hasattr(pipe, "fallback_counts"):
                return pipe
        return None

    def set_batch_size(self, size: int) -> None:
        """`nlp.pipe(batch_size=...)` hands the component that many docs; the
        component decodes `batch_size` texts together, so both are set."""
        pipe = self.padellm_pipe()
        if pipe is not None:
            pipe.cfg["batch_size"] = size
        if self.kind == "spacy-llm":
            self.nlp.get_pipe("llm")._model.batch_size = size

    def engine(self) -> Any:
        pipe = self.padellm_pipe()
        return getattr(getattr(pipe, "_decoder", None), "engine", None)

    def tokens_evaluated(self) -> Optional[int]:
        """Tokens the engine has evaluated so far (real tokens, no padding)."""
        return getattr(self.engine(), "tokens_evaluated", None)

    def on_torch(self) -> bool:
        from spacy_padellm.engine import BranchDecoder

        return isinstance(self.engine(), BranchDecoder)

    def generated_tokens(self) -> Optional[int]:
        if self.kind == "spacy-llm":
            return self.nlp.get_pipe("llm")._model.generated_tokens
        return None


LLAMA_CPP = {"@architectures": "spacy_padellm.LlamaCpp.v1"}


def padellm(mode: str, path: Optional[str] = None, device: Optional[str] = None, lang: str = "en", backend: str = "torch") -> System:
    """A PaDeLLM component in `mode`: from a saved pipeline, or from
    `add_pipe` on `spacy.blank(lang)` with the default model and that mode's
    shipped adapter. `device` (e.g. "cuda:0") places the model without
    needing cupy. `backend`: "torch" (CausalLM.v1) or "llama.cpp"
    (LlamaCpp.v1, the same model merged into a Q8_0 GGUF file)."""
    name = mode if backend == "torch" else f"{mode}, {backend}"
    if path:
        overrides = {"components.padellm_ner.model.device": device} if device else {}
        if backend != "torch":
            overrides = {"components.padellm_ner.model.@architectures": LLAMA_CPP["@architectures"]}
        system = System(name, spacy.load(path, config=overrides), "padellm", notes=[f"pipeline {path}"])
        decoding = system.padellm_pipe().cfg["decoding"]
        if decoding != mode:
            raise ValueError(f"{path} decodes {decoding!r}, not {mode!r}")
        return system
    nlp = spacy.blank(lang)
    config: dict = {"decoding": mode}
    if device:
        config["model"] = {"@architectures": "spacy_padellm.CausalLM.v1", "device": device}
    if backend != "torch":
        config["model"] = dict(LLAMA_CPP)
    nlp.add_pipe("padellm_ner", config=config)
    nlp.initialize()
    return System(name, nlp, "padellm", notes=["default model + shipped adapter", f"backend {backend}"])


def spacy_pipeline(name: str, path: str) -> System:
    return System(name, spacy.load(path), "spacy", notes=[f"pipeline {path}"])


def fewshot_examples(docs: Sequence[Doc], n: int) -> List[dict]:
    """spacy-llm NER.v3 examples (chain-of-thought form) from gold docs."""
    examples = []
    for doc in docs[:n]:
        spans = [{"text": e.text, "is_entity": True, "label": e.label_, "reason": LABEL_REASONS.get(e.label_, "is an entity")}
                 for e in doc.ents]
        examples.append({"text": doc.text, "spans": spans})
    return examples


def spacy_llm(train_docs: Sequence[Doc], n_examples: int, limit: int, max_new_tokens: int,
              device: Optional[str] = None) -> System:
    """spacy-llm's NER.v3, prompting SmolLM2-135M-Instruct (no adapter) with
    `n_examples` few-shot examples from the training data."""
    path = Path(tempfile.mkdtemp()) / "fewshot.json"
    path.write_text(json.dumps(fewshot_examples(train_docs, n_examples)))
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "llm",
        config={
            "task": {
                "@llm_tasks": "spacy.NER.v3",
                "labels": LABELS,
                "examples": {"@misc": "spacy.FewShotReader.v1", "path": str(path)},
            },
            "model": {"@llm_models": "spacy_padellm.LocalCausalLM.v1", "max_new_tokens": max_new_tokens, "device": device},
        },
    )
    return System("spacy-llm NER.v3", nlp, "spacy-llm", limit=limit,
                  notes=[f"{n_examples}-shot, SmolLM2-135M-Instruct base, scored on the first {limit} docs"])
