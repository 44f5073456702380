"""KPI gates as a pure function: the flow and the package stage apply the decision, they never re-derive it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from stages.common.params import Kpi


@dataclass
class Decision:
    passed: bool
    reasons: list[str] = field(default_factory=list)   # one line per KPI, passed or not
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def should_promote(candidate: dict[str, float], baselines: dict[str, dict[str, float]], kpis: list[Kpi]) -> Decision:
    """Does `candidate` meet every KPI? A `versus: baseline` KPI needs a margin of `threshold` over the best
    baseline *for that metric* (the strictest comparison), an absolute KPI the threshold itself."""
    reasons, failed = [], []
    for kpi in kpis:
        value = candidate[kpi.metric]
        higher = kpi.direction == "higher"
        if kpi.versus == "baseline":
            values = {n: m[kpi.metric] for n, m in baselines.items()}
            name = (max if higher else min)(values, key=values.get)
            reference = baselines[name][kpi.metric]
            target = reference + kpi.threshold if higher else reference - kpi.threshold
            what = (f"{kpi.metric} {value:.4f} vs {name} {reference:.4f} "
                    f"({'+' if higher else '-'}{kpi.threshold} needed)")
        else:
            target = kpi.threshold
            what = f"{kpi.metric} {value:.4f} ({'>=' if higher else '<='} {kpi.threshold} needed)"
        ok = value >= target if higher else value <= target
        reasons.append(f"{'PASS' if ok else 'FAIL'}: {what}")
        if not ok:
            failed.append(what)
    return Decision(passed=not failed, reasons=reasons, failed=failed)
