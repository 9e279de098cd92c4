"""Experiment (taken back): the llama.cpp engine with the prefixes fused
into the branches' first call, and with drafts from the text for mention
branches, against neither; variants alternated sentence by sentence.
Usage: python benchmarks/llama_cpp_drafts.py 500:800"""
import time, sys, json, statistics
import spacy
import spacy_padellm.llama_cpp_engine as m
nlp = spacy.blank("en")
nlp.add_pipe("padellm_ner", config={"model": {"@architectures": "spacy_padellm.LlamaCpp.v1"}})
a, b = map(int, sys.argv[1].split(":"))
rows = [json.loads(l) for l in open("../shared/data/conll03/dev.jsonl")][a:b]
texts = [r[0] for r in rows]
nlp(texts[0])
eng = None
import gc
for o in gc.get_objects():
    if isinstance(o, m.LlamaCppEngine): eng = o
variants = {"old": (0, 0), "fused": (64, 0), "fused+d4": (64, 4)}
times = {v: [] for v in variants}; ents = {v: [] for v in variants}; toks = {v: 0 for v in variants}
for i, t in enumerate(texts):
    names = list(variants); names = names[i % len(names):] + names[:i % len(names)]
    for v in names:
        m.SEQS_PER_TOKEN, eng.draft_tokens = variants[v][0] or 1, variants[v][1]
        e0 = eng.tokens_evaluated
        s = time.perf_counter(); d = nlp(t); times[v].append(time.perf_counter() - s)
        toks[v] += eng.tokens_evaluated - e0
        ents[v].append([(e.start_char, e.end_char, e.label_) for e in d.ents])
for v in variants:
    same = sum(x == y for x, y in zip(ents[v], ents["old"]))
    print(f"{v:10s} mean {1000*statistics.mean(times[v]):6.1f} median {1000*statistics.median(times[v]):6.1f} ratio {statistics.mean(times[v])/statistics.mean(times['old']):.3f} tokens/doc {toks[v]/len(texts):.1f} identical {same}/{len(texts)}")
