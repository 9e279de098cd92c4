"""The PaDeLLM prompt: rendering its segments and turning them into token ids.

Training and inference must see identical token sequences, so the prompt is
never tokenized as one string. Each segment (text prefix, label, count,
mention header, mention) is tokenized on its own and the ids are concatenated.
That fixes the boundary between the text prefix, whose key/value cache is
shared by all branches of a document, and every branch behind it.
"""
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import jinja2

from .errors import Errors

TEMPLATE_DIR = Path(__file__).parent / "templates"
DEFAULT_TEMPLATE = "ner.v1"


def prompt_text(text: str) -> str:
    """The text as the model reads it: control characters (NUL, escape
    codes) become spaces and lone surrogates U+FFFD, which tokenizers reject.
    Every character keeps its position, so offsets in the result are
    offsets in `text`."""
    if text.isprintable():
        return text
    return "".join(
        " " if unicodedata.category(c) == "Cc" and c not in "\t\n\r"
        else "\ufffd" if unicodedata.category(c) == "Cs" else c
        for c in text
    )


def available_templates() -> List[str]:
    return sorted(p.name[: -len(".jinja")] for p in TEMPLATE_DIR.glob("*.jinja"))


@lru_cache(maxsize=None)
def _load_module(name: str) -> Any:
    path = TEMPLATE_DIR / f"{name}.jinja"
    if not path.exists():
        raise ValueError(Errors.E2018.format(name=name, options=available_templates()))
    env = jinja2.Environment(keep_trailing_newline=True, autoescape=False)
    return env.from_string(path.read_text(encoding="utf8")).module


class PromptTemplate:
    """Renders the prompt segments of one named template.

    The segments are, in order: ``prefix(text)`` (shared by all branches of a
    text), ``label(label, definition)``, ``count(count)``, ``mention_header(n)``
    and ``mention(mention)``. The count and mention segments end with a
    newline, which is what decoding stops at. The autoregressive baseline
    puts ``structured_header()`` behind the same prefix and generates every
    pair on one line (see `autoregressive.py`).
    """

    def __init__(self, name: str = DEFAULT_TEMPLATE) -> None:
        self.name = name
        self._module = _load_module(name)

    def prefix(self, text: str) -> str:
        return str(self._module.prefix(text))

    def label(self, label: str, definition: Optional[str] = None) -> str:
        return str(self._module.label(label, definition or ""))

    def count(self, count: int) -> str:
        return str(self._module.count(count))

    def mention_header(self, n: int) -> str:
        return str(self._module.mention_header(n))

    def mention(self, mention: str) -> str:
        return str(self._module.mention(mention))

    def structured_header(self) -> str:
        macro = getattr(self._module, "structured_header", None)
        if macro is None:
            raise ValueError(Errors.E2023.format(name=self.name))
        return str(macro())


class PromptTokenizer:
    """Token ids of the prompt segments for one tokenizer and one template.

    Label, count and header segments repeat for every document, so their ids
    are cached.
    """

    def __init__(
        self,
        tokenizer: Any,
        template: PromptTemplate,
        label_definitions: Optional[Dict[str, str]] = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.label_definitions = dict(label_definitions or {})
        self._cache: Dict[Any, List[int]] = {}
        self._leading_special = self._leading_special_tokens()

    def _leading_special_tokens(self) -> List[int]:
        """The special tokens (e.g. BOS) the tokenizer puts before a text, which
        the model saw in pretraining; trailing ones (EOS) are not wanted."""
        plain = self._encode("a")
        full = list(self.tokenizer("a", add_special_tokens=True)["input_ids"])
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start]
        return []

    @property
    def leading_special(self) -> List[int]:
        """The special tokens every prefix starts with (none for many models)."""
        return list(self._leading_special)

    def tokenize(self, text: str) -> List[int]:
        """Token ids of plain text (no template, no special tokens)."""
        return self._encode(text)

    def after_context(self, prefix: Sequence[int]) -> List[int]:
        """A prompt prefix as it reads behind preceding context (a long
        doc's memory, or a training text's `context_sentences`): that
        context began with the leading special tokens, so the prompt drops
        them. Training and the memory both build their sequences this way,
        so that what the model is trained on is what it decodes behind."""
        cut = len(self._leading_special)
        prefix = list(prefix)
        return prefix[cut:] if cut and prefix[:cut] == self._leading_special else prefix

    def _encode(self, text: str) -> List[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _cached(self, key: Any, text: str) -> List[int]:
        ids = self._cache.get(key)
        if ids is None:
            ids = self._cache[key] = self._encode(text)
        return ids

    def prefix(self, text: str) -> List[int]:
        """The shared prefix, led by the special tokens the tokenizer adds."""
        return self._leading_special + self._encode(self.template.prefix(text))

    def label(self, label: str) -> List[int]:
        definition = self.label_definitions.get(label)
        return self._cached(("label", label), self.template.label(label, definition))

    def count(self, count: int) -> List[int]:
        return self._cached(("count", count), self.template.count(count))

    def mention_header(self, n: int) -> List[int]:
        return self._cached(("header", n), self.template.mention_header(n))

    def mention(self, mention: str) -> List[int]:
        return self._encode(self.template.mention(mention))

    def structured_branch(self) -> List[int]:
        """The autoregressive baseline's one branch per text."""
        return self._cached(("structured",), self.template.structured_header())

    def structured_line(self, line: str) -> List[int]:
        return self._encode(line)

    def count_branch(self, label: str) -> List[int]:
        """Step-1 branch: everything after the prefix up to the count."""
        return self.label(label)

    def mention_branch(self, label: str, count: int, n: int) -> List[int]:
        """Step-2 branch: label, the (canonically re-tokenized) count and the
        header of the n-th mention."""
        return self.label(label) + self.count(count) + self.mention_header(n)

    def max_branch_length(self, labels: Sequence[str], max_count: int) -> int:
        return max(
            (len(self.mention_branch(label, max_count, max_count)) for label in labels),
            default=0,
        )
