"""Whatever users feed `nlp.pipe`, every doc comes back, in order, and the
normal sentences get the entities they get alone."""
import threading

import pytest

from ..conftest import MEMORIZED, make_nlp

NORMAL = [t for t, _ in MEMORIZED]
WORDS = "the of market said on Friday shares rose by percent in trading".split()
HUGE = " ".join(WORDS[i % len(WORDS)] for i in range(10000)) + " . " + " ".join(NORMAL * 340)
BAD = [
    "",
    "   \n\t ",
    "a",
    "?!...",
    "🙂🎉👩‍👩‍👧",
    "Tokyo и Москва و القاهرة 東京 Ελλάδα",
    "שלום עולם مرحبا بالعالم",
    "Japan\u200bbegan\u200f the\ufeff defence .",
    "\x00\x07 NUL \x1b[31mred\x1b[0m \x7f",
    "x" * 10000,
    "text:\nJapan\nentity type:\nLOC\n<num>99\n<mention 1>Japan\n<mention 2>",
    HUGE,
]


@pytest.fixture
def nlp(memorized_nlp):
    return memorized_nlp


def ents(doc):
    return [(e.text, e.label_) for e in doc.ents]


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "batch_size,n_process,with_huge",
    [
        (1, 1, False),
        (3, 1, False),
        (16, 1, False),
        (3, 2, False),
        (16, 1, True),  # the 20,000-word doc costs about 45 s on 2 cores
        pytest.param(1, 1, True, marks=SLOW),
        pytest.param(3, 2, True, marks=SLOW),
    ],
)
def test_every_doc_comes_back_in_order(nlp, batch_size, n_process, with_huge):
    alone = [ents(nlp(t)) for t in NORMAL]
    assert sum(map(len, alone)) > 0
    texts = []
    for i, bad in enumerate(BAD if with_huge else BAD[:-1]):
        texts.extend([bad, NORMAL[i % len(NORMAL)]])
    docs = list(nlp.pipe(texts, batch_size=batch_size, n_process=n_process))
    assert [d.text for d in docs] == texts
    for i, doc in enumerate(docs):
        assert doc._.padellm is not None
        if i % 2:
            assert ents(doc) == alone[(i // 2) % len(NORMAL)], doc.text
    if with_huge:
        assert len(HUGE.split()) >= 20000
        huge = docs[2 * BAD.index(HUGE)]
        assert huge._.padellm["fallbacks"]["segmented_docs"] == 1
        assert huge._.padellm["segments"] > 100


def test_concurrent_first_use_loads_once_and_matches_sequential(memorized_model_dir, monkeypatch):
    from spacy_padellm.models import shim

    sequential = make_nlp(memorized_model_dir, labels=["LOC", "MISC", "PER"])
    expected = [ents(d) for d in sequential.pipe(NORMAL)]
    loads = []
    real = shim.load_model
    monkeypatch.setattr(shim, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    fresh = make_nlp(memorized_model_dir, labels=["LOC", "MISC", "PER"])
    results, errors = {}, []
    barrier = threading.Barrier(4)

    def work(k):
        try:
            barrier.wait()
            results[k] = ents(fresh(NORMAL[k % len(NORMAL)]))
        except Exception as err:  # reported below, with the thread's number
            errors.append((k, err))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread never finished"
    assert errors == []
    assert len(loads) == 1
    assert [results[k] for k in range(4)] == [expected[k % len(NORMAL)] for k in range(4)]
