"""Markdown tables and PNG plots of a decoding benchmark report."""
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List

BATCH_SIZES = (1, 8, 32)  # of the throughput runs; keys of report["systems"][...]["throughput"]


def _fmt(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(report: Dict[str, Any]) -> str:
    systems = report["systems"]
    lines = [
        f"# Decoding benchmark ({report['date']}, {report['device']})",
        "",
        f"{report['docs']} docs of `{report['data']}`. Command: `{report['command']}`",
        "",
        "| system | docs | span P | span R | span F | string F | latency mean ms | p50 | p90 | speed-up vs AR | gen. tokens/doc | seq. steps/doc |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in systems.items():
        lat = r["latency_ms"]
        lines.append(
            f"| {name} | {r['docs']} | {100 * r['span']['p']:.2f} | {100 * r['span']['r']:.2f} | "
            f"**{100 * r['span']['f']:.2f}** | {100 * r['string']['f']:.2f} | {lat['mean']:.1f} | {lat['p50']:.1f} | "
            f"{lat['p90']:.1f} | {r['latency_speedup_vs_autoregressive']:.2f}x | "
            f"{_fmt(r.get('generated_tokens_per_doc'))} | {_fmt(r.get('decoding_steps_per_doc'))} |"
        )
    lines += ["", "Throughput with `nlp.pipe` (docs/s, words/s in brackets), peak memory above the level before each run, and the memory the system took when it was loaded (resident set on CPU, allocated on GPU):", "",
              "| system | " + " | ".join(f"bs {b}" for b in BATCH_SIZES) + " | peak MB (bs 1 / 8 / 32) | MB once loaded |",
              "| --- |" + " ---: |" * (len(BATCH_SIZES) + 2)]
    for name, r in systems.items():
        t = {int(k): v for k, v in r["throughput"].items()}  # str keys once read back from JSON
        cells = [f"{t[b]['docs_per_s']:.2f} ({t[b]['words_per_s']:.0f})" if b in t else "–" for b in BATCH_SIZES]
        memory = " / ".join(f"{t[b]['peak_memory_mb']:.0f}" if b in t else "–" for b in BATCH_SIZES)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {memory} | {_fmt(r.get('loaded_memory_mb'), 0)} |")
    evaluated = [f"{name} {r['tokens_evaluated_per_doc']:.1f}" for name, r in systems.items() if r.get("tokens_evaluated_per_doc") is not None]
    if evaluated:
        lines += ["", "Tokens evaluated per doc by the engine (real tokens, padding not counted; latency run): " + "; ".join(evaluated) + "."]
    lines += by_entities_lines(systems)
    lines += profile_lines(systems)
    notes = [f"- {name}: {'; '.join(r['notes'])}" for name, r in systems.items() if r["notes"]]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


ENTITY_BUCKETS = ((0, 0), (1, 1), (2, 2), (3, 3), (4, 5), (6, 10**6))


def by_entities_lines(systems: Dict[str, Any]) -> List[str]:
    """Mean latency at batch size 1 by the number of gold entities in the
    doc, and PaDeLLM's ratio to the autoregressive row of the same backend."""
    def mean_in(r: Dict[str, Any], low: int, high: int) -> Any:
        values = [p["ms"] for p in r["latency_by_doc"] if low <= p["n_ents"] <= high]
        return (statistics.mean(values), len(values)) if values else (None, 0)

    names = [n for n, r in systems.items() if r.get("kind") == "padellm"]
    if not names:
        return []
    labels = [f"{lo}" if lo == hi else f"{lo}+" if hi > 100 else f"{lo}-{hi}" for lo, hi in ENTITY_BUCKETS]
    lines = ["", "Mean latency (ms, batch size 1) by gold entities per doc; the ratio is the autoregressive row's "
             "time over PaDeLLM's on the same backend (above 1: PaDeLLM is faster):", "",
             "| entities | docs | " + " | ".join(names) + " | " + " | ".join(f"AR / PaDeLLM, {n.split(', ', 1)[1] if ', ' in n else 'torch'}" for n in names if n.startswith("parallel")) + " |",
             "| --- | ---: |" + " ---: |" * (len(names) + sum(n.startswith("parallel") for n in names))]
    for label, (low, high) in zip(labels, ENTITY_BUCKETS):
        means = {n: mean_in(systems[n], low, high) for n in names}
        count = max(c for _, c in means.values())
        if not count:
            continue
        ratios = []
        for n in names:
            if n.startswith("parallel"):
                other = n.replace("parallel", "autoregressive", 1)
                a, p = means.get(other, (None, 0))[0], means[n][0]
                ratios.append(f"{a / p:.2f}x" if a and p else "–")
        lines.append(f"| {label} | {count} | " + " | ".join(_fmt(means[n][0]) for n in names) + " | " + " | ".join(ratios) + " |")
    return lines


def draw(report: Dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = report["systems"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in systems.items():
        by_n = defaultdict(list)
        for point in r["latency_by_doc"]:
            by_n[point["n_ents"]].append(point["ms"])
        xs = sorted(by_n)
        (line,) = ax.plot(xs, [statistics.median(by_n[x]) for x in xs], marker="o", label=f"{name} (median)")
        ax.scatter([p["n_ents"] for p in r["latency_by_doc"]], [p["ms"] for p in r["latency_by_doc"]],
                   s=6, alpha=0.25, color=line.get_color())
    ax.set_xlabel("gold entities in the doc")
    ax.set_ylabel("latency at batch size 1 (ms)")
    ax.set_yscale("log")
    save_figure(fig, ax, f"Latency vs. entities ({report['device']})", out.with_name(out.name + "_latency_vs_entities.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in systems.items():
        points = sorted((1000 / v["docs_per_s"], int(b)) for b, v in r["throughput"].items())
        ax.plot([p[0] for p in points], [100 * r["span"]["f"]] * len(points), marker="o", label=name)
        for ms, b in points:
            ax.annotate(f"bs {b}", (ms, 100 * r["span"]["f"]), fontsize=7, xytext=(2, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("time per doc with nlp.pipe (ms, log scale)")
    ax.set_ylabel("span F1 (ents)")
    save_figure(fig, ax, f"F1 vs. time per doc by batch size ({report['device']})", out.with_name(out.name + "_f1_vs_latency.png"))


def save_figure(fig: Any, ax: Any, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def profile_lines(systems: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    profiled = {n: r["profile_ms_per_doc"] for n, r in systems.items() if "profile_ms_per_doc" in r}
    if profiled:
        order = ["prefill (fused)", "generation inside the fused call", "prefill (unfused)", "decode call 1", "decode call 2"]
        phases: List[str] = []
        for step in order:
            phases += [p for p in (step, step + " (model forward)") if any(p in prof for prof in profiled.values())]
        phases += sorted({p for prof in profiled.values() for p in prof} - set(phases) - {"total"})
        lines += ["", "Where the time goes at batch size 1 (ms per doc). Phases are engine calls: the fused prefill (text and the first step's branches in one forward call), the generation that continues inside it (the autoregressive line), then each later decode call (PaDeLLM: 1 = the count step, with the speculated mentions when counts are speculated; 2 = the mention step). \"model forward\" is the part spent in the model's forward calls; the rest of a phase is Python and cache handling, and \"outside decoding\" is tokenization, alignment, annotation and spaCy:", "",
                  "| phase | " + " | ".join(profiled) + " |", "| --- |" + " ---: |" * len(profiled)]
        for phase in phases + ["total"]:
            lines.append(f"| {phase} | " + " | ".join(_fmt(prof.get(phase)) for prof in profiled.values()) + " |")
    ablations = {n: r["ablation_ms_per_doc"] for n, r in systems.items() if "ablation_ms_per_doc" in r}
    if ablations:
        lines += ["", "Decoding shortcuts switched on and off (mean ms per doc at batch size 1 on the profiled docs, variants rotated doc by doc; all variants give the same entities). Fusion: the text and the first step's branches in one forward call. Forked mentions: mention branches continue their count branch. Speculative counts: the mentions of the count a count's first token spells decoded in the calls that finish the counts (one forward call fewer; forked from the first token, or, without forks, label branches encoded again).", "",
                  "| system | variant | ms per doc | vs. the default here |", "| --- | --- | ---: | ---: |"]
        for name, variants in ablations.items():
            default = variants["default here"]
            for variant, ms in variants.items():
                if variant != "default here":
                    mark = " (default here)" if variant == default else ""
                    lines.append(f"| {name} | {variant}{mark} | {ms:.1f} | {ms / variants[default]:.2f}x |")
    return lines


def profile_markdown(report: Dict[str, Any]) -> str:
    lines = [f"# Decoding profile ({report['date']}, {report['device']})", "",
             f"{report['docs']} docs of `{report['data']}`. Command: `{report['command']}`"]
    return "\n".join(lines + profile_lines(report["systems"])) + "\n"
