"""`python -m spacy_padellm COMMAND`: the commands around training.

    sparsify [BASE] --sparsity 0.5 [--pattern 2:4] --calibration TRAIN [--quantize q8_0|q4_0 [--scales fitted|peak]] --output DIR
    merge PIPELINE --output DIR [--gguf Q8_0|Q4_0|F16|F32]
    search-adapter PIPELINE DEV --budget N --output DIR
    annotate INPUT OUTPUT [--pipeline P] [--n-process N | --ray ADDRESS]

`sparsify` prunes a base (by default the shipped SmolLM2-135M) and writes
it once as a Hugging Face directory that pipelines refer to by path
(`[components.padellm_ner.model] name = DIR`); they do not copy it. `merge`
folds a trained pipeline's adapter into its base (on a sparse base the
merged weights keep every zero: SparsePEFT) and writes the merged model,
optionally as GGUF for the llama.cpp backend, plus a pipeline that uses it.
`search-adapter` picks the best sub-adapter of an elastic LoRA
super-adapter on dev data and writes a pipeline with it, sliced.
`annotate` runs a pipeline over a corpus, resumably, on one machine or on
Ray (see `annotation/`).
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

CALIBRATION_TEXTS = 128
CALIBRATION_TOKENS = 256


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def calibration_texts(path: Path, limit: int) -> List[str]:
    """Texts of a JSONL file of ../shared/data, a `.spacy` DocBin or a plain
    text file (one text per line)."""
    import spacy

    if not path.exists():
        raise SystemExit(f"--calibration: no file at {path}")
    nlp = spacy.blank("en")
    if path.suffix == ".spacy":
        from spacy.tokens import DocBin

        texts = [doc.text for doc in DocBin().from_disk(path).get_docs(nlp.vocab)]
    elif path.suffix == ".jsonl":
        reader = spacy.registry.readers.get("spacy_padellm.JsonlCorpus.v1")(path, limit=limit)
        texts = [eg.reference.text for eg in reader(nlp)]
    else:
        texts = [line.strip() for line in path.read_text(encoding="utf8").splitlines()]
    texts = [t for t in texts if t.strip()][:limit]
    if not texts:
        raise SystemExit(f"--calibration: no texts in {path}")
    return texts


def sparsify_command(args: argparse.Namespace) -> None:
    import torch

    from .models.architectures import model_source
    from .models.loader import load_model
    from .models.sparsify import Pattern, sparsify
    from .prompt import PromptTemplate, PromptTokenizer

    pattern = Pattern.parse(args.pattern) if args.pattern else None
    sparsity = pattern.n / pattern.m if pattern else args.sparsity
    source = model_source(args.base, None, args.gguf_file, None, False)
    _say(f"Loading {source.describe()}")
    model, tokenizer = load_model(source, "float32", "cpu")
    batches: List[Any] = []
    if args.method == "wanda" and (sparsity > 0 or pattern):
        prompts = PromptTokenizer(tokenizer, PromptTemplate())
        for text in calibration_texts(args.calibration, args.samples):
            ids = prompts.prefix(text)[:CALIBRATION_TOKENS]
            batches.append(torch.tensor([ids], dtype=torch.long))
        _say(f"Calibrating on {len(batches)} texts of {args.calibration}")
    started = time.perf_counter()
    report = sparsify(model, batches, sparsity, pattern, args.method,
                      progress=lambda done, total: _say(f"  layer {done}/{total}"))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    scales = (args.scales or "fitted") if args.quantize else None
    if args.quantize:
        from .models.qa_sparse_peft import GRID_FILE, snap
        from .models.sparsify import linear_layers

        with torch.no_grad():
            for modules in linear_layers(model).values():
                for name, module in modules:
                    module.weight.copy_(snap(module.weight, args.quantize, fitted=scales == "fitted"))
                    report[name] = float((module.weight == 0).float().mean())  # small weights may round to 0
        (out / GRID_FILE).write_text(json.dumps({"grid": args.quantize, "block": 32, "scales": scales}) + "\n",
                                     encoding="utf8")
    from .models.hf_calls import hf_call

    with hf_call():  # transformers' progress bars stay out of the user's terminal
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    summary = {
        "base": source.to_dict(), "method": args.method, "sparsity": sparsity, "pattern": args.pattern,
        "quantize": args.quantize, "scales": scales,
        "calibration": str(args.calibration) if batches else None,
        "calibration_texts": len(batches), "seconds": round(time.perf_counter() - started, 1),
        "zero_fraction_of_pruned_weights": round(sum(report.values()) / len(report), 4), "modules": report,
    }
    (out / "sparsity.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf8")
    what = "sparse base" if sparsity or pattern else "base (not pruned)"
    _say(f"Wrote the {what} to {out} ({summary['zero_fraction_of_pruned_weights']:.1%} of the decoder "
         f"projections' weights are zero{', on the ' + args.quantize.upper() + ' grid' if args.quantize else ''}). "
         f"Use it with [components.padellm_ner.model] name = \"{out}\".")


GGUF_TYPES = {"Q8_0": "q8_0", "Q4_0": "q4_0", "F16": "f16", "F32": "f32"}


def _load_component(path: str) -> Tuple[Any, str, Any]:
    """A saved pipeline, the name of its padellm_ner component, and that
    component's loaded model shim."""
    import spacy

    from .pipe import PaDeLLMNER

    nlp = spacy.load(path)
    names = [name for name, pipe in nlp.pipeline if isinstance(pipe, PaDeLLMNER)]
    if not names:
        raise SystemExit(f"{path} has no padellm_ner component.")
    shim = nlp.get_pipe(names[0]).shim
    shim.load()
    return nlp, names[0], shim


def merge_command(args: argparse.Namespace) -> None:
    from .models.hf_calls import hf_call
    from .models.loader import ModelSource

    nlp, name, shim = _load_component(args.pipeline)
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    from .models.qa_sparse_peft import merge_onto_grid

    with hf_call():
        merged, grid, kind = merge_onto_grid(shim.model)  # a QA adapter lands exactly on the base's grid
        merged.save_pretrained(model_dir, safe_serialization=True)
        shim.tokenizer.save_pretrained(model_dir)
    _say(f"Wrote the merged model to {model_dir}")
    if args.gguf:
        from .models.gguf_export import export_gguf

        path = export_gguf(merged, shim.tokenizer, model_dir / "model.gguf", GGUF_TYPES[args.gguf.upper()],
                           grid=grid, grid_type=kind)
        _say(f"Wrote {path} (llama.cpp: LlamaCpp.v1 with name = \"{model_dir}\" exports it again; "
             "or load the file with any GGUF reader)")
    # The pipeline now refers to the merged model and carries no adapter.
    shim.use_merged(merged, ModelSource(name=str(model_dir)))
    config = nlp.get_pipe_config(name)["model"]
    for key in ("package", "gguf_file", "revision", "adapter"):
        config.pop(key, None)
    config["name"] = str(model_dir)
    nlp.to_disk(out / "pipeline")
    _say(f"Wrote a pipeline that uses it to {out / 'pipeline'}")


def _examples(nlp: Any, path: Path, skip: int, limit: int) -> List[Any]:
    import spacy
    from spacy.training import Example

    if path.suffix == ".spacy":
        from spacy.tokens import DocBin

        refs = list(DocBin().from_disk(path).get_docs(nlp.vocab))[skip:]
        refs = refs[:limit] if limit else refs
        return [Example(nlp.make_doc(r.text), r) for r in refs]
    reader = spacy.registry.readers.get("spacy_padellm.JsonlCorpus.v1")(path, skip=skip, limit=limit)
    return list(reader(nlp))


def write_sub_adapter(nlp: Any, name: str, shim: Any, ranks: Dict[str, int], out: Path) -> Path:
    """Save `nlp` with its elastic super-adapter cut to `ranks` (a plain
    peft LoRA with per-module ranks); changes the component's config."""
    shim.unmerge()
    shim.prediction_ranks = ranks
    config = nlp.get_pipe_config(name)["model"]
    config["fine_tuning"] = "lora"  # the sub-adapter is a plain LoRA with per-module ranks
    out.mkdir(parents=True, exist_ok=True)
    nlp.to_disk(out)
    from .models.adapter_search import slice_adapter

    adapter = out / name / "model" / "adapter"
    slice_adapter(adapter, shim.elastic.ranks_by_module(ranks), adapter)
    return out


def search_command(args: argparse.Namespace) -> None:
    from .models.adapter_search import hill_climb

    nlp, name, shim = _load_component(args.pipeline)
    elastic = shim.elastic
    if elastic is None:
        raise SystemExit(f"{args.pipeline} has no elastic adapter: train it with fine_tuning = \"elastic_lora\".")
    examples = _examples(nlp, Path(args.dev), args.skip, args.limit)
    _say(f"Searching {len(elastic.groups)} groups x ranks {elastic.choices} on {len(examples)} texts of {args.dev}, "
         f"budget {args.budget} evaluations")

    def evaluate(ranks: Dict[str, int]) -> float:
        shim.unmerge()  # merged at the previous ranks
        shim.prediction_ranks = ranks
        return float(nlp.evaluate(examples)["ents_f"] or 0.0)

    def progress(trial: Any, best: Any, used: int) -> None:
        _say(f"  {used}/{args.budget}: F1 {100 * trial.score:.2f} with {trial.parameters:,} adapter parameters "
             f"(best {100 * best.score:.2f})")

    result = hill_climb(evaluate, elastic.median(), elastic.choices, args.budget, elastic.parameters, progress=progress)
    out = Path(args.output)
    write_sub_adapter(nlp, name, shim, result.best.ranks, out / "pipeline")
    report = {
        "pipeline": str(args.pipeline), "dev": str(args.dev), "texts": len(examples), "budget": args.budget,
        "choices": elastic.choices, "best": vars(result.best),
        "median": vars(result.trials[0]), "maximal_parameters": elastic.parameters(elastic.maximal()),
        "trials": [vars(t) for t in result.trials],
    }
    (out / "search.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    _say(f"Best F1 {100 * result.best.score:.2f} ({result.best.parameters:,} parameters); wrote {out / 'pipeline'} "
         f"and every trial to {out / 'search.json'}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spacy_padellm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sp = commands.add_parser("sparsify", help="prune a base model (Wanda or magnitude) and write it once")
    sp.add_argument("base", nargs="?", default=None, help="Hugging Face name or directory (default: the shipped SmolLM2-135M)")
    sp.add_argument("--gguf-file", default=None, help="a GGUF file inside BASE")
    sp.add_argument("--sparsity", type=float, default=0.5,
                    help="share of each row's weights removed (unstructured); 0 prunes nothing (with --quantize: a dense base on a grid)")
    sp.add_argument("--pattern", default=None, help="N:M semi-structured instead, e.g. 2:4")
    sp.add_argument("--method", default="wanda", choices=["wanda", "magnitude"])
    sp.add_argument("--calibration", type=Path, default=None, help="training texts for Wanda (JSONL, .spacy or text)")
    sp.add_argument("--samples", type=int, default=CALIBRATION_TEXTS, help="calibration texts used")
    sp.add_argument("--quantize", default=None, type=str.lower, choices=["q8_0", "q4_0"],
                    help="also put the pruned projections on GGUF's Q8_0 or Q4_0 grid (for QA-SparsePEFT)")
    sp.add_argument("--scales", default=None, choices=["fitted", "peak"],
                    help="with --quantize: each block's scale of least squared rounding error (it may clip the "
                         "peak; default), or the one of its peak weight (ggml's reference quantizer)")
    sp.add_argument("--output", required=True, help="directory for the sparse base")
    sp.set_defaults(run=sparsify_command)
    mp = commands.add_parser("merge", help="fold a pipeline's adapter into its base; write the model and a pipeline")
    mp.add_argument("pipeline", help="a saved pipeline with a padellm_ner component")
    mp.add_argument("--output", required=True, help="directory for model/ (and model/model.gguf) and pipeline/")
    mp.add_argument("--gguf", default=None, type=str.upper, choices=sorted(GGUF_TYPES), help="also write a GGUF file")
    mp.set_defaults(run=merge_command)
    se = commands.add_parser("search-adapter", help="pick an elastic adapter's best sub-adapter on dev data")
    se.add_argument("pipeline", help="a saved pipeline trained with fine_tuning = \"elastic_lora\"")
    se.add_argument("dev", help="dev data (JSONL of ../shared/data, or .spacy)")
    se.add_argument("--budget", type=int, default=20, help="configurations evaluated at most")
    se.add_argument("--skip", type=int, default=0, help="leave out the first dev texts")
    se.add_argument("--limit", type=int, default=0, help="dev texts used (0: all)")
    se.add_argument("--output", required=True, help="directory for pipeline/ and search.json")
    se.set_defaults(run=search_command)
    from .annotation import command as annotate

    annotate.add_parser(commands)
    args, extra = parser.parse_known_args(argv)
    if args.command == "annotate":
        args.run(args, extra)
        return
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "sparsify" and args.method == "wanda" and args.calibration is None and (args.sparsity or args.pattern):
        parser.error("sparsify --method wanda needs --calibration TRAIN (or use --method magnitude)")
    if args.command == "sparsify" and args.calibration is not None and not args.calibration.is_file():
        parser.error(f"--calibration: no file at {args.calibration}")  # before the base's slow load
    if args.command == "sparsify" and args.scales is not None and not args.quantize:
        parser.error("--scales chooses the scales of a grid: add --quantize q8_0 or q4_0")
    args.run(args)
