"""The training loss of texts behind their preceding context, against the
same texts alone, before any step.

Training with `context_sentences` made the shipped model undercount
(README, "Trained with preceding context"). This measures where the
gradient comes from: the mean cross-entropy per target token of the
default pipeline on train texts built as `spacy train` builds them, with
and without the lines before them, in the packed layout and in the
one-row-per-branch layout (which must agree: a check of the packing on
long prefixes).

    python benchmarks/context_loss.py ../shared/data/conll03/train.jsonl --skip 20 --texts 8
"""
import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).parent))
import systems  # noqa: E402
from spacy_padellm.corpus import make_jsonl_corpus  # noqa: E402
from spacy_padellm.training import Batch, loss_and_gradient, make_item, pack, separate  # noqa: E402


def mean_loss(model: torch.nn.Module, batch: Batch) -> float:
    """The loss `spacy train` computes for this batch (its gradient unused)."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, logits_to_keep=batch.keep).logits
    return loss_and_gradient(logits, batch.targets)[0]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="JSONL training file in the format of ../shared/data")
    parser.add_argument("--skip", type=int, default=20, help="texts to skip (the first ones have little context)")
    parser.add_argument("--texts", type=int, default=8, help="texts to score")
    parser.add_argument("--context-sentences", type=int, default=8, help="lines of context, as in the config")
    args = parser.parse_args(argv)
    system = systems.padellm("parallel")
    nlp, pipe = system.nlp, system.padellm_pipe()
    nlp("Peter Blackburn visited Brussels .")  # loads the model
    model, prompts = pipe.shim.model, pipe._decoder.prompts
    model.eval()
    pad = pipe._decoder.engine.pad_id  # as the component's update packs
    result: Dict[str, Dict[str, float]] = {}
    for name, n in (("behind context", args.context_sentences), ("alone", 0)):
        reader = make_jsonl_corpus(args.data, context_sentences=n, limit=args.skip + args.texts)
        docs = [eg.reference for eg in itertools.islice(reader(nlp), args.skip, args.skip + args.texts)]
        items = [make_item(doc, prompts, pipe.labels, pipe.cfg["spans_key"], pipe.cfg["max_count"]) for doc in docs]
        result[name] = {"packed": mean_loss(model, pack(items, pad)), "one row per branch": mean_loss(model, separate(items, pad))}
        print(name, json.dumps(result[name]), flush=True)


if __name__ == "__main__":
    main()
