"""Decoding schemes: what differs between PaDeLLM and the autoregressive
baseline, behind one interface.

A scheme owns its prompt branches (and checks that the template has them),
its training targets, its parsing and its decode loop. The pipe, training
and the benchmarks ask the scheme instead of testing the mode's name, so a
third scheme is one more class here, not a change in each of them.
"""
from typing import Any, Callable, Dict, List, Mapping, Protocol, Sequence, runtime_checkable

from spacy.tokens import Doc

from .backend import Backend
from .errors import Errors
from .prompt import PromptTemplate, PromptTokenizer
from .types import TextPrediction

Decoder = Callable[[Sequence[str]], List[TextPrediction]]


@runtime_checkable
class DecodingScheme(Protocol):
    """settings: the component's cfg (max_count, max_count_tokens,
    max_mention_tokens, zero_count_penalty, ...)."""

    name: str

    def check_template(self, template: PromptTemplate) -> None:
        """Raise if the template lacks a segment the scheme needs."""

    def decoder(self, engine: Backend, prompts: PromptTokenizer, labels: Sequence[str], settings: Mapping[str, Any]) -> Decoder:
        """The decode loop over a batch of texts, on `engine`."""

    def branch_tokens(self, prompts: PromptTokenizer, labels: Sequence[str], settings: Mapping[str, Any]) -> int:
        """The most tokens behind a text's prefix: the longest branch plus
        its generation bound (what the context must leave room for)."""

    def training_item(self, doc: Doc, prompts: PromptTokenizer, labels: Sequence[str], spans_key: str, max_count: int) -> Any:
        """The text's prefix and its branches with their target tokens
        (`training.TrainingItem`)."""


class ParallelScheme:
    """PaDeLLM-NER: a count branch per label, then a branch per mention."""

    name = "parallel"

    def check_template(self, template: PromptTemplate) -> None:
        """The label, count and mention segments are in every template."""

    def decoder(self, engine: Backend, prompts: PromptTokenizer, labels: Sequence[str], settings: Mapping[str, Any]) -> Decoder:
        from .decoding import ParallelDecoding

        return ParallelDecoding(
            engine,
            prompts,
            labels,
            max_count=settings["max_count"],
            max_count_tokens=settings["max_count_tokens"],
            max_mention_tokens=settings["max_mention_tokens"],
            zero_count_penalty=settings.get("zero_count_penalty", 0.0),
        )

    def branch_tokens(self, prompts: PromptTokenizer, labels: Sequence[str], settings: Mapping[str, Any]) -> int:
        longest = prompts.max_branch_length(labels, settings["max_count"])
        return longest + max(settings["max_count_tokens"], settings["max_mention_tokens"])

    def training_item(self, doc: Doc, prompts: PromptTokenizer, labels: Sequence[str], spans_key: str, max_count: int) -> Any:
        from .training import make_item

        return make_item(doc, prompts, labels, spans_key, max_count)


class AutoregressiveScheme:
    """The baseline: one branch per text, every (label, mention) pair on one line."""

    name = "autoregressive"

    def check_template(self, template: PromptTemplate) -> None:
        template.structured_header()  # E2023 for a template without it

    @staticmethod
    def max_new_tokens(labels: Sequence[str], settings: Mapping[str, Any]) -> int:
        """Room for `max_count` mentions of `max_mention_tokens` tokens per label."""
        return len(labels) * settings["max_count"] * settings["max_mention_tokens"]

    def decoder(self, engine: Backend, prompts: PromptTokenizer, labels: Sequence[str], settings: Mapping[str, Any]) -> Decoder:
        from .autoregressive import AutoregressiveDecoding

        return AutoregressiveDecoding(engine, prompts, labels, max_new_tokens=self.max_new_tokens(labels, settings))

    def branch_tokens(self, prompts: PromptTokenizer, labels: Sequence[str], settings: Mapping[str, Any]) -> int:
        return len(prompts.structured_branch()) + self.max_new_tokens(labels, settings)

    def training_item(self, doc: Doc, prompts: PromptTokenizer, labels: Sequence[str], spans_key: str, max_count: int) -> Any:
        from .training import make_structured_item

        return make_structured_item(doc, prompts, labels, spans_key, max_count)


SCHEMES: Dict[str, DecodingScheme] = {s.name: s for s in (ParallelScheme(), AutoregressiveScheme())}


def get_scheme(name: str) -> DecodingScheme:
    """The scheme of a `decoding` setting, or E2001 naming the options."""
    scheme = SCHEMES.get(name) if isinstance(name, str) else None
    if scheme is None:
        raise ValueError(Errors.E2001.format(mode=name, options=list(SCHEMES)))
    return scheme
