"""What one `llama_decode` call costs on this CPU, by the tokens it carries:
the profile behind the llama.cpp engine's speed (see "Backends" in the
README). A 40-token prefix is evaluated as sequence 0; each call then
evaluates one token in each of n sequences copied from it (logits for all,
as the engine's steps do), median of `--repeats`.

    python benchmarks/llama_cpp_calls.py MODEL.gguf [MORE.gguf ...] \\
        --out benchmarks/results/llama_cpp_calls_cpu

Another llama-cpp-python build (other CMake flags, e.g.
`-DGGML_LLAMAFILE=OFF`) is measured by installing it with `pip install
--target DIR` and running this script with `PYTHONPATH=DIR` and a `--label`
that names the build. Quantized files of the default model come from its F32 export
with `llama_cpp.llama_model_quantize` (`--quantize Q4_0,BF16` writes them
next to the first MODEL first).
"""
import argparse
import ctypes
import statistics
import sys
import time
from datetime import date
from importlib.metadata import version
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).parent))
from cpu import cpu_description  # noqa: E402

from spacy_padellm.llama_cpp_engine import import_llama_cpp  # noqa: E402

SIZES = (1, 2, 3, 4, 8, 16, 40)


def quantize(L, source: Path, kinds: List[str]) -> List[Path]:
    out = []
    for kind in kinds:
        params = L.llama_model_quantize_default_params()
        params.ftype = getattr(L, "LLAMA_FTYPE_MOSTLY_" + kind.upper())
        path = source.with_name(f"{source.stem}-{kind.lower()}.gguf")
        if L.llama_model_quantize(str(source).encode(), str(path).encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"llama_model_quantize failed for {kind}")
        out.append(path)
    return out


def time_calls(L, path: Path, threads: int, repeats: int) -> Dict[int, float]:
    mparams = L.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = L.llama_model_load_from_file(str(path).encode(), mparams)
    cparams = L.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = 4096
    cparams.n_ubatch, cparams.n_seq_max, cparams.kv_unified = 512, 64, True  # as the engine's
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = L.llama_init_from_model(model, cparams)
    memory = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(4096, 0, 1)

    def run(entries) -> float:
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(entries)
        start = time.perf_counter()
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return 1000 * (time.perf_counter() - start)

    run([(100 + i, i, 0, False) for i in range(40)])
    out = {}
    for n in SIZES:
        times = []
        for _ in range(repeats):
            for seq in range(1, n + 1):
                L.llama_memory_seq_rm(memory, seq, -1, -1)
                L.llama_memory_seq_cp(memory, 0, seq, -1, -1)
            times.append(run([(200 + seq, 40, seq, True) for seq in range(1, n + 1)]))
        out[n] = statistics.median(times)
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--quantize", default="", help="also write and time these types of the first model (Q4_0,BF16,...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--label", default="default build")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    L = import_llama_cpp()
    models = list(args.models) + quantize(L, args.models[0], [k for k in args.quantize.split(",") if k])
    rows = []
    for path in models:
        ms = time_calls(L, path, args.threads, args.repeats)
        rows.append(f"| {path.name} | " + " | ".join(f"{ms[n]:.1f}" for n in SIZES) + f" | {ms[40] / 40:.2f} |")
        print(rows[-1], flush=True)
    lines = [
        f"# Cost of one llama_decode call by its tokens: {args.label}",
        "",
        f"{date.today().isoformat()}, {cpu_description()}, llama-cpp-python {version('llama_cpp_python')} "
        f"({args.label}), {args.threads} threads; ms, median of {args.repeats} calls of n tokens (n sequences "
        "copied from a 40-token prefix, one token each, logits for all).",
        "",
        "`python benchmarks/llama_cpp_calls.py " + " ".join(sys.argv[1:]) + "`",
        "",
        "| model | " + " | ".join(f"{n} tok" for n in SIZES) + " | ms per token at 40 |",
        "| --- | " + " | ".join("---:" for _ in SIZES) + " | ---: |",
        *rows,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf8")


if __name__ == "__main__":
    main()
