"""KPI gates as a pure function: the flow and the package stage apply the decision, they never re-derive it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from stages.params import Kpi


@dataclass
class Decision:
    passed: bool
    reasons: list[str] = field(default_factory=list)   # one line per KPI, passed or not
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def should_promote(candidate: dict[str, float], baseline: dict[str, float], kpis: list[Kpi]) -> Decision:
    """Does `candidate` meet every KPI? `versus: baseline` KPIs need a margin of `threshold` over `baseline`."""
    reasons, failed = [], []
    for kpi in kpis:
        value = candidate[kpi.metric]
        if kpi.versus == "baseline":
            target = baseline[kpi.metric] + (kpi.threshold if kpi.direction == "higher" else -kpi.threshold)
            what = (f"{kpi.metric} {value:.4f} vs baseline {baseline[kpi.metric]:.4f} "
                    f"({'+' if kpi.direction == 'higher' else '-'}{kpi.threshold} needed)")
        else:
            target = kpi.threshold
            what = f"{kpi.metric} {value:.4f} ({'>=' if kpi.direction == 'higher' else '<='} {kpi.threshold} needed)"
        ok = value >= target if kpi.direction == "higher" else value <= target
        reasons.append(f"{'PASS' if ok else 'FAIL'}: {what}")
        if not ok:
            failed.append(what)
    return Decision(passed=not failed, reasons=reasons, failed=failed)
