"""Registration and configuration-time errors."""
import json
import subprocess
from pathlib import Path
import sys

import pytest
import spacy
from thinc.api import Config, Optimizer

from spacy_padellm.prompt import PromptTemplate, PromptTokenizer


def test_factory_found_through_entry_point_without_import():
    code = (
        "import spacy, sys; nlp = spacy.blank('en'); nlp.add_pipe('padellm_ner');"
        "print(type(nlp.get_pipe('padellm_ner')).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PaDeLLMNER"


@pytest.mark.parametrize("registry,name", [
    ("architectures", "spacy_padellm.CausalLM.v1"),
    ("scorers", "spacy_padellm.ner_scorer.v1"),
])
def test_registered_names(registry, name):
    assert callable(getattr(spacy.registry, registry).get(name))


def test_config_round_trips_through_config_string(tiny_model_dir):
    from ..conftest import make_nlp

    nlp = make_nlp(tiny_model_dir, labels=["PER", "LOC"], label_definitions={"PER": "a person"})
    config = Config().from_str(nlp.config.to_str())
    nlp2 = spacy.util.load_model_from_config(config, auto_fill=True)
    pipe = nlp2.get_pipe("padellm_ner")
    assert pipe.labels == ("PER", "LOC")
    assert pipe.cfg["label_definitions"] == {"PER": "a person"}


@pytest.mark.parametrize(
    "config,code",
    [
        ({"decoding": "beam"}, "E2001"),
        ({"alignment_mode": "fuzzy"}, "E2002"),
        ({"max_count": 0}, "E2003"),
        ({"max_mention_tokens": -3}, "E2003"),
        ({"batch_size": 0}, "E2003"),
        ({"labels": ["PER", "A\nB"]}, "E2005"),
        ({"labels": ["PER", ""]}, "E2005"),
        ({"labels": ["PER", "PER"]}, "E2007"),
        ({"labels": ["PER"], "label_definitions": {"ORG": "companies"}}, "E2006"),
        ({"template": "ner.v99"}, "E2018"),
        ({"zero_count_penalty": -1.0}, "E2040"),
        ({"labels": []}, "E2070"),
        ({"threshold": 1.5}, "E2071"),
        ({"threshold": -0.1}, "E2071"),
        ({"resplit_below": 2}, "E2071"),
        ({"resplits": -1}, "E2074"),
        ({"segment_tokens": -5}, "E2003"),
    ],
)
def test_bad_config_is_rejected_clearly(config, code):
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match=code):
        nlp.add_pipe("padellm_ner", config=config)


def test_unknown_decoding_mode_names_the_options():
    with pytest.raises(ValueError, match="parallel.*autoregressive"):
        spacy.blank("en").add_pipe("padellm_ner", config={"decoding": "beam"})


def test_template_renders_exact_segments():
    t = PromptTemplate()
    assert t.prefix("Japan won .") == "text:\nJapan won .\nentity type:\n"
    assert t.label("LOC") == "LOC\n<num>"
    assert t.label("LOC", "a place") == "LOC (a place)\n<num>"
    assert t.count(2) == "2\n"
    assert t.mention_header(3) == "<mention 3>"
    assert t.mention("Japan") == "Japan\n"


def test_segments_are_tokenized_separately(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = PromptTokenizer(tok, PromptTemplate(), {"LOC": "a place"})
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    assert prompts.mention_branch("LOC", 2, 1) == enc("LOC (a place)\n<num>") + enc("2\n") + enc("<mention 1>")
    assert prompts.count_branch("PER") == enc("PER\n<num>")


def test_label_order_does_not_change_results(memorized_model_dir):
    from ..conftest import MEMORIZED, make_nlp

    texts = [t for t, _ in MEMORIZED]
    results = []
    for labels in (["PER", "LOC", "MISC"], ["MISC", "LOC", "PER"]):
        nlp = make_nlp(memorized_model_dir, labels=labels)
        nlp.initialize()
        docs = list(nlp.pipe(texts))
        results.append([[(s.start, s.end, s.label_) for s in d.spans["padellm"]] for d in docs])
    assert results[0] == results[1]
    assert sum(map(len, results[0])) >= 4


def test_labels_collected_from_examples_when_not_configured(tiny_model_dir):
    from spacy.training import Example

    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(tiny_model_dir)}})
    doc = nlp.make_doc("Paris is nice")
    example = Example.from_dict(doc, {"entities": ["U-GPE", "O", "O"]})
    nlp.initialize(lambda: [example])
    assert nlp.get_pipe("padellm_ner").labels == ("GPE",)


def test_initialize_with_empty_labels_fails(tiny_model_dir):
    from ..conftest import make_nlp

    nlp = make_nlp(tiny_model_dir)
    from spacy.training import Example

    pipe = nlp.get_pipe("padellm_ner")
    doc = nlp.make_doc("no entities")
    with pytest.raises(ValueError, match="E2004"):
        pipe.initialize(lambda: [Example(doc, doc)], nlp=nlp, labels=[])


def test_shipped_config_builds_and_assembles(tiny_model_dir, tmp_path):
    from spacy.cli.assemble import assemble_cli  # noqa: F401  (the CLI exists)

    root = Path(__file__).parents[2]
    overrides = {
        "components.padellm_ner.model.name": str(tiny_model_dir),
        "components.padellm_ner.model.package": None,
        "components.padellm_ner.model.gguf_file": None,
    }
    config = spacy.util.load_config(root / "configs" / "inference.cfg", overrides=overrides, interpolate=False)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    nlp.initialize()
    pipe = nlp.get_pipe("padellm_ner")
    assert pipe.labels == ("PER", "ORG", "LOC", "MISC")
    assert pipe.cfg["label_definitions"] == {}
    nlp.to_disk(tmp_path / "assembled")
    assert spacy.load(tmp_path / "assembled").pipe_names == ["padellm_ner"]


CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.cfg"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_builds_and_reads_its_corpora(path, tiny_model_dir, tmp_path):
    """What `spacy init fill-config` and `spacy debug config` check, plus the
    corpora: each config builds its pipeline and its readers read JSONL."""
    config = spacy.util.load_config(path, interpolate=False)
    if config["nlp"]["pipeline"] == ["senter"]:
        return check_senter_config(path, tmp_path)
    lang = config["nlp"]["lang"]
    row = ["吴重阳，中国国籍。", [0, 2, "吴重阳", "NAME"]] if lang == "zh" else ["Japan won .", [0, 0, "Japan", "LOC"]]
    lines = 3
    if "genia" in path.name:  # end exclusive; one file split by line ranges
        row, lines = ["Japan won .", [0, 1, "Japan", "LOC"]], 1669
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(row, ensure_ascii=False) for _ in range(lines)), encoding="utf8")
    overrides = {f"paths.{key}": str(data) for key in config["paths"] if key in ("train", "dev", "data")}
    if "padellm_ner" in config["components"]:
        overrides.update({
            "components.padellm_ner.model.name": str(tiny_model_dir),
            "components.padellm_ner.model.package": None,
            "components.padellm_ner.model.gguf_file": None,
        })
    config = spacy.util.load_config(path, overrides=overrides, interpolate=True)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    if not config.get("corpora"):  # an inference config
        assert nlp.pipe_names == ["padellm_ner"]
        return
    rate = config["training"]["optimizer"]["learn_rate"]
    if isinstance(rate, dict) and "total_steps" in rate:  # a decaying schedule ends where training does
        assert rate["total_steps"] == config["training"]["max_steps"]
    assert isinstance(spacy.registry.resolve({"o": config["training"]["optimizer"]})["o"], Optimizer)
    corpora = spacy.registry.resolve(config["corpora"])
    sizes = {}
    for name in ("train", "dev"):
        examples = list(corpora[name](nlp))
        # one entity per line read (a config may join lines into one text)
        assert examples and all(len(eg.reference.ents) == eg.reference.text.count(row[1][2]) > 0 for eg in examples), name
        sizes[name] = len(examples)
    if "genia" in path.name:
        assert sizes == {"train": 1269, "dev": 200}  # lines 1470-1669 stay held out


def check_senter_config(path, tmp_path):
    """The shipped sentence splitter's recipe: corpus/sentence_docs.py
    writes what its readers read, sentence starts included."""
    from corpus.sentence_docs import main as sentence_docs

    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps([f"Leeds {i} Chelsea 1"]) for i in range(40)), encoding="utf8")
    sentence_docs([str(data), str(tmp_path / "docs.spacy"), "--max-sentences", "5"])
    overrides = {"paths.train": str(tmp_path / "docs.spacy"), "paths.dev": str(tmp_path / "docs.spacy")}
    config = spacy.util.load_config(path, overrides=overrides, interpolate=True)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    corpora = spacy.registry.resolve(config["corpora"])
    examples = list(corpora["train"](nlp))
    starts = sum(t.is_sent_start for eg in examples for t in eg.reference)
    assert starts == 40 and len(examples) < 40


def test_project_yml_is_valid_and_names_existing_configs():
    from weasel.util import load_project_config

    root = Path(__file__).parents[2]
    project = load_project_config(root)
    names = {command["name"] for command in project["commands"]}
    for workflow, steps in project["workflows"].items():
        assert set(steps) <= names, workflow
    for command in project["commands"]:
        for dep in command.get("deps", []):
            if dep.startswith("configs/"):
                assert (root / dep).exists(), dep
    assert {"all", "genia", "chinese", "benchmark"} <= set(project["workflows"])
