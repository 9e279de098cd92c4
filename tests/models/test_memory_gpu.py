"""The InfLLM memory on a CUDA GPU: evicted blocks in CPU RAM, a bounded
block cache on the GPU, and the same outputs as on the CPU.

Skipped where torch sees no CUDA device (CI has none); run them on a GPU
machine with `python -m pytest tests/models/test_memory_gpu.py`.
"""
import pytest
import spacy
import torch

from spacy_padellm.memory.settings import InfLLMSettings

from .test_memory import SMALL, _article, _decode, _flat, _random_ids, build_engine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def engines(memorized_model_dir):
    torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
    return build_engine(memorized_model_dir), build_engine(memorized_model_dir, "cuda:0")


def _behind(engine, settings, past, prefix, suffixes):
    memory = engine.memory(settings)
    doc = memory.new()
    memory.extend(doc, past)
    return doc, _decode(engine, memory.encode_behind([doc], [prefix]), suffixes)


def test_blocks_live_in_cpu_ram_and_outputs_equal_the_cpu(engines):
    """Retrieval over more blocks than the GPU caches: blocks stay in CPU RAM,
    at most `max_cached_blocks` per layer are on the GPU, and the tokens and
    log-probs equal the CPU engine's."""
    cpu, gpu = engines
    settings = InfLLMSettings(n_local=16, topk=3, max_cached_blocks=2, **SMALL)
    past, prefix = _random_ids(140, 21), _random_ids(9, 22)
    suffixes = [_random_ids(3, 23), _random_ids(5, 24)]
    cpu_doc, on_cpu = _behind(cpu, settings, past, prefix, suffixes)
    gpu_doc, on_gpu = _behind(gpu, settings, past, prefix, suffixes)
    for layer in gpu_doc.layers:
        assert len(layer.blocks) == 15
        assert all(k.device.type == "cpu" and v.device.type == "cpu" for k, v in layer.blocks)
        assert 0 < len(layer._cached) <= 2
        assert all(k.device.type == "cuda" for k, _ in layer._cached.values())
    assert [g.token_ids for g in on_gpu] == [g.token_ids for g in on_cpu]
    assert _flat(on_gpu) == pytest.approx(_flat(on_cpu), abs=1e-3)


def test_pipeline_behind_memory_on_gpu_equals_cpu(memorized_model_dir):
    """A doc of three segments behind the memory, whole pipeline on the GPU:
    the same spans as on the CPU."""
    memory = {"@misc": "spacy_padellm.InfLLMMemory.v1", "n_local": 16, "exec_chunk": 8, "n_init": 4,
              "block_size": 8, "topk": 1, "repr_topk": 2, "max_cached_blocks": 1}
    spans = {}
    for device in ("cpu", "cuda:0"):
        nlp = spacy.blank("en")
        model = {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(memorized_model_dir), "device": device,
                 "dtype": "float32"}
        nlp.add_pipe("padellm_ner", config={"labels": ["LOC", "MISC", "PER"], "model": model, "memory": memory,
                                            "segment_tokens": 8})
        doc = nlp(_article(nlp, 3))
        assert doc._.padellm["segments"] == 3
        spans[device] = [(s.start_char, s.end_char, s.label_) for s in doc.spans["padellm"]]
        param = next(nlp.get_pipe("padellm_ner").shim.model.parameters())
        assert param.device.type == device.split(":")[0]
    assert spans["cuda:0"] == spans["cpu"] and spans["cpu"]
