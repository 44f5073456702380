"""The project checklist's cross-question rules and the lifecycle phase's minimums.

`problems(p)` and `warnings(p)` need params.yaml alone (load_params reports them with the schema's problems);
`phase_rules(p, counts)` also needs the rows the data holds, which the scope stage counts. Each message starts
with the key to change and says what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

# Each phase adds to the rules of the one before: advancing the phase tightens the gates.
PHASES = ("rnd", "poc", "mvp", "release")
MVP_MIN_EVAL_ROWS = 50  # below this a KPI's estimate is noise (a 95 % CI of a rate spans ~±0.14 at 50)
RELEASE_MIN_EVAL_ROWS = 300  # a Release without `confidence: ci` KPIs needs an eval split at least this big

# Cloud region names by residency area: a deployment region must name one of the area's prefixes.
REGION_PREFIXES = {
    "eu": ("eu", "europe"),
    "us": ("us",),
    "apac": ("ap", "asia", "australia"),
    "ca": ("ca", "northamerica-northeast"),
    "uk": ("uk", "eu-west-2", "europe-west2"),
}


def in_region(where: str, region: str) -> bool:
    """Does a cloud region (eu-west-1, europe-west4, us-east-1) or a coarse code (eu) lie in `region`?"""
    if region == "any":
        return True
    where = where.lower()
    return where == region or where.startswith(tuple(p for p in REGION_PREFIXES.get(region, (region,))))


def problems(p) -> list[str]:
    """Contradictions between checklist answers (and the candidates), params.yaml alone."""
    s = p.scope
    out = []
    if (
        s.deployment_target is not None
        and s.deployment_target.value in ("cloud", "saas")
        and s.residency.region != "any"
    ):
        if s.residency.deployment_region is None:
            out.append(
                f"`scope.residency.deployment_region`: the data must stay in {s.residency.region!r} and the "
                f"target is {s.deployment_target.value}: declare where it runs (e.g. eu-west-1), or deploy "
                "on-prem"
            )
        elif not in_region(s.residency.deployment_region, s.residency.region):
            out.append(
                f"`scope.residency.deployment_region` {s.residency.deployment_region!r} is outside the "
                f"residency region {s.residency.region!r}: pick a region in it, or deploy on-prem"
            )
    covered = {lang for c in p.select.candidates for lang in c.languages}
    for lang in s.languages:
        if lang not in covered:
            out.append(
                f"`scope.languages` lists {lang!r} but no candidate in `select.candidates` covers it: add one "
                "that does (`lifecycle catalog` lists languages), or drop the language"
            )
    fmt = s.output_format
    if fmt.type == "json":
        out += _json_schema_problems(fmt.json_schema)
    elif fmt.json_schema is not None:
        out.append(
            f"`scope.output_format.json_schema` is set but the output format is {fmt.type}: "
            "set `type: json`, or remove the schema"
        )
    for role in ("training", "serving"):
        m = getattr(s.hardware, role)
        if (m.gpu is not None or m.count) and not m.gpu_memory_gib:
            out.append(f"`scope.hardware.{role}.gpu_memory_gib` is 0 but a GPU is declared: give its memory in GiB")
        if m.gpu_memory_gib and not m.count:
            out.append(f"`scope.hardware.{role}.count` is 0 but `gpu_memory_gib` is {m.gpu_memory_gib}: how many GPUs?")
    if p.serve.resources.gpu > s.hardware.serving.count:
        out.append(
            f"`serve.resources.gpu` asks for {p.serve.resources.gpu} GPUs, `scope.hardware.serving.count` "
            f"has {s.hardware.serving.count}: declare the serving GPUs, or lower the request"
        )
    if any(c.endpoint for c in p.select.candidates) and p.select.rank_by == "answer_perplexity":
        out.append(
            "`select.rank_by` answer_perplexity needs the log-probabilities of the reference answers, which "
            "an API candidate (`endpoint:`) does not return: rank by a text metric, e.g. rougeL"
        )
    return out + phase_problems(p)


def _json_schema_problems(path: str | None) -> list[str]:
    import jsonschema

    if path is None:
        return [
            "`scope.output_format` is json but `json_schema` is not set: give the JSON Schema file every "
            "answer must follow"
        ]
    if not Path(path).is_file():
        return [f"`scope.output_format.json_schema`: {path} does not exist"]
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except (ValueError, jsonschema.SchemaError) as exc:
        return [f"`scope.output_format.json_schema`: {path} is not a JSON Schema ({str(exc).splitlines()[0]})"]
    return []


def warnings(p) -> list[str]:
    """Risky but legal answers: said every run, never refused."""
    s = p.scope
    out = []
    if s.ui.value == "chat" and s.interface.value == "one-shot-api":
        out.append(
            "`scope.ui` is chat but `scope.interface` is one-shot-api: each turn is answered without the "
            "conversation; use api-with-memory or chat"
        )
    if s.privacy.personal_data and s.residency.retention_days is None and s.phase.value != "release":
        out.append(
            "`scope.residency.retention_days` is not set and the project holds personal data: GDPR's "
            "storage limitation wants a retention period (a Release requires one)"
        )
    if s.serving.p95_latency_ms and not any(k.metric == "latency_ms" for k in s.kpis):
        out.append(
            f"`scope.serving.p95_latency_ms` is {s.serving.p95_latency_ms} but no KPI gates on latency_ms: "
            "add one so evaluation holds the model to it"
        )
    if s.budget.monthly_serving_usd is not None and not s.serving.requests_per_month:
        out.append(
            "`scope.budget.monthly_serving_usd` is set but `scope.serving.requests_per_month` is 0: API "
            "costs cannot be held against the budget without the expected traffic"
        )
    apis = [c.name for c in p.select.candidates if c.endpoint]
    if apis and p.adapt.technique.value != "prompt":
        out.append(
            f"`select.candidates` {apis} are API models: they are measured and ranked for the record but "
            f"never tuned, so adapt ({p.adapt.technique.value}) starts from the best local candidate"
        )
    for c in p.select.candidates:
        entry = c.entry
        if entry and not entry.commercial_use and s.phase.value in ("rnd", "poc"):
            out.append(
                f"`select.candidates.{c.name}`: {entry.licence} forbids commercial use; fine for "
                f"{s.phase.value}, refused from mvp on"
            )
    return out


def phase_rules(p, counts: dict | None = None) -> list[tuple[str, str | None, bool]]:
    """The rules of the project's phase: (rule, problem or None, whether it needs the data's counts). With no
    counts the count rules are listed as not yet checked (problem None)."""
    s = p.scope
    phase = PHASES.index(s.phase.value)
    rules = []

    def rule(text: str, broken: bool, message: str, needs_counts: bool = False):
        rules.append((text, message if broken else None, needs_counts))

    if phase >= PHASES.index("mvp"):
        rule(
            "a deployment target",
            s.deployment_target is None,
            f"`scope.deployment_target` is null but phase {s.phase.value} ships a model: set saas, cloud or on-prem",
        )
        eval_rows = counts.get("eval_rows") if counts else None
        rule(
            f"KPIs on a held-out eval split of at least {MVP_MIN_EVAL_ROWS} rows",
            eval_rows is not None and eval_rows < MVP_MIN_EVAL_ROWS,
            f"`data.holdout.eval` (or `data.sources.eval`): the eval split has {eval_rows} rows; phase "
            f"{s.phase.value} needs at least {MVP_MIN_EVAL_ROWS} for its KPIs to mean anything",
            needs_counts=True,
        )
        for c in p.select.candidates:
            entry = c.entry
            rule(
                f"candidate {c.name} may be used commercially",
                bool(entry) and not entry.commercial_use,
                f"`select.candidates.{c.name}`: its licence {entry.licence if entry else ''} forbids commercial "
                f"use, which phase {s.phase.value} is: remove it",
            )
    if phase >= PHASES.index("release"):
        with_ci = any(k.confidence == "ci" for k in s.kpis)
        eval_rows = counts.get("eval_rows") if counts else None
        rule(
            f"a KPI with `confidence: ci`, or an eval split of at least {RELEASE_MIN_EVAL_ROWS} rows",
            not with_ci and eval_rows is not None and eval_rows < RELEASE_MIN_EVAL_ROWS,
            f"`scope.kpis`: a release gates with confidence: give a KPI `confidence: ci`, or at least "
            f"{RELEASE_MIN_EVAL_ROWS} eval rows (there are {eval_rows})",
            needs_counts=not with_ci,
        )
        rule(
            "a forgetting check",
            p.evaluate.max_forgetting is None or p.data.sources.general is None,
            "`evaluate.max_forgetting`: a release must show tuning did not break general ability: set it and a "
            "`data.sources.general` source",
        )
        if s.privacy.personal_data:
            rule(
                "personal data redacted or refused, not only reported",
                s.privacy.on_pii == "report",
                "`scope.privacy.on_pii` is report: a release with personal data must redact or fail",
            )
            rule(
                "a retention period for personal data",
                s.residency.retention_days is None,
                "`scope.residency.retention_days`: a release holding personal data declares how long it keeps "
                "prompts and answers",
            )
    return rules


def phase_problems(p, counts: dict | None = None) -> list[str]:
    """The phase's broken rules: without counts those params.yaml alone decides, with counts those that needed
    the data's rows (so the two calls never report a rule twice)."""
    return [
        message
        for _, message, needs_counts in phase_rules(p, counts)
        if message and needs_counts == (counts is not None)
    ]


def phase_report(p, counts: dict | None = None) -> dict:
    """For reports/scope.json: which phase's rules applied and each verdict."""
    return {
        "phase": p.scope.phase.value,
        "rules": [
            {"rule": text, "passed": message is None, **({"problem": message} if message else {})}
            for text, message, _ in phase_rules(p, counts)
        ],
    }
