"""The escalation ladder: the cheapest technique first, the next one only when the gates say it falls short.

Each rung is ended by DVC stages: prompting (`prompt_search`), retrieval (`integrate`: the untuned model with the
retrieved chunks in its prompt, `baseline_rag`), fine-tuning (`adapt`), alignment (`reward` and the
`align@<method>` stages); a rung the project switches off (no `knowledge` source, `adapt.technique: prompt`,
`align.methods: []`) is not climbed. With
`ladder.stop_when_passed: true` the flow runs `evaluate` after every rung below the top one, with the stages of
the rungs above marked "not reached" (their outputs say so, so evaluate leaves them out and DVC sees them as
changed); when the gates pass it stops climbing and `package` ships that rung's model. dvc.yaml keeps the whole
DAG: a plain `dvc repro` (or `stop_when_passed: false`) runs every rung.

The decisions are pure functions here; flows/lifecycle.py carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass

from stages.common.params import Params, Technique

RUNGS = (  # cheapest first
    ("prompting", "prompt_search"),
    ("retrieval", "integrate"),
    ("fine-tuning", "adapt"),
    ("alignment", "align"),
)
RUNG_STAGES = {"align": ("reward", "align")}  # the stages a rung's last stage needs that no lower rung does


def stage_name(addressed: str) -> str:
    """A DVC stage address without its foreach item: `align@dpo` -> `align`."""
    return addressed.split("@", 1)[0]


def stages_of(stages: list[str]) -> list[str]:
    """The rungs' ending stages with the stages that belong to them (`align` -> reward, align)."""
    return [s for stage in stages for s in RUNG_STAGES.get(stage, (stage,))]


def rungs(params: Params) -> list[tuple[str, str]]:
    """The rungs this project climbs, as (rung, the stage that ends it), cheapest first."""
    off = {"adapt"} if params.adapt.technique is Technique.prompt else set()
    off |= set() if params.align.methods else {"align"}
    off |= set() if params.data.sources.knowledge else {"integrate"}  # nothing to retrieve from
    return [(rung, stage) for rung, stage in RUNGS if stage not in off]


def checked_after(params: Params) -> dict[str, str]:
    """{stage: rung} for the stages after which the flow evaluates: every rung below the top one (the top rung is
    judged by the pipeline's own `evaluate`). Empty when the ladder is off."""
    if not params.ladder.stop_when_passed:
        return {}
    checks = {stage: rung for rung, stage in rungs(params)[:-1]}
    if "prompt_search" in checks and not params.data.sources.knowledge:
        # No retrieval rung: `integrate` (next in dvc.yaml, seconds with no documents) still writes the empty index
        # evaluate depends on, so prompting is checked after it.
        checks["integrate"] = checks.pop("prompt_search")
    return checks


def above(params: Params, rung: str) -> list[tuple[str, str]]:
    """The rungs above `rung`, as (rung, stage)."""
    climbed = rungs(params)
    return climbed[[r for r, _ in climbed].index(rung) + 1 :]


def not_reached_reason(rung: str, stage: str) -> str:
    """What the outputs of a stage above the rung under evaluation say (the same words every run: DVC hashes them)."""
    return (
        f"not run: `ladder.stop_when_passed` evaluates the {rung} rung first; `{stage}` runs only if {rung} "
        "fails its gates"
    )


@dataclass(frozen=True)
class Step:
    stop: bool  # stop climbing: this rung ships (passed) or it was the top one
    not_run: list[str]  # the rungs above that stay unclimbed
    why: str


def after_rung(climbed: list[str], rung: str, passed: bool, failed: list[str]) -> Step:
    """What the ladder does once `rung` has been evaluated: stop at the first rung whose gates pass; climb on
    after a failure while a rung is left."""
    higher = climbed[climbed.index(rung) + 1 :]
    if passed:
        rest = f"; {', '.join(higher)} not run" if higher else ""
        return Step(True, higher, f"{rung} passed the gates, the cheapest rung that does{rest}")
    if not higher:
        return Step(True, [], f"no rung passed the gates ({rung}, the top one, failed: {'; '.join(failed)})")
    return Step(False, [], f"{rung} failed the gates ({'; '.join(failed)}): climbing to {higher[0]}")


@dataclass
class Judged:
    """A rung to judge once a stage has run: `check` (a rung below the top one: the flow evaluates it first, the
    stages `higher` marked not reached) or the top rung, which the pipeline's own `evaluate` judged."""

    rung: str
    higher: list[str]
    check: bool


class Climb:
    """The ladder as one flow run climbs it: which stages it skips, which rung a finished stage ends, and the
    record of the rungs judged (`record`: None when the project climbs no ladder), for the run's summary."""

    def __init__(self, params: Params):
        self.params = params
        self.checks = checked_after(params)
        self.climbed = [rung for rung, _ in rungs(params)]
        self.stopped = False
        self.record = (
            {"rungs": [], "winner": None, "not_run": [], "stages_not_run": [], "why": ""} if self.checks else None
        )

    def skips(self, stage: str) -> bool:
        return bool(self.record) and stage_name(stage) in self.record["stages_not_run"]

    def ended_by(self, stage: str) -> Judged | None:
        """The rung `stage` ends, if it is judged now."""
        if stage in self.checks:
            rung = self.checks[stage]
            return Judged(rung, stages_of([s for _, s in above(self.params, rung)]), check=True)
        if stage == "evaluate" and self.record and not self.stopped:
            return Judged(self.climbed[-1], [], check=False)
        return None

    def judged(self, judged: Judged, verdict: dict) -> None:
        """Record a rung's verdict ({"passed", "failed", ...}) and decide: climb on or stop."""
        step = after_rung(self.climbed, judged.rung, verdict["passed"], verdict["failed"])
        self.record["rungs"].append({"rung": judged.rung, **verdict})
        self.record["why"] = step.why
        if step.stop:
            self.stopped = True
            winner = judged.rung if verdict["passed"] else None
            self.record.update(winner=winner, not_run=step.not_run, stages_not_run=judged.higher)
