"""The autoregressive baseline: its output format, its training targets, and
training plus decoding end to end on a tiny model."""
import pytest
from spacy.training import Example
from thinc.api import Adam

from spacy_padellm.autoregressive import format_pairs, parse_pairs
from spacy_padellm.prompt import PromptTemplate, PromptTokenizer
from spacy_padellm.training import make_structured_item

from ..conftest import make_nlp, memorized_gold_docs

LABELS = ["LOC", "MISC", "PER"]


@pytest.mark.parametrize(
    "pairs",
    [[], [("LOC", "Japan")], [("LOC", "China"), ("LOC", "China"), ("MISC", "Asian Cup"), ("PER", "Nadim Ladki")]],
)
def test_format_and_parse_round_trip(pairs):
    line = format_pairs(pairs)
    assert line.endswith("\n") and line.count("\n") == 1
    assert parse_pairs(line, LABELS) == (pairs, 0)


@pytest.mark.parametrize(
    "line,expected",
    [
        ("LOC: Japan; ORG: Sony; PER Kim", ([("LOC", "Japan")], 2)),  # unknown label, no separator
        ("MISC:Asian Cup;PER:  Nadim Ladki ", ([("MISC", "Asian Cup"), ("PER", "Nadim Ladki")], 0)),
        ("   ", ([], 0)),
        ("none", ([], 0)),
    ],
)
def test_parse_is_lenient_about_spaces_and_counts_bad_parts(line, expected):
    assert parse_pairs(line, LABELS) == expected


def test_longer_label_wins_over_its_prefix():
    assert parse_pairs("PERSON: Kim; PER: Lee", ["PER", "PERSON"]) == ([("PERSON", "Kim"), ("PER", "Lee")], 0)


def test_structured_target_lists_pairs_in_textual_order(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = PromptTokenizer(tokenizer, PromptTemplate())
    item = make_structured_item(memorized_gold_docs()[2], prompts, LABELS, "padellm", max_count=16)
    (branch,) = item.branches
    assert tokenizer.decode(branch.ids) == (
        "all\nPER: Nadim Ladki; LOC: Al-Ain; LOC: United Arab Emirates; MISC: Asian Cup\n"
    )
    target = tokenizer.decode([i for i, t in zip(branch.ids, branch.is_target) if t])
    assert target.startswith("PER: Nadim") and not target.startswith("all")


def test_training_then_decoding_autoregressively_finds_the_gold(tiny_model_dir):
    nlp = make_nlp(tiny_model_dir, labels=None, decoding="autoregressive", max_count=4, max_mention_tokens=12)
    pipe = nlp.get_pipe("padellm_ner")
    pipe.shim.fine_tuning.mode = "full"
    examples = [Example(nlp.make_doc(ref.text), ref) for ref in memorized_gold_docs(nlp)]
    nlp.initialize(lambda: examples)
    before = nlp.evaluate(examples)["spans_padellm_f"]
    optimizer = Adam(0.01, use_averages=False)
    history = [nlp.update(examples, sgd=optimizer)["padellm_ner"] for _ in range(80)]
    after = nlp.evaluate(examples)
    assert history[-1] < history[0] / 3
    assert after["spans_padellm_f"] > before and after["spans_padellm_f"] >= 0.5
    doc = nlp(examples[0].reference.text)
    # One sequence per text: as many sequential steps as generated tokens.
    assert doc._.padellm["decoding_steps"] == doc._.padellm["generated_tokens"] > 0


def test_a_line_cut_by_the_token_bound_keeps_its_complete_pairs(tiny_model_dir):
    from transformers import AutoTokenizer

    from spacy_padellm.autoregressive import AutoregressiveDecoding
    from spacy_padellm.scripted_backend import ScriptedBackend

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer("LOC: Japan; MISC: Asian", add_special_tokens=False)["input_ids"]
    engine = ScriptedBackend(tokenizer, lambda branch: "LOC: Japan; MISC: Asian Cup\n")

    decoding = AutoregressiveDecoding(engine, PromptTokenizer(tokenizer, PromptTemplate()), LABELS, max_new_tokens=len(ids))
    (pred,) = decoding(["Japan began the defence of their Asian Cup title ."])
    assert [(m.label, m.text) for m in pred.mentions] == [("LOC", "Japan")]
    assert pred.fallbacks["truncated_generations"] == 1
    assert engine.live == {}  # the prefix was released


def test_autoregressive_needs_a_template_with_its_header(monkeypatch):
    import spacy

    from spacy_padellm.prompt import PromptTemplate as Template

    monkeypatch.setattr(Template, "structured_header", lambda self: (_ for _ in ()).throw(ValueError("E2023")))
    with pytest.raises(ValueError, match="E2023"):
        spacy.blank("en").add_pipe("padellm_ner", config={"decoding": "autoregressive"})
