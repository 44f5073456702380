"""KPI gates as a pure function: the flow and the package stage apply the decision, they never re-derive it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from stages.common.params import Kpi


@dataclass
class Decision:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # one line per KPI, passed or not
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def best_baseline(baselines: dict[str, dict[str, float]], metric: str, higher: bool) -> str:
    """The baseline a margin is measured against: the best one *for that metric* (the strictest comparison)."""
    values = {n: m[metric] for n, m in baselines.items()}
    return (max if higher else min)(values, key=values.get)


def _at_least(a: float, b: float) -> bool:
    """a >= b, where a tie computed in floating point (0.15 - 0.10 vs 0.05) counts as a tie."""
    return a >= b - 1e-9


def _ci(low: float, high: float, signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"[CI {f.format(low)}, {f.format(high)}]"


def should_promote(
    candidate: dict[str, float],
    baselines: dict[str, dict[str, float]],
    kpis: list[Kpi],
    intervals: dict[str, dict] | None = None,
    comparisons: dict[str, dict] | None = None,
    forgetting: dict | None = None,
) -> Decision:
    """Does `candidate` meet every KPI? A `versus: baseline` KPI needs a margin of `threshold` over the best
    baseline for its metric, an absolute KPI the threshold itself. With `confidence: ci` the confidence interval
    must clear the threshold (`intervals[metric]` of the candidate; `comparisons[metric]`, the paired difference
    to that best baseline); with `point`, the estimate must, and the reason says whether the interval does too.
    `forgetting` ({"before", "after", "limit"}): the general-split perplexity may rise at most `limit` (relative)."""
    intervals, comparisons = intervals or {}, comparisons or {}
    reasons, failed = [], []
    for kpi in kpis:
        value = candidate[kpi.metric]
        higher = kpi.direction == "higher"
        sign = 1 if higher else -1
        if kpi.versus == "baseline":
            name = best_baseline(baselines, kpi.metric, higher)
            reference = baselines[name][kpi.metric]
            point_ok = _at_least(sign * (value - reference), kpi.threshold)
            what = f"{kpi.metric} {value:.4f} vs {name} {reference:.4f} ({'+' if higher else '-'}{kpi.threshold} needed"
            c = comparisons.get(kpi.metric)
            ci_ok = None
            if c is not None:
                ci_ok = _at_least(c["ci_low"] if higher else -c["ci_high"], kpi.threshold)
                what += (
                    f"; difference {c['difference']:+.4f} {_ci(c['ci_low'], c['ci_high'], True)}, p={c['p_value']:.3g}"
                )
        else:
            point_ok = _at_least(sign * (value - kpi.threshold), 0)
            what = f"{kpi.metric} {value:.4f} ({'>=' if higher else '<='} {kpi.threshold} needed"
            i = intervals.get(kpi.metric)
            ci_ok = None
            if i is not None and i.get("ci_low") is not None:
                ci_ok = _at_least(sign * ((i["ci_low"] if higher else i["ci_high"]) - kpi.threshold), 0)
                what += f"; {_ci(i['ci_low'], i['ci_high'])}"
        if kpi.confidence == "ci":
            ok = bool(ci_ok)  # no interval (a model-measured metric) cannot pass a ci KPI; validate refuses it
            what += ", with confidence)" if ci_ok is not None else ", with confidence, but no interval was computed)"
        else:
            ok = point_ok
            what += (
                ")"
                if ci_ok is None
                else (", met with confidence)" if ci_ok else ", met on the point estimate only)" if point_ok else ")")
            )
        reasons.append(f"{'PASS' if ok else 'FAIL'}: {what}")
        if not ok:
            failed.append(what)
    if forgetting is not None:
        rise = forgetting["after"] / forgetting["before"] - 1
        ok = forgetting["limit"] is None or _at_least(forgetting["limit"], rise)
        limit = "no limit set" if forgetting["limit"] is None else f"<= +{forgetting['limit']:.0%} allowed"
        what = (
            f"forgetting: general-text perplexity {forgetting['before']:.1f} -> {forgetting['after']:.1f} "
            f"({rise:+.0%}; {limit})"
        )
        reasons.append(f"{'NOTE' if forgetting['limit'] is None else 'PASS' if ok else 'FAIL'}: {what}")
        if not ok:
            failed.append(what)
    return Decision(passed=not failed, reasons=reasons, failed=failed)


def prefer_simpler(
    values: dict[str, float],
    metric: str,
    higher: bool,
    compare: Callable[[str, str], dict | None],
) -> dict:
    """The candidate among `values` ({variant: its value on the primary `metric`}, cheapest first: a model before
    its `_rag` twin, SFT before alignment, DPO before RLHF): the best, unless a simpler variant is not worse with
    confidence, in which case the simplest such one ships (a costlier model costs training, serving or an index
    for a difference the eval rows cannot tell from noise). `compare(costly, simpler)` is the paired test on the
    same rows ({"difference", "ci_low", "ci_high", "better", ...}; stages/common/significance.py), None when the
    metric is one number measured on the model."""
    pool = list(values)
    best = (max if higher else min)(values, key=values.get)
    checked = []
    for simpler in pool[: pool.index(best)]:
        c = compare(best, simpler)
        if c is None:
            return {
                "best": best,
                "candidate": best,
                "comparisons": [],
                "why": f"{best} is best on {metric} ({values[best]:.4g}); {metric} is measured on the model, with "
                "no rows to compare on, so the point estimate decides",
            }
        checked.append(c)
        if not c["better"]:
            return {
                "best": best,
                "candidate": simpler,
                "comparisons": checked,
                "why": f"{best} ({values[best]:.4g}) is not better than the simpler {simpler} ({values[simpler]:.4g}) "
                f"on {metric} with confidence (difference {c['difference']:+} [{c['ci_low']:+}, "
                f"{c['ci_high']:+}]): {simpler} ships",
            }
    why = f"{best} is best on {metric} ({values[best]:.4g})"
    if checked:
        why += (
            " and better with confidence than every simpler variant ("
            + ", ".join(f"{c['simpler']} {c['difference']:+} [{c['ci_low']:+}, {c['ci_high']:+}]" for c in checked)
            + ")"
        )
    return {"best": best, "candidate": best, "comparisons": checked, "why": why}


SPEED_TIE = 0.05  # speeds this close are a tie (the machine is shared and noisy)


def choose_precision(
    trials: dict[str, dict],
    metric: str,
    higher: bool,
    max_quality_loss: float,
    memory_gib: float | None = None,
    p95_latency_ms: float | None = None,
) -> dict:
    """The serving precision that ships: among those that ran whose loss on `metric` against the trained weights
    stays within `max_quality_loss` at the far end of the paired interval (not the point estimate), whose estimated
    serving memory fits `memory_gib` (a GPU's; None: not limited) and whose p95 latency alone meets
    `p95_latency_ms`, the fastest at the server's concurrency (tokens/s batched), the smaller among those within
    `SPEED_TIE` of it (a smaller file that is not faster is not worth a quality risk, and a smaller one decoding
    2.8x slower was what shipped before). `trials` maps a precision to {"size_bytes", "memory_gib", "p95_ms",
    "batched": {"tokens_per_s"}, "difference": {"ci_low", "ci_high"}} (no difference for "full"), or
    {"skipped": why}. Returns {"precision", "why", "reasons": {precision: one line each}}."""
    reasons, fitting = {}, []
    for name, t in trials.items():
        if "skipped" in t:
            reasons[name] = f"not tried: {t['skipped']}"
            continue
        problems = []
        if name != "full":
            d = t["difference"]
            worst = -d["ci_low"] if higher else d["ci_high"]  # the loss the interval still allows
            if worst > max_quality_loss + 1e-12:
                problems.append(
                    f"{metric} may drop by {worst:.4f} {_ci(d['ci_low'], d['ci_high'], signed=True)} "
                    f"> {max_quality_loss:g} allowed"
                )
        if memory_gib and t["memory_gib"] > memory_gib:
            problems.append(f"needs ~{t['memory_gib']:.2f} GiB > {memory_gib:g} GiB on the serving GPU")
        if p95_latency_ms is not None and t["p95_ms"] > p95_latency_ms:
            problems.append(f"p95 {t['p95_ms']:.0f} ms > {p95_latency_ms:g} ms")
        size = f"{t['size_bytes'] / 2**20:,.1f} MiB"
        reasons[name] = f"{size}: " + ("; ".join(problems) if problems else "fits")
        if not problems:
            fitting.append(name)
    if not fitting:
        return {
            "precision": "full",
            "why": "no smaller precision fits, and the trained weights ship as evaluated",
            "reasons": reasons,
        }
    speed = {n: trials[n]["batched"]["tokens_per_s"] for n in fitting}
    fastest = max(speed.values())
    tied = [n for n in fitting if speed[n] >= fastest * (1 - SPEED_TIE)]
    chosen = min(tied, key=lambda n: trials[n]["size_bytes"])
    others = [n for n in trials if n != chosen and "skipped" not in trials[n]]
    pace = f"{speed[chosen]:,.0f} tokens/s batched"
    why = (
        f"{chosen} is the fastest that fits ({pace}"
        + (f", the smallest within {SPEED_TIE:.0%} of the fastest" if len(tied) > 1 else "")
        + f"; {reasons[chosen]})"
    )
    if others:
        why += "; " + "; ".join(
            f"{n} {reasons[n]}" + (f", {speed[n]:,.0f} tokens/s" if n in speed else "") for n in others
        )
    return {"precision": chosen, "why": why, "reasons": reasons}
