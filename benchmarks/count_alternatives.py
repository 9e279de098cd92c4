"""Two decoding variants that use the count step's confidence, against the
shipped rule, chosen on one part of dev and reported on another.

Wrong counts are where recall goes (`count_errors.py`), and they tend to
be the uncertain ones. Two ways to use the count's probability without
retraining:

- joint score: a span's score (which decides label conflicts and the flat
  selection) is P(count) x P(mention) instead of P(mention);
- one more mention: where P(count) is below a threshold, also decode the
  (c+1)-th mention of count c+1, scored (1 - P(count)) x P(mention), so
  it only fills places no surer span takes.

Every (text, label) gets its greedy count and mentions, plus the
(c+1)-th mention under count c+1, so each variant is scored from the same
generations (`--cache` keeps them, keyed by the pipeline's settings). The
spans go through the pipe's own alignment and `set_annotations`; texts
must fit the context (no windows).

    python benchmarks/count_alternatives.py ../shared/data/conll03/dev.jsonl \\
        --select 0:500 --report 500:1500 --cache training/count_alternatives
"""
import argparse
import hashlib
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional

from spacy.tokens import Doc

from spacy_padellm.alignment import align_mentions
from spacy_padellm.corpus import make_jsonl_corpus
from spacy_padellm.decoding import generation_text, parse_count, start_branches
from spacy_padellm.types import DocPrediction, Mention

sys.path.insert(0, str(Path(__file__).parent))
import systems  # noqa: E402
from line_range import line_range  # noqa: E402

Record = Dict[str, Any]


def decode(pipe: Any, texts: List[str], batch_size: int) -> List[Record]:
    """Greedy counts' probabilities, the greedy mentions (extra=0) and the
    (c+1)-th mention under count c+1 (extra=1)."""
    dec = pipe._decoder
    budget = pipe._text_budget
    records: List[Record] = []
    for begin in range(0, len(texts), batch_size):
        batch = texts[begin : begin + batch_size]
        if budget is not None and any(pipe._count_tokens(t) > budget for t in batch):
            raise SystemExit("a text is longer than the model's context; this benchmark decodes no windows")
        prefixes, count_gens = start_branches(
            dec.engine,
            [dec.prefix_ids(t) for t in batch],
            [dec.prompts.count_branch(label) for label in dec.labels],
            dec.max_count_tokens,
            fused=dec.fused_prefill,
            first_token_bias=dec.count_bias,
        )
        found: List[Record] = [{"text": t, "count_prob": {}, "mentions": []} for t in batch]
        keys = []
        branches = [(i, label) for i in range(len(batch)) for label in dec.labels]
        for (i, label), gen in zip(branches, count_gens):
            count, _ = parse_count(generation_text(dec.tokenizer, gen), dec.max_count)
            found[i]["count_prob"][label] = gen.probability
            keys.extend((i, label, count, n, 0) for n in range(1, count + 1))
            keys.append((i, label, count + 1, count + 1, 1))
        gens = dec.engine.decode(
            prefixes,
            [k[0] for k in keys],
            [dec.prompts.mention_branch(label, c, n) for _, label, c, n, _ in keys],
            dec.max_mention_tokens,
        )
        for (i, label, _, n, extra), gen in zip(keys, gens):
            if gen.stopped:
                text = generation_text(dec.tokenizer, gen)
                mention = {"label": label, "n": n, "extra": extra, "text": text, "prob": gen.probability}
                found[i]["mentions"].append(mention)
        records.extend(found)
        print(f"decoded {len(records)}/{len(texts)}", flush=True)
    return records


def score(
    pipe: Any, records: List[Record], refs: List[Doc], joint: bool, threshold: Optional[float]
) -> Dict[str, float]:
    """Entity P/R/F of one variant, annotated by the pipe's own
    `set_annotations`."""
    tp = fp = fn = 0
    for record, ref in zip(records, refs):
        mentions = []
        for m in record["mentions"]:
            p_count = record["count_prob"][m["label"]]
            if m["extra"]:
                if threshold is None or p_count >= threshold:
                    continue
                value = (1.0 - p_count) * m["prob"]
            else:
                value = p_count * m["prob"] if joint else m["prob"]
            mentions.append(Mention(m["label"], m["n"], m["text"], value))
        char_spans, _ = align_mentions(record["text"], mentions)
        doc = Doc(ref.vocab, words=[t.text for t in ref], spaces=[bool(t.whitespace_) for t in ref])
        pipe.set_annotations([doc], [DocPrediction(spans=char_spans)])
        pred = {(s.start, s.end, s.label_) for s in doc.ents}
        gold = {(s.start, s.end, s.label_) for s in ref.ents}
        tp, fp, fn = tp + len(pred & gold), fp + len(pred - gold), fn + len(gold - pred)
    p = tp / max(1, tp + fp)
    r = tp / max(1, tp + fn)
    return {"ents_p": 100 * p, "ents_r": 100 * r, "ents_f": 100 * 2 * p * r / max(1e-9, p + r)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="JSONL dev file")
    parser.add_argument("--pipeline", default=None, help="a saved pipeline (default: the shipped default model)")
    parser.add_argument("--end", default="inclusive")
    parser.add_argument("--select", type=line_range, default=(0, 500), help="lines START:STOP to choose on")
    parser.add_argument("--report", type=line_range, default=(500, 1500), help="lines START:STOP to report on")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9])
    parser.add_argument("--batch-size", type=int, default=None, help="texts per decoding batch (the pipe's)")
    parser.add_argument("--cache", type=Path, default=None, help="folder that keeps the decoded generations")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "count_alternatives_cpu")
    args = parser.parse_args()

    nlp = systems.padellm("parallel", args.pipeline).nlp
    pipe = nlp.get_pipe("padellm_ner")
    settings = json.dumps([args.pipeline, sorted(pipe.cfg.items())], sort_keys=True, default=str)
    key = hashlib.sha1(settings.encode("utf8")).hexdigest()[:10]
    variants = [("shipped", False, None), ("joint score", True, None)]
    variants += [(f"joint score, one more mention below P(count) {t}", True, t) for t in args.thresholds]
    result: Dict[str, Any] = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {platform.system()}",
        "path": str(args.path),
        "pipeline": args.pipeline or "the shipped default model",
        "parts": {},
    }
    for part, (start, stop) in (("select", args.select), ("report", args.report)):
        corpus = make_jsonl_corpus(args.path, end=args.end, skip=start, limit=stop - start)
        refs = [eg.reference for eg in corpus(nlp)]
        cached = args.cache / f"{key}_{start}_{stop}.json" if args.cache else None
        if cached and cached.exists():
            records = json.loads(cached.read_text(encoding="utf8"))
        else:
            pipe._ensure_loaded()
            pipe.shim.merge_for_inference()
            began = time.perf_counter()
            records = decode(pipe, [d.text for d in refs], args.batch_size or pipe.cfg["batch_size"])
            result.setdefault("decode_seconds", {})[part] = time.perf_counter() - began
            if cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_text(json.dumps(records), encoding="utf8")
        if [r["text"] for r in records] != [d.text for d in refs]:
            raise SystemExit(f"{cached} holds other texts than lines {start}:{stop}; delete it")
        scores = {name: score(pipe, records, refs, joint, t) for name, joint, t in variants}
        result["parts"][part] = {"lines": [start, start + len(refs)], "scores": scores}
    select = result["parts"]["select"]["scores"]
    result["chosen"] = max(select, key=lambda name: (select[name]["ents_f"], name == "shipped"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf8")
    args.out.with_suffix(".md").write_text(markdown(result), encoding="utf8")
    print(markdown(result))


def markdown(result: Dict[str, Any]) -> str:
    lines = [
        f"# Count-confidence decoding variants ({result['date']}, {result['machine']})",
        "",
        f"{result['pipeline']} on {result['path']}; chosen on the select part by ents F: **{result['chosen']}**.",
        "",
        "| variant | " + " | ".join(f"{part} {k}" for part in result["parts"] for k in ("P", "R", "F")) + " |",
        "| --- | " + " | ".join("---:" for _ in result["parts"] for _ in range(3)) + " |",
    ]
    keys = ("ents_p", "ents_r", "ents_f")
    for name in result["parts"]["select"]["scores"]:
        cells = [f"{result['parts'][part]['scores'][name][k]:.2f}" for part in result["parts"] for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    parts = ", ".join(f"{part} = lines {v['lines'][0]}-{v['lines'][1]}" for part, v in result["parts"].items())
    lines += ["", f"Parts: {parts}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
