"""Tiny models built at test time: a byte-level BPE tokenizer and a 2-layer
Llama with random weights, saved to a temporary directory, so no test
downloads anything."""
import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import List

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The GGUF conversion cache (spacy_padellm/models/gguf_cache.py) of this test
# run, subprocesses included: a fresh temporary directory, never the user's.
os.environ["SPACY_PADELLM_CACHE"] = tempfile.mkdtemp(prefix="spacy-padellm-test-cache-")
atexit.register(shutil.rmtree, os.environ["SPACY_PADELLM_CACHE"], True)

CORPUS = [
    "text:\nJapan began the defence of their Asian Cup title .\nentity type:\nLOC\n<num>1\n<mention 1>Japan\n",
    "China beat China in Beijing on Friday . Nadim Ladki reported from Al-Ain , United Arab Emirates .",
    "PER ORG LOC MISC protein DNA RNA cell_type cell_line <num>0 1 2 3 4 5 6 7 8 9 <mention 1> <mention 2>",
    "Peter Blackburn of the European Commission said in Brussels that Germany would vote .",
    "The quick brown fox jumps over the lazy dog in New York 's Central Park .",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# Gemma 3's local layers attend over this many tokens in the tiny model: more
# than any test sequence, less than its 256 positions.
TINY_SLIDING_WINDOW = 128


def build_tiny_model(path: Path, *, vocab_size: int = 400, seed: int = 0, tie: bool = False, arch: str = "llama") -> Path:
    """arch: "llama", or "gemma3" (sliding-window and global layers, as in
    the Chinese default base)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=tie,
    )
    if arch == "gemma3":
        config = Gemma3TextConfig(
            **common,
            num_hidden_layers=3,
            head_dim=16,
            sliding_window=TINY_SLIDING_WINDOW,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        )
        model = Gemma3ForCausalLM(config)
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, num_hidden_layers=2))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gemma3"), arch="gemma3")


@pytest.fixture
def tiny_model_config(tiny_model_dir: Path) -> dict:
    return {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(tiny_model_dir), "device": "cpu"}


# Texts with gold mentions per label, in textual order. A tiny model trained
# on them for a few seconds predicts non-zero counts and real mentions, which
# the decoding tests need (a random model mostly emits unparseable counts).
MEMORIZED = [
    ("Japan began the defence of their Asian Cup title .", {"LOC": ["Japan"], "MISC": ["Asian Cup"], "PER": []}),
    ("China beat China in Beijing on Friday .", {"LOC": ["China", "China", "Beijing"], "MISC": [], "PER": []}),
    (
        "Nadim Ladki reported from Al-Ain , United Arab Emirates , for the Asian Cup .",
        {"LOC": ["Al-Ain", "United Arab Emirates"], "MISC": ["Asian Cup"], "PER": ["Nadim Ladki"]},
    ),
]


def memorization_sequences(tokenizer, data=MEMORIZED) -> List[List[int]]:
    from spacy_padellm.prompt import PromptTemplate, PromptTokenizer

    prompts = PromptTokenizer(tokenizer, PromptTemplate())
    sequences = []
    for text, gold in data:
        prefix = prompts.prefix(text)
        for label, mentions in gold.items():
            if not mentions:
                sequences.append(prefix + prompts.label(label) + prompts.count(0))
            for n, mention in enumerate(mentions, 1):
                branch = prompts.mention_branch(label, len(mentions), n)
                sequences.append(prefix + branch + prompts.mention(mention))
    return sequences


def train_to_memorize(model_dir: Path, out_dir: Path, steps: int = 120) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    sequences = memorization_sequences(tokenizer)
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
    labels = torch.full((len(sequences), width), -100)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def memorized_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_to_memorize(tiny_model_dir, tmp_path_factory.mktemp("memorized-llama"))


def write_jsonl(path: Path, rows: list) -> Path:
    """A corpus file in the format of ../shared/data, one row per line."""
    import json

    path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf8")
    return path


def make_nlp(model_dir: Path, lang: str = "en", **config):
    import spacy

    nlp = spacy.blank(lang)
    model = {"@architectures": "spacy_padellm.CausalLM.v1", "name": str(model_dir), "device": "cpu"}
    config = {"labels": ["PER", "LOC", "MISC"], **config, "model": model}
    nlp.add_pipe("padellm_ner", config=config)
    return nlp


class ScriptedDecoding:
    """Stands in for `ParallelDecoding`: returns the mentions scripted per text."""

    def __init__(self, script):
        self.script = script
        self.calls = []

    def __call__(self, texts):
        from spacy_padellm.types import Mention, TextPrediction

        self.calls.append(list(texts))
        preds = []
        for text in texts:
            mentions = [Mention(label, n, string, score) for label, n, string, score in self.script.get(text, [])]
            preds.append(TextPrediction(mentions=mentions))
        return preds


@pytest.fixture
def scripted_nlp(tiny_model_dir):
    """A pipeline whose decoder returns scripted mentions; set `.script`."""
    nlp = make_nlp(tiny_model_dir)
    nlp.initialize()
    pipe = nlp.get_pipe("padellm_ner")
    pipe._decoder = ScriptedDecoding({})
    return nlp


@pytest.fixture(scope="module")
def memorized_nlp(memorized_model_dir):
    """A pipeline on the memorizing model, initialized with its gold docs
    (so its segment lengths come from them), shared by a test module."""
    from spacy.training import Example

    nlp = make_nlp(memorized_model_dir, labels=["LOC", "MISC", "PER"])
    nlp.initialize(lambda: [Example(d, d) for d in memorized_gold_docs()])
    return nlp


def memorized_gold_docs(nlp=None):
    """The MEMORIZED texts as docs with their gold spans in the span group
    and the flat selection in `doc.ents`."""
    import spacy

    nlp = nlp or spacy.blank("en")
    docs = []
    for text, gold in MEMORIZED:
        doc = nlp.make_doc(text)
        spans = []
        for label, mentions in gold.items():
            pos = 0
            for mention in mentions:
                start = text.index(mention, pos)
                spans.append(doc.char_span(start, start + len(mention), label=label))
                pos = start + 1
        doc.spans["padellm"] = spans
        doc.ents = spacy.util.filter_spans(spans)
        docs.append(doc)
    return docs
