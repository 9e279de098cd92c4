"""Training and decoding on a CUDA GPU, as `spacy train --gpu-id 0` does it.

Skipped where torch sees no CUDA device (CI has none); run them on a GPU
machine with `python -m pytest tests/training/test_gpu.py`.
"""
import pytest
import spacy
import srsly
import torch

from ..conftest import MEMORIZED
from .test_update import ROOT, tiny_train_overrides, write_jsonl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
if torch.cuda.is_available():
    pytest.importorskip("cupy", reason="spaCy's --gpu-id needs cupy")


@pytest.fixture
def on_gpu():
    """spaCy's `--gpu-id 0`, undone afterwards so CPU tests stay on the CPU."""
    from thinc.api import NumpyOps, require_gpu, set_current_ops

    require_gpu(0)
    yield
    set_current_ops(NumpyOps())


@pytest.mark.parametrize("fine_tuning,mixed_precision", [("lora", False), ("lora", True), ("full", True)])
def test_spacy_train_on_gpu(tiny_model_dir, tmp_path, on_gpu, fine_tuning, mixed_precision):
    """The model lands on the GPU (bfloat16 under dtype "auto" for LoRA), the
    trained pipeline saves, loads and predicts on the GPU, a LoRA adapter
    merged for prediction."""
    from spacy.cli.train import train as spacy_train

    data = write_jsonl(tmp_path / "train.jsonl")
    overrides = tiny_train_overrides(data, tiny_model_dir, {
        "components.padellm_ner.model.fine_tuning": fine_tuning,
        "components.padellm_ner.model.dtype": "auto" if fine_tuning == "lora" else "float32",
        "components.padellm_ner.model.mixed_precision": mixed_precision,
        "training.max_steps": 40,
        "training.max_epochs": 0,
        "training.eval_frequency": 20,
    })
    spacy_train(ROOT / "configs" / "smollm2_lora_gpu.cfg", tmp_path / "out", overrides=overrides, use_gpu=0)
    nlp = spacy.load(tmp_path / "out" / "model-last")
    param = next(nlp.get_pipe("padellm_ner").shim.model.parameters())
    assert param.device.type == "cuda"
    bf16 = fine_tuning == "lora" and torch.cuda.is_bf16_supported()
    assert param.dtype == (torch.bfloat16 if bf16 else torch.float32)
    list(nlp.pipe([text for text, _ in MEMORIZED]))
    assert nlp.get_pipe("padellm_ner").shim._merged == (fine_tuning == "lora")
    saved = tmp_path / "out" / "model-best" / "padellm_ner" / "model"
    model = srsly.read_json(saved / "model.json")
    assert model["has_adapter"] == (fine_tuning == "lora") and model["full_weights"] == (fine_tuning == "full")


def test_lora_on_gpu_lowers_loss(tiny_model_dir, on_gpu):
    from thinc.api import Adam

    from ..conftest import make_nlp
    from .test_update import examples_for

    nlp = make_nlp(tiny_model_dir, labels=["LOC", "MISC", "PER"])
    nlp.get_pipe("padellm_ner").shim.device_name = None  # follow require_gpu, as spacy train does
    examples = examples_for(nlp)
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01, use_averages=False)
    history = [nlp.update(examples, sgd=optimizer)["padellm_ner"] for _ in range(20)]
    assert next(nlp.get_pipe("padellm_ner").shim.model.parameters()).device.type == "cuda"
    assert history[-1] < history[0]
