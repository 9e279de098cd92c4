"""Write the lengths of a model's training texts, in model tokens, to the JSON
file that sets the shipped default model's segment budget
(`spacy_padellm/default_model/training_texts.json`).

    python corpus/text_lengths.py ../shared/data/conll03/train.jsonl \
        spacy_padellm/default_model/training_texts.json

Pipelines initialized with examples derive the same figure themselves
(`cfg["trained_text_tokens"]`); this file serves pipelines that were not.
"""
import argparse
import json
from pathlib import Path

import numpy
import spacy

from spacy_padellm.segments import LONGEST_PERCENTILE, PIECE_PERCENTILE, SEGMENT_PERCENTILE, TrainedLengths

PERCENTILES = [SEGMENT_PERCENTILE, 50, PIECE_PERCENTILE, 95, LONGEST_PERCENTILE, 100]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path, help="JSONL training file (../shared/data format)")
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("padellm_ner")
    pipe._ensure_loaded()
    with args.train.open(encoding="utf8") as f:
        texts = [json.loads(line)[0] for line in f if line.strip()]
    lengths = pipe._count_many([t for t in texts if t.strip()])
    quantiles = numpy.percentile(lengths, PERCENTILES)
    stats = {
        "source": args.train.as_posix().split("data/", 1)[-1],
        "texts": len(lengths),
        "mean_tokens": round(float(numpy.mean(lengths)), 2),
        "percentiles": {str(p): float(q) for p, q in zip(PERCENTILES, quantiles)},
        "percentiles_used": {"budget": SEGMENT_PERCENTILE, "piece": PIECE_PERCENTILE, "longest": LONGEST_PERCENTILE},
        "segments": TrainedLengths.from_lengths(lengths).to_list(),
    }
    args.output.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf8")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
