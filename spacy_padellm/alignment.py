"""Place generated mention strings in the text, as character offsets.

The model writes mentions as strings; the user needs token spans. The n-th
mention of a label is searched from the position of the (n-1)-th, so
repeated strings ("China ... China") land on different occurrences, and an
occurrence is never used twice for one label. Matching tries the exact string
first, then ignores case and whitespace (models detokenize "New York 's" as
"New York's" and back). A mention that cannot be placed is dropped and counted,
never raised.
"""
import re
from collections import Counter
from typing import Iterator, List, Optional, Sequence, Set, Tuple

from .types import CharSpan, Mention

_ASCII_WORD = re.compile(r"[A-Za-z0-9]")


def _patterns(mention: str) -> List["re.Pattern[str]"]:
    """Patterns from strict to lenient. Word boundaries are required only at
    ASCII letters and digits, so "Ira" does not match inside "Iran" while
    Chinese mentions, which have no spaces, still match anywhere."""
    lead = r"(?<![A-Za-z0-9])" if _ASCII_WORD.match(mention[0]) else ""
    trail = r"(?![A-Za-z0-9])" if _ASCII_WORD.match(mention[-1]) else ""
    exact = re.compile(lead + re.escape(mention) + trail)
    chars = [re.escape(c) for c in mention if not c.isspace()]
    loose = re.compile(lead + r"\s*".join(chars) + trail, re.IGNORECASE)
    return [exact, loose]


def _occurrences(pattern: "re.Pattern[str]", text: str, pos: int) -> Iterator[Tuple[int, int]]:
    """All matches starting at or after `pos`, overlapping ones included."""
    while True:
        match = pattern.search(text, pos)
        if match is None:
            return
        if match.end() > match.start():
            yield match.start(), match.end()
        pos = match.start() + 1


def find_mention(
    text: str, mention: str, cursor: int, used: Set[Tuple[int, int]]
) -> Optional[Tuple[int, int]]:
    """The first unused occurrence of `mention` at or after `cursor`; failing
    that, the first unused one anywhere (the model listed it out of order)."""
    patterns = _patterns(mention)
    for start in (cursor, 0):
        for pattern in patterns:
            for occurrence in _occurrences(pattern, text, start):
                if occurrence not in used:
                    return occurrence
    return None


def align_mentions(
    text: str, mentions: Sequence[Mention], offset: int = 0
) -> Tuple[List[CharSpan], "Counter[str]"]:
    """Character spans for `mentions` in `text`, shifted by `offset`.

    mentions (Sequence[Mention]): generated mentions, any labels, any order.
    offset (int): where `text` starts in the doc (for windows of long docs).
    RETURNS (Tuple[List[CharSpan], Counter]): the spans and the fallback counts.
    """
    counts: "Counter[str]" = Counter()
    spans: List[CharSpan] = []
    by_label = {}
    for mention in sorted(mentions, key=lambda m: (m.label, m.n)):
        by_label.setdefault(mention.label, []).append(mention)
    for label, label_mentions in by_label.items():
        cursor = 0
        used: Set[Tuple[int, int]] = set()
        for mention in label_mentions:
            string = mention.text.strip()
            if not string:
                counts["empty_mentions"] += 1
                continue
            found = find_mention(text, string, cursor, used)
            if found is None:
                anywhere = find_mention(text, string, 0, set())
                counts["repeated_mentions" if anywhere else "hallucinated_mentions"] += 1
                continue
            used.add(found)
            cursor = found[0]
            spans.append(CharSpan(found[0] + offset, found[1] + offset, label, mention.score))
    return spans, counts
