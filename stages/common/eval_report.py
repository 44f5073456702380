"""Evaluate's report for people: reports/eval.md (every variant with intervals, the candidate and why, the
comparisons, guardrails, the serving precision, the gates, sample answers), reports/eval.png (every metric side by
side), reports/eval_precision.png (quality against size), and the DVC plot's CSV and the answers file beside them.

    python -m stages.evaluate       # writes them, with metrics/eval.json
"""

from __future__ import annotations

from pathlib import Path

from stages.common.confidence import cell
from stages.common.io import write_csv, write_jsonl, write_text
from stages.common.variants import RAG


def write_report(
    report: dict,
    paths,
    eval_rows: list[dict],
    rag_rows: list[dict] | None,
    answers: dict,
    prompt: dict,
    why_no_precision: str,
) -> None:
    """Every file of the report, each written whole (a temporary file, then moved)."""
    primary = report["primary_metric"]
    # The DVC plot of the variants: the primary metric with its interval, one row per variant.
    write_csv(
        Path(paths.metrics) / "eval_variants.csv",
        [
            {
                "variant": n,
                "primary": v[primary]["value"],
                "ci_low": v[primary].get("ci_low", ""),
                "ci_high": v[primary].get("ci_high", ""),
            }
            for n, v in report["variants"].items()
        ],
        ["variant", "primary", "ci_low", "ci_high"],
    )
    write_jsonl(
        Path(paths.eval_report).with_name("eval_answers.jsonl"),
        [
            {
                "prompt": r["prompt"],
                "references": r["references"],
                **({"retrieved": rag_rows[i]["retrieved"]} if rag_rows else {}),
                **{n: answers[n][i] for n in answers},
            }
            for i, r in enumerate(eval_rows)
        ],
    )
    plot(report["variants"], Path(paths.eval_report).with_suffix(".png"))
    serving = report["serving"]
    # DVC wants every declared plot: without a serving precision, the plot says why there is none.
    metric = serving["quality_metric"] if serving else primary
    plot_precisions(serving, metric, precision_plot(paths), why_no_precision)
    write_text(paths.eval_report, markdown(report, eval_rows, answers, prompt))


def precision_plot(paths) -> Path:
    return Path(paths.eval_report).with_name("eval_precision.png")


def plot(results: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, len(shown), figsize=(3.1 * len(shown), 3.2), squeeze=False)
    axes = axes[0]
    names = list(results)
    for ax, metric in zip(axes, shown):
        cells = [results[n][metric] for n in names]
        value = [c["value"] for c in cells]
        err = (
            [
                [c["value"] - c.get("ci_low", c["value"]) for c in cells],
                [c.get("ci_high", c["value"]) - c["value"] for c in cells],
            ]
            if "ci_low" in cells[0]
            else None
        )
        ax.bar(
            range(len(names)),
            value,
            yerr=err,
            capsize=4,
            color=[_colour(n) for n in names],
            hatch=[("//" if n.endswith(RAG) else "") for n in names],
        )
        ax.set_xticks(
            range(len(names)), [n.replace("baseline_", "base\n").replace(RAG, "\n+rag") for n in names], fontsize=8
        )
        ax.set_title(metric)
    fig.suptitle(
        "held-out eval split, every variant side by side, with confidence intervals "
        "(perplexities, latency, invalid rate: lower is better)"
    )
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _colour(variant: str) -> str:
    """One colour per model (a +rag twin shares its model's, hatched): baselines grey, SFT blue, aligned green."""
    base = variant.removesuffix(RAG)
    return {
        "baseline_zero_shot": "#999",
        "baseline_prompted": "#bbb",
        "baseline": "#999",
        "sft": "#4a90d9",
        "aligned_dpo": "#2a6",
        "aligned_rlhf": "#b5a",
    }.get(base, "#c84")


def markdown(report: dict, eval_rows: list[dict], answers: dict, prompt: dict) -> str:
    results = report["variants"]
    metrics = list(next(iter(results.values())))
    lines = [
        "# Evaluation",
        "",
        f"{report['eval_rows']} held-out rows. Candidate: **{report['candidate']}** (the best tuned variant "
        f"on {report['primary_metric']} unless a simpler one is not worse with confidence: below); baselines: {', '.join(report['baselines'])}; the prompted baseline uses {prompt['shots']}-shot "
        f"(best on the dev split: {prompt['dev_scores']}).",
        "",
        "| variant | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    lines += [f"| {n} | " + " | ".join(cell(r[m]) for m in metrics) + " |" for n, r in results.items()]
    if report.get("retrieval"):
        r = report["retrieval"]
        lines += [
            "",
            f"`{RAG[1:]}` variants: the same model with the {r['top_k']} chunks the index retrieves for the "
            f"question ({r['search']} search over {r['chunks']} chunks, {r['embedding_model']}) in its prompt.",
        ]
    choice = report["choice"]
    lines += ["", f"Candidate **{report['candidate']}**: {choice['why']}."]
    if choice["comparisons"]:
        lines += [
            "",
            f"| {choice['best']} vs | difference | CI | p (paired permutation) | better with confidence |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['simpler']} | {c['difference']:+} | [{c['ci_low']:+}, {c['ci_high']:+}] | {c['p_value']} | "
            f"{'yes' if c['better'] else 'no'} |"
            for c in choice["comparisons"]
        ]
    level = f"{report['confidence_level']:.0%}"
    lines += [
        "",
        f"Brackets: {level} bootstrap confidence intervals over the eval rows ({report['resamples']} "
        f"resamples, percentile method). Decoding: {report['decoding']}.",
    ]
    if report["comparisons"]:
        lines += [
            "",
            "## Candidate vs the best baseline, on the same rows",
            "",
            f"| metric | candidate | baseline | difference | {level} CI | p (paired permutation) |",
            "|---|---|---|---:|---|---:|",
        ]
        lines += [
            f"| {m} | {c['candidate']} | {c['baseline']} | {c['difference']:+} | [{c['ci_low']:+}, "
            f"{c['ci_high']:+}] | {c['p_value']} |"
            for m, c in report["comparisons"].items()
        ]
    if report.get("guardrails"):
        rules = {k: v for k, v in report["guardrails"]["rules"].items() if v}
        lines += ["", "## Guardrails", "", f"Rules: {rules}. Answers breaking each (of {report['eval_rows']}):", ""]
        lines += [f"- {n}: {c or 'none'}" for n, c in report["guardrails"]["breaches"].items()]
    if report.get("serving"):
        lines += serving_section(report)
    if report["not_reached"]:
        lines += ["", "## Not run: the escalation ladder stopped below", ""]
        lines += [f"- `{stage}`: {why}" for stage, why in report["not_reached"].items()]
    lines += ["", f"## Gates: {'PASSED' if report['gates']['passed'] else 'FAILED'}", ""]
    lines += [f"- {r}" for r in report["gates"]["reasons"]]
    lines += ["", "![metrics](eval.png)", "", "## Sample answers", ""]
    for i, row in enumerate(eval_rows[:5]):
        lines += [f"**{row['prompt']}**  ", f"reference: {row['references'][0]}  "]
        lines += [f"{n}: {answers[n][i]}  " for n in answers] + [""]
    return "\n".join(lines) + "\n"


def serving_section(report: dict) -> list[str]:
    """The candidate at each serving precision: quality with intervals, the paired loss, size, memory and speed."""
    serving, metric = report["serving"], report["serving"]["quality_metric"]
    full = serving["trials"].get("full", {}).get("size_bytes")
    lines = [
        "",
        f"## Serving precision: **{serving['precision']}**",
        "",
        f"{serving['why']}.",
        "",
        f"| precision | {metric} | vs full (paired) | weights | × full | est. memory | tokens/s alone | "
        "p50 / p95 ms alone | tokens/s batched | p95 ms batched |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, t in serving["trials"].items():
        if "skipped" in t:
            lines.append(f"| {name} | skipped: {t['skipped']} | | | | | | | | |")
            continue
        d = t.get("difference")
        vs = f"{d['difference']:+} [{d['ci_low']:+}, {d['ci_high']:+}]" if d else "—"
        ratio = f"{t['size_bytes'] / full:.2f}" if full else ""
        a, b = t["alone"], t["batched"]
        lines.append(
            f"| {name} | {cell(t['metrics'][metric])} | {vs} | {t['size_bytes'] / 2**20:,.2f} MiB | {ratio} | "
            f"{t['memory_gib']:.3f} GiB | {a['tokens_per_s']} | {a['p50_ms']:.0f} / {a['p95_ms']:.0f} | "
            f"{b['tokens_per_s']} | {b['p95_ms']:.0f} |"
        )
    lines += ["", "![quality against size](eval_precision.png)"]
    return lines


def plot_precisions(serving: dict | None, metric: str, path: Path, why_none: str = "") -> None:
    """Quality against size: the primary metric with its interval at each precision that ran (None: none did,
    `why_none`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if serving is None:
        ax.text(0.5, 0.5, f"no serving precision tried\n({why_none})", ha="center", va="center")
        ax.set_axis_off()
    ran = {n: t for n, t in serving["trials"].items() if "skipped" not in t} if serving else {}
    for name, t in ran.items():
        m = t["metrics"][metric]
        x, y = t["size_bytes"] / 2**20, m["value"]
        err = [[y - m.get("ci_low", y)], [m.get("ci_high", y) - y]]
        ax.errorbar(x, y, yerr=err, fmt="o", capsize=4, color="tab:red" if name == serving["precision"] else "tab:blue")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4))
    if serving:
        ax.set_xlabel("weights (MiB)")
        ax.set_ylabel(metric)
        ax.set_title(f"serving precision: {serving['precision']} ships (red)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
