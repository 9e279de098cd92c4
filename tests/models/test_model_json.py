"""A saved pipeline whose model/model.json is damaged fails with E2017,
naming the file and saying to save the pipeline again."""
import json

import pytest
import spacy

from ..conftest import make_nlp


@pytest.fixture
def saved(tiny_model_dir, tmp_path):
    nlp = make_nlp(tiny_model_dir)
    nlp.to_disk(tmp_path / "pipeline")
    return tmp_path / "pipeline"


def model_json(saved):
    return saved / "padellm_ner" / "model" / "model.json"


@pytest.mark.parametrize(
    "content,problem",
    [
        ('{"source": {"name": ', "not valid JSON"),
        ("[]", "JSON list, not an object"),
        ('{"dtype": "auto"}', "no 'source'"),
        ('{"source": "x"}', "no 'source'"),
        ('{"source": {"revision": null}}', "neither a model"),
        ("\udcff", "not valid JSON"),
    ],
)
def test_damaged_model_json(saved, content, problem):
    file = model_json(saved)
    file.write_bytes(content.encode("utf8", "surrogateescape"))
    with pytest.raises(ValueError) as info:
        spacy.load(saved)
    message = str(info.value)
    assert message.startswith("[E2017]") and str(file) in message and problem in message
    assert "Save the pipeline again" in message


def test_damaged_model_json_in_bytes(tiny_model_dir):
    import srsly

    shim = make_nlp(tiny_model_dir).get_pipe("padellm_ner").shim
    msg = srsly.msgpack_loads(shim.to_bytes())
    msg["model.json"] = "{not json"
    with pytest.raises(ValueError, match=r"E2017.*serialized component.*not valid JSON.*Save the pipeline again"):
        shim.from_bytes(srsly.msgpack_dumps(msg))


def test_unknown_source_keys_are_ignored_with_a_warning(saved, caplog):
    file = model_json(saved)
    meta = json.loads(file.read_text())
    meta["source"]["quantization"] = "q4"
    file.write_text(json.dumps(meta))
    nlp = spacy.load(saved)
    assert nlp.get_pipe("padellm_ner").shim.is_loaded
    assert any("quantization" in r.getMessage() for r in caplog.records)
