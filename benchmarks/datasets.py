"""Collect `spacy evaluate` results of several trained pipelines (issue 6:
GENIA nested, Resume, Weibo; and CoNLL-03) into one table and one figure.

Each `--result NAME=METRICS_JSON[:NOTE]` is the `--output` of `spacy evaluate`,
or the `meta.json` of a `spacy train` output (its "performance": the scores of
the training-time evaluation on the dev corpus of the config).
Writes `<out>.json`, `<out>.md` and `<out>.png` (span-group P/R/F per
dataset, nested recall where the gold spans nest).

    python benchmarks/datasets.py \\
        --result "GENIA (nested)=training/genia/metrics.json:held-out lines 1470-1669" \\
        --result "Resume=training/resume/metrics.json:whole dev" \\
        --out benchmarks/results/datasets_cpu
"""
import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).parent))
from plots import save_figure  # noqa: E402

SPANS = "spans_padellm"


def parse_result(value: str) -> Dict[str, Any]:
    name, rest = value.split("=", 1)
    path, _, note = rest.partition(":")
    data = json.loads(Path(path).read_text())
    metrics = data.get("performance", data)  # meta.json of a trained pipeline
    return {"name": name, "path": path, "note": note, "metrics": metrics}


def pct(metrics: Dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    return "–" if value is None else f"{100 * value:.2f}"


def markdown(report: Dict[str, Any]) -> str:
    lines = [
        f"# Trained pipelines, `spacy evaluate` ({report['date']}, {report['machine']})",
        "",
        "Span group: every predicted span, overlaps allowed (spaCy's `Scorer.score_spans`). "
        "ents: the flat view in `doc.ents`. Nested recall: gold spans that contain or lie "
        "inside another gold span, predicted with their label.",
        "",
        "| dataset | evaluated on | span P | span R | span F | ents P | ents R | ents F | nested recall | words/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        m = r["metrics"]
        nested = "–"
        if m.get(f"{SPANS}_nested_n"):
            found = round(m[f"{SPANS}_nested_r"] * m[f"{SPANS}_nested_n"])
            nested = f"{pct(m, f'{SPANS}_nested_r')} ({found} of {m[f'{SPANS}_nested_n']})"
        speed = m.get("speed")
        lines.append(
            f"| {r['name']} | {r['note']} | {pct(m, f'{SPANS}_p')} | {pct(m, f'{SPANS}_r')} | {pct(m, f'{SPANS}_f')} "
            f"| {pct(m, 'ents_p')} | {pct(m, 'ents_r')} | {pct(m, 'ents_f')} | {nested} "
            f"| {'–' if speed is None else f'{speed:.0f}'} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results: List[Dict[str, Any]] = report["results"]
    keys = [("p", "P"), ("r", "R"), ("f", "F"), ("nested_r", "nested recall")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        # the span group where it was scored, else the flat ents
        values = [100 * (r["metrics"].get(f"{SPANS}_{key}", r["metrics"].get(f"ents_{key}")) or 0) for r in results]
        xs = [i + k * width for i in range(len(results))]
        ax.bar(xs, values, width, label=label)
    ax.set_xticks([i + 1.5 * width for i in range(len(results))], [r["name"] for r in results], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    save_figure(fig, ax, f"padellm_ner after short CPU training ({report['date']})", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--result", action="append", required=True, type=parse_result)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "datasets_cpu")
    args = parser.parse_args()
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {platform.system()}",
        "results": args.result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    args.out.with_suffix(".md").write_text(markdown(report))
    plot(report, args.out.with_suffix(".png"))
    print(markdown(report))


if __name__ == "__main__":
    main()
