"""One exact decoding shortcut of PaDeLLM switched on and off: tokens
evaluated per sentence, latency at batch size 1, and whether the entities
are identical, on both backends. The two variants run on the same
pipeline, alternated sentence by sentence.

    python benchmarks/decoding_switch.py ../shared/data/conll03/dev.jsonl --lines 500:800 \
        --switch fork_mentions --out benchmarks/results/mention_forks_cpu

Switches (attributes of `decoding.ParallelDecoding`): `fork_mentions`
(mention branches forked from their count branch, or re-encoded behind the
prefix) and `speculative_counts` (mentions decoded in the calls that finish
the counts); `share_tokens`, of the llama.cpp engine (branches that start
from one sequence with the same tokens evaluate those tokens once).
"""
import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import spacy

sys.path.insert(0, str(Path(__file__).parent))
from cpu import cpu_description  # noqa: E402
from line_range import line_range, read_texts  # noqa: E402

BACKENDS = {"torch": "spacy_padellm.CausalLM.v1", "llama.cpp": "spacy_padellm.LlamaCpp.v1"}
SWITCHES = {
    "fork_mentions": ("mention branches", "forked from the count branch", "re-encoded behind the prefix"),
    "speculative_counts": ("mentions", "speculated while the counts finish", "after the counts"),
    "share_tokens": ("branches that start alike", "share those tokens", "evaluate them each"),  # llama.cpp only
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--lines", type=line_range, default=(500, 800))
    parser.add_argument("--backends", default="torch,llama.cpp")
    parser.add_argument("--switch", choices=sorted(SWITCHES), default="fork_mentions")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    texts = read_texts(args.data, args.lines)
    rows = []
    for backend in args.backends.split(","):
        nlp = spacy.blank("en")
        nlp.add_pipe("padellm_ner", config={"model": {"@architectures": BACKENDS[backend]}})
        nlp("Warm up .")
        pipe = nlp.get_pipe("padellm_ner")
        decoder, engine = pipe._decoder, pipe._decoder.engine
        switched = engine if args.switch == "share_tokens" else decoder
        stats = {on: {"ms": [], "tokens": [], "ents": []} for on in (True, False)}
        for k, text in enumerate(texts):
            for on in ((True, False) if k % 2 == 0 else (False, True)):
                setattr(switched, args.switch, on)
                before = engine.tokens_evaluated
                started = time.perf_counter()
                doc = nlp(text)
                stats[on]["ms"].append(1000 * (time.perf_counter() - started))
                stats[on]["tokens"].append(engine.tokens_evaluated - before)
                stats[on]["ents"].append([(e.start_char, e.end_char, e.label_) for e in doc.ents])
            if (k + 1) % 50 == 0:
                print(f"  {backend}: {k + 1}/{len(texts)}", flush=True)
        setattr(switched, args.switch, True)
        same = sum(a == b for a, b in zip(stats[True]["ents"], stats[False]["ents"])) / len(texts)
        for on in (False, True):
            s = stats[on]
            rows.append((backend, SWITCHES[args.switch][1 if on else 2],
                         statistics.mean(s["tokens"]), statistics.mean(s["ms"]), statistics.median(s["ms"]), same))
    subject, on_text, off_text = SWITCHES[args.switch]
    lines = [f"# {subject.capitalize()}: {on_text} or {off_text}, lines {args.lines[0]}:{args.lines[1]} of {args.data}", "",
             f"{date.today().isoformat()}, {cpu_description()}; default pipeline (`add_pipe` with the shipped adapter), batch size 1; "
             "the variants alternated per sentence on one pipeline.", "",
             "`python benchmarks/decoding_switch.py " + " ".join(sys.argv[1:]) + "`", "",
             f"| backend | {subject} | tokens evaluated / sentence | mean ms | median ms | identical entities |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for backend, variant, tokens, mean, median, same in rows:
        lines.append(f"| {backend} | {variant} | {tokens:.1f} | {mean:.1f} | {median:.1f} | {100 * same:.1f}% |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
